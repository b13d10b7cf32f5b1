//! The scan's entries by path, kept between heights: a sorted base in flat arrays (every
//! path in one buffer) plus a small map of what was added or removed since the base was
//! last settled.
//!
//! A `BTreeMap` of owned paths cost about 180 bytes per entry at 10^6 files (half-full
//! nodes, a heap block per path); the base costs the 80-byte entry, an 8-byte offset and the
//! path's bytes. Between heights only the paths that changed go to the map, and
//! [`Entries::settle`] folds it into the base once it holds a fair share of it.
use std::{
    cmp::Ordering,
    collections::{BTreeMap, btree_map},
    iter::Peekable,
    ops::Range,
};

use super::scan::{Kind, ScanEntry};
use crate::log::RelPath;

#[derive(Clone, Debug, Default)]
pub struct Entries {
    /// The base's paths, one after another, in path order.
    arena: Vec<u8>,
    /// End of each base path in `arena` (its start is the end of the one before).
    ends: Vec<usize>,
    /// The base's entries, in the same order.
    base: Vec<ScanEntry>,
    /// Since the base: a path the base does not have (`Some`), or one of the base's that
    /// was removed (`None`). A base path that is present again or changed is changed in
    /// place, so a file re-read at every height never lands here.
    delta: BTreeMap<RelPath, Option<ScanEntry>>,
    len: usize,
}

impl Entries {
    /// The entries of `sorted` (in path order, each path once) as a settled base.
    pub fn from_sorted(sorted: Vec<(RelPath, ScanEntry)>) -> Self {
        let mut out = Entries::default();
        out.arena.reserve(sorted.iter().map(|(p, _)| p.len()).sum());
        out.ends.reserve_exact(sorted.len());
        out.base.reserve_exact(sorted.len());
        for (p, e) in sorted {
            out.push_base(&p, e);
        }
        out
    }

    fn push_base(&mut self, path: &[u8], e: ScanEntry) {
        debug_assert!(self.base.is_empty() || self.base_path(self.base.len() - 1) < path);
        self.arena.extend_from_slice(path);
        self.ends.push(self.arena.len());
        self.base.push(e);
        self.len += 1;
    }

    fn base_path(&self, i: usize) -> &[u8] {
        let start = if i == 0 { 0 } else { self.ends[i - 1] };
        &self.arena[start..self.ends[i]]
    }

    /// Where `path` is, or would be, in the base.
    fn find(&self, path: &[u8]) -> Result<usize, usize> {
        let (mut lo, mut hi) = (0, self.base.len());
        while lo < hi {
            let mid = lo + (hi - lo) / 2;
            match self.base_path(mid).cmp(path) {
                Ordering::Less => lo = mid + 1,
                Ordering::Greater => hi = mid,
                Ordering::Equal => return Ok(mid),
            }
        }
        Err(lo)
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    pub fn get(&self, path: &[u8]) -> Option<&ScanEntry> {
        match self.delta.get(path) {
            Some(e) => e.as_ref(),
            None => self.find(path).ok().map(|i| &self.base[i]),
        }
    }

    pub fn get_mut(&mut self, path: &[u8]) -> Option<&mut ScanEntry> {
        if self.delta.contains_key(path) {
            return self.delta.get_mut(path).and_then(Option::as_mut);
        }
        let i = self.find(path).ok()?;
        Some(&mut self.base[i])
    }

    pub fn contains_key(&self, path: &[u8]) -> bool {
        self.get(path).is_some()
    }

    /// Sets the entry at `path`; the one it replaced.
    pub fn insert(&mut self, path: RelPath, e: ScanEntry) -> Option<ScanEntry> {
        match self.find(&path) {
            Ok(i) => match self.delta.remove(&path) {
                // Removed from the base since, and back.
                Some(_) => {
                    self.base[i] = e;
                    self.len += 1;
                    None
                }
                None => Some(std::mem::replace(&mut self.base[i], e)),
            },
            Err(_) => {
                let old = self.delta.insert(path, Some(e)).flatten();
                if old.is_none() {
                    self.len += 1;
                }
                old
            }
        }
    }

    pub fn remove(&mut self, path: &[u8]) -> Option<ScanEntry> {
        let old = match self.find(path) {
            Ok(i) => match self.delta.entry(path.to_vec()) {
                btree_map::Entry::Occupied(_) => None, // removed already
                btree_map::Entry::Vacant(v) => {
                    v.insert(None);
                    Some(self.base[i].clone())
                }
            },
            Err(_) => self.delta.remove(path).flatten(),
        };
        if old.is_some() {
            self.len -= 1;
        }
        old
    }

    /// Every entry, in path order.
    pub fn iter(&self) -> Iter<'_> {
        self.iter_between(&[], None)
    }

    pub fn keys(&self) -> impl Iterator<Item = &[u8]> {
        self.iter().map(|(p, _)| p)
    }

    pub fn values(&self) -> impl Iterator<Item = &ScanEntry> {
        self.iter().map(|(_, e)| e)
    }

    /// The paths strictly under directory `dir`, in path order.
    pub fn paths_under(&self, dir: &[u8]) -> Vec<RelPath> {
        let mut lo = dir.to_vec();
        lo.push(b'/');
        let mut hi = dir.to_vec();
        hi.push(b'/' + 1);
        self.iter_between(&lo, Some(&hi))
            .map(|(p, _)| p.to_vec())
            .collect()
    }

    /// The entries with paths from `lo` (included) to `hi` (excluded; None: to the end).
    fn iter_between<'a>(&'a self, lo: &[u8], hi: Option<&[u8]>) -> Iter<'a> {
        let start = self.find(lo).unwrap_or_else(|i| i);
        let end = hi.map_or(self.base.len(), |h| self.find(h).unwrap_or_else(|i| i));
        let delta = match hi {
            Some(h) => self
                .delta
                .range::<[u8], _>((std::ops::Bound::Included(lo), std::ops::Bound::Excluded(h))),
            None => self
                .delta
                .range::<[u8], _>((std::ops::Bound::Included(lo), std::ops::Bound::Unbounded)),
        };
        Iter {
            entries: self,
            base: start..end,
            delta: delta.peekable(),
        }
    }

    /// Folds what changed since the base into it once that is more than an eighth of it (at
    /// least 4,096 paths), so lookups stay in the flat arrays and the map stays small; the
    /// copy costs one pass over the entries, between heights. True when it did.
    pub fn settle(&mut self) -> bool {
        if self.delta.len() <= (self.base.len() / 8).max(4096) {
            return false;
        }
        self.settle_now();
        true
    }

    /// Folds the changes into the base whatever their number.
    pub fn settle_now(&mut self) {
        let mut out = Entries::default();
        out.arena.reserve(self.arena.len());
        out.ends.reserve_exact(self.len);
        out.base.reserve_exact(self.len);
        for (p, e) in self.iter() {
            out.push_base(p, e.clone());
        }
        *self = out;
    }

    /// (inode number, index in the base) of each regular file of the base, sorted: see
    /// [`Entries::base_file`].
    pub fn base_files_by_ino(&self) -> Vec<(u64, u32)> {
        let mut v: Vec<(u64, u32)> = (self.base.iter().enumerate())
            .filter_map(|(i, e)| match e.kind {
                Kind::File { ident, .. } => Some((ident.0, u32::try_from(i).ok()?)),
                _ => None,
            })
            .collect();
        v.sort_unstable();
        v
    }

    /// Where `path` is in the base (whether or not it was removed since).
    pub fn base_position(&self, path: &[u8]) -> Option<u32> {
        self.find(path).ok().and_then(|i| u32::try_from(i).ok())
    }

    /// The path and entry at index `i` of the base, if it is still there (not removed since).
    pub fn base_entry(&self, i: u32) -> Option<(&[u8], &ScanEntry)> {
        let i = i as usize;
        if i >= self.base.len() {
            return None;
        }
        let p = self.base_path(i);
        match self.delta.get(p) {
            Some(_) => None, // removed since
            None => Some((p, &self.base[i])),
        }
    }
}

/// The entries in path order: the base and the changes since it, merged.
pub struct Iter<'a> {
    entries: &'a Entries,
    base: Range<usize>,
    delta: Peekable<btree_map::Range<'a, RelPath, Option<ScanEntry>>>,
}

impl<'a> Iterator for Iter<'a> {
    type Item = (&'a [u8], &'a ScanEntry);

    fn next(&mut self) -> Option<Self::Item> {
        loop {
            let b = (self.base.start < self.base.end).then(|| {
                let i = self.base.start;
                (self.entries.base_path(i), &self.entries.base[i])
            });
            let order = match (&b, self.delta.peek()) {
                (None, None) => return None,
                (Some(_), None) => Ordering::Less,
                (None, Some(_)) => Ordering::Greater,
                (Some((bp, _)), Some((dp, _))) => (*bp).cmp(dp.as_slice()),
            };
            match order {
                Ordering::Less => {
                    self.base.start += 1;
                    return b;
                }
                // The base's path was removed since (the map holds only removals of base
                // paths), or the map's path is new.
                Ordering::Equal => {
                    self.base.start += 1;
                    self.delta.next();
                }
                Ordering::Greater => {
                    if let Some((p, Some(e))) = self.delta.next() {
                        return Some((p.as_slice(), e));
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    fn entry(n: u8) -> ScanEntry {
        ScanEntry {
            kind: Kind::File {
                ident: (u64::from(n) + 100, 0),
                size: u64::from(n),
            },
            ino: u64::from(n) + 100,
            links: 1,
            mtime: 0,
            ctime: 0,
            btime: 0,
            mode: 0o644,
            uid: 0,
            gid: 0,
        }
    }

    #[derive(Clone, Debug)]
    enum Op {
        Insert(Vec<u8>, u8),
        Remove(Vec<u8>),
        Settle,
    }

    /// Short paths from a small alphabet with '/' and a byte on each side of it, so that
    /// paths under a directory, and beside it in byte order, collide often.
    fn path() -> impl Strategy<Value = Vec<u8>> {
        prop::collection::vec(
            prop::sample::select(vec![b'a', b'b', b'/', b'.', b'0']),
            1..5,
        )
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            4 => (path(), any::<u8>()).prop_map(|(p, n)| Op::Insert(p, n)),
            3 => path().prop_map(Op::Remove),
            1 => Just(Op::Settle),
        ]
    }

    proptest! {
        /// Whatever the order of inserts, removals and settles, the entries answer exactly
        /// as a `BTreeMap` of the same operations: lookups, order, length, paths under a
        /// directory, and the base's file index.
        #[test]
        fn entries_answer_as_a_sorted_map(
            start in prop::collection::btree_map(path(), any::<u8>(), 0..20),
            ops in prop::collection::vec(op(), 0..60),
        ) {
            let mut model: BTreeMap<Vec<u8>, ScanEntry> =
                start.iter().map(|(p, n)| (p.clone(), entry(*n))).collect();
            let mut e = Entries::from_sorted(model.clone().into_iter().collect());
            for op in ops {
                match op {
                    Op::Insert(p, n) => {
                        prop_assert_eq!(e.insert(p.clone(), entry(n)), model.insert(p, entry(n)));
                    }
                    Op::Remove(p) => prop_assert_eq!(e.remove(&p), model.remove(&p)),
                    Op::Settle => e.settle_now(),
                }
                prop_assert_eq!(e.len(), model.len());
                let got: Vec<(Vec<u8>, ScanEntry)> =
                    e.iter().map(|(p, v)| (p.to_vec(), v.clone())).collect();
                let want: Vec<(Vec<u8>, ScanEntry)> = model.clone().into_iter().collect();
                prop_assert_eq!(got, want);
                for (p, v) in &model {
                    prop_assert_eq!(e.get(p), Some(v));
                }
                for dir in [&b"a"[..], b"b", b"a/b", b"."] {
                    let mut lo = dir.to_vec();
                    lo.push(b'/');
                    let want: Vec<Vec<u8>> = model
                        .keys()
                        .filter(|k| k.starts_with(&lo))
                        .cloned()
                        .collect();
                    prop_assert_eq!(e.paths_under(dir), want);
                }
            }
            // The base's file index leads to each file still in the base.
            for (ino, i) in e.base_files_by_ino() {
                if let Some((p, v)) = e.base_entry(i) {
                    prop_assert_eq!(model.get(p), Some(v));
                    let same_file = matches!(v.kind, Kind::File { ident, .. } if ident.0 == ino);
                    prop_assert!(same_file);
                }
            }
        }
    }

    #[test]
    fn a_base_path_changed_in_place_does_not_grow_the_map() {
        let mut e =
            Entries::from_sorted(vec![(b"a".to_vec(), entry(1)), (b"b".to_vec(), entry(2))]);
        assert_eq!(e.insert(b"a".to_vec(), entry(3)), Some(entry(1)));
        assert!(e.delta.is_empty());
        assert_eq!(e.remove(b"b"), Some(entry(2)));
        assert_eq!(e.insert(b"b".to_vec(), entry(4)), None);
        assert!(e.delta.is_empty(), "a removed base path back in place");
        assert_eq!(e.insert(b"c".to_vec(), entry(5)), None);
        assert_eq!(e.delta.len(), 1);
        assert!(!e.settle(), "one change is below the threshold");
        e.settle_now();
        assert!(e.delta.is_empty());
        assert_eq!(e.keys().collect::<Vec<_>>(), [&b"a"[..], b"b", b"c"]);
    }
}
