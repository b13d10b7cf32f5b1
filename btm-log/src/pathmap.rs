//! A map from relative path to value for the maps that hold every path of a volume (the folded
//! state's namespace, the agent's view of the volume): a sorted base in flat arrays (every path
//! in one buffer) plus a small map of the paths added since the base was last folded.
//!
//! A `BTreeMap<Vec<u8>, V>` cost about 90 bytes per path at 10^6 paths (half-full nodes, a
//! heap block per path) plus the value; the base costs an 8-byte offset, the path's bytes and
//! the value. A path of the base that changes is changed in place and a removed one leaves an
//! empty slot, so only new paths go to the map; [`PathMap::settle`] folds it (and drops the
//! empty slots) once they are a fair share of the base.
use std::{
    cmp::Ordering,
    collections::{BTreeMap, btree_map},
    iter::Peekable,
    ops::{Bound, Range},
};

#[derive(Clone)]
pub struct PathMap<V> {
    /// The base's paths, one after another, in path order.
    arena: Vec<u8>,
    /// End of each base path in `arena` (its start is the end of the one before).
    ends: Vec<usize>,
    /// The base's values, in the same order; `None`: removed since the base was folded.
    base: Vec<Option<V>>,
    /// Paths the base does not have.
    added: BTreeMap<Vec<u8>, V>,
    len: usize,
    removed: usize,
    /// Fold by itself once the changes are many (see [`PathMap::manual`]).
    auto: bool,
}

impl<V> Default for PathMap<V> {
    fn default() -> Self {
        PathMap {
            arena: Vec::new(),
            ends: Vec::new(),
            base: Vec::new(),
            added: BTreeMap::new(),
            len: 0,
            removed: 0,
            auto: true,
        }
    }
}

/// Changes beyond which [`PathMap::settle`] folds: an eighth of the base, at least this many.
const SETTLE_MIN: usize = 4096;
/// Changes beyond which an insert or removal folds by itself (unless [`PathMap::manual`]): a
/// baseline of 10^6 paths is folded in about 15 steps instead of growing a 10^6-entry map.
const AUTO_MIN: usize = 1 << 16;

impl<V> PathMap<V> {
    /// A map that folds only when [`PathMap::settle`] or [`PathMap::settle_now`] is called:
    /// for a caller that keeps positions in the base ([`PathMap::base_position`]).
    pub fn manual() -> Self {
        PathMap {
            auto: false,
            ..PathMap::default()
        }
    }

    /// The entries of `sorted` (in path order, each path once) as a folded base.
    pub fn from_sorted(sorted: impl IntoIterator<Item = (Vec<u8>, V)>, auto: bool) -> Self {
        let mut out = PathMap {
            auto,
            ..PathMap::default()
        };
        for (p, v) in sorted {
            out.push_base(&p, v);
        }
        out.len = out.base.len();
        out.arena.shrink_to_fit();
        out.ends.shrink_to_fit();
        out.base.shrink_to_fit();
        out
    }

    fn push_base(&mut self, path: &[u8], v: V) {
        debug_assert!(self.ends.is_empty() || self.base_path(self.ends.len() - 1) < path);
        self.arena.extend_from_slice(path);
        self.ends.push(self.arena.len());
        self.base.push(Some(v));
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

    pub fn get(&self, path: &[u8]) -> Option<&V> {
        self.get_key_value(path).map(|(_, v)| v)
    }

    pub fn get_key_value(&self, path: &[u8]) -> Option<(&[u8], &V)> {
        match self.find(path) {
            Ok(i) => Some((self.base_path(i), self.base[i].as_ref()?)),
            Err(_) => self
                .added
                .get_key_value(path)
                .map(|(k, v)| (k.as_slice(), v)),
        }
    }

    pub fn get_mut(&mut self, path: &[u8]) -> Option<&mut V> {
        match self.find(path) {
            Ok(i) => self.base[i].as_mut(),
            Err(_) => self.added.get_mut(path),
        }
    }

    pub fn contains_key(&self, path: &[u8]) -> bool {
        self.get(path).is_some()
    }

    /// Sets the value at `path`; the one it replaced.
    pub fn insert(&mut self, path: Vec<u8>, v: V) -> Option<V> {
        let old = match self.find(&path) {
            Ok(i) => {
                let old = self.base[i].replace(v);
                if old.is_none() {
                    self.removed -= 1;
                }
                old
            }
            // After every path there is (paths inserted in order, as a walk or a baseline
            // brings them): straight to the base.
            Err(i)
                if i == self.base.len()
                    && (self.added.last_key_value()).is_none_or(|(k, _)| *k < path) =>
            {
                self.push_base(&path, v);
                None
            }
            Err(_) => self.added.insert(path, v),
        };
        if old.is_none() {
            self.len += 1;
            self.settle_if(AUTO_MIN, true);
        }
        old
    }

    pub fn remove(&mut self, path: &[u8]) -> Option<V> {
        let old = match self.find(path) {
            Ok(i) => {
                let old = self.base[i].take();
                if old.is_some() {
                    self.removed += 1;
                }
                old
            }
            Err(_) => self.added.remove(path),
        };
        if old.is_some() {
            self.len -= 1;
            self.settle_if(AUTO_MIN, true);
        }
        old
    }

    /// Keeps only the entries for which `keep` is true.
    pub fn retain(&mut self, mut keep: impl FnMut(&[u8], &mut V) -> bool) {
        for i in 0..self.base.len() {
            let start = if i == 0 { 0 } else { self.ends[i - 1] };
            let path = &self.arena[start..self.ends[i]];
            if let Some(v) = &mut self.base[i]
                && !keep(path, v)
            {
                self.base[i] = None;
                self.removed += 1;
                self.len -= 1;
            }
        }
        let before = self.added.len();
        self.added.retain(|p, v| keep(p, v));
        self.len -= before - self.added.len();
        self.settle_if(AUTO_MIN, true);
    }

    /// Every entry, in path order.
    pub fn iter(&self) -> Iter<'_, V> {
        self.range(Bound::Unbounded, Bound::Unbounded)
    }

    pub fn keys(&self) -> impl Iterator<Item = &[u8]> {
        self.iter().map(|(p, _)| p)
    }

    pub fn values(&self) -> impl Iterator<Item = &V> {
        self.iter().map(|(_, v)| v)
    }

    /// Every value, in no particular order.
    pub fn values_mut(&mut self) -> impl Iterator<Item = &mut V> {
        (self.base.iter_mut().flatten()).chain(self.added.values_mut())
    }

    /// The entries with paths within the bounds, in path order (the bounds in order, as for
    /// `BTreeMap::range`).
    pub fn range<'a>(&'a self, lo: Bound<&[u8]>, hi: Bound<&[u8]>) -> Iter<'a, V> {
        let at = |b: Bound<&[u8]>, end: bool| match b {
            Bound::Unbounded if end => self.base.len(),
            Bound::Unbounded => 0,
            Bound::Included(p) => match self.find(p) {
                Ok(i) if end => i + 1,
                Ok(i) | Err(i) => i,
            },
            Bound::Excluded(p) => match self.find(p) {
                Ok(i) if !end => i + 1,
                Ok(i) | Err(i) => i,
            },
        };
        let start = at(lo, false);
        Iter {
            map: self,
            base: start..at(hi, true).max(start),
            // Panics on bounds out of order, as a `BTreeMap` does.
            added: self.added.range::<[u8], _>((lo, hi)).peekable(),
        }
    }

    /// The entries strictly under directory `dir` (every entry for the root, `""`), in path
    /// order: in byte order `dir/...` lies between `dir/` and `dir0`, `'0'` being the byte
    /// after `'/'`.
    pub fn under(&self, dir: &[u8]) -> Iter<'_, V> {
        if dir.is_empty() {
            return self.iter();
        }
        let mut lo = dir.to_vec();
        lo.push(b'/');
        let mut hi = dir.to_vec();
        hi.push(b'/' + 1);
        self.range(Bound::Included(&lo), Bound::Excluded(&hi))
    }

    /// The paths of [`PathMap::under`], owned (to change the map while going through them).
    pub fn paths_under(&self, dir: &[u8]) -> Vec<Vec<u8>> {
        self.under(dir).map(|(p, _)| p.to_vec()).collect()
    }

    /// Folds the changes since the base into it once they are more than an eighth of it (at
    /// least 4,096): lookups stay in the flat arrays and the map stays small; the copy costs
    /// one pass over the entries. True when it did.
    pub fn settle(&mut self) -> bool {
        self.settle_if(SETTLE_MIN, false)
    }

    fn settle_if(&mut self, min: usize, auto: bool) -> bool {
        if (auto && !self.auto) || self.added.len() + self.removed <= (self.base.len() / 8).max(min)
        {
            return false;
        }
        self.settle_now();
        true
    }

    /// Folds the changes into the base whatever their number.
    pub fn settle_now(&mut self) {
        let base = std::mem::take(&mut self.base);
        let ends = std::mem::take(&mut self.ends);
        let arena = std::mem::take(&mut self.arena);
        let added = std::mem::take(&mut self.added);
        let mut out = PathMap {
            auto: self.auto,
            ..PathMap::default()
        };
        out.arena
            .reserve(arena.len() + added.keys().map(Vec::len).sum::<usize>());
        out.ends.reserve_exact(self.len);
        out.base.reserve_exact(self.len);
        let mut added = added.into_iter().peekable();
        let mut start = 0;
        for (end, v) in ends.into_iter().zip(base) {
            let path = &arena[start..end];
            start = end;
            let Some(v) = v else { continue };
            while let Some((p, v)) = added.next_if(|(p, _)| p.as_slice() < path) {
                out.push_base(&p, v);
            }
            out.push_base(path, v);
        }
        for (p, v) in added {
            out.push_base(&p, v);
        }
        out.len = self.len;
        *self = out;
    }

    /// Where `path` is in the base (whether or not it was removed since): positions hold until
    /// the next fold.
    pub fn base_position(&self, path: &[u8]) -> Option<u32> {
        self.find(path).ok().and_then(|i| u32::try_from(i).ok())
    }

    /// The path and value at position `i` of the base, if it is still there.
    pub fn base_entry(&self, i: u32) -> Option<(&[u8], &V)> {
        let i = i as usize;
        Some((self.base_path(i), self.base.get(i)?.as_ref()?))
    }

    /// (position, value) of every entry of the base still there.
    pub fn base_values(&self) -> impl Iterator<Item = (u32, &V)> {
        (self.base.iter().enumerate())
            .filter_map(|(i, v)| Some((u32::try_from(i).ok()?, v.as_ref()?)))
    }
}

impl<V> FromIterator<(Vec<u8>, V)> for PathMap<V> {
    fn from_iter<T: IntoIterator<Item = (Vec<u8>, V)>>(iter: T) -> Self {
        let mut v: Vec<(Vec<u8>, V)> = iter.into_iter().collect();
        // Stable, then the last of equal paths kept: as inserting them one by one would.
        v.sort_by(|a, b| a.0.cmp(&b.0));
        let mut out: Vec<(Vec<u8>, V)> = Vec::with_capacity(v.len());
        for e in v {
            match out.last_mut() {
                Some(l) if l.0 == e.0 => *l = e,
                _ => out.push(e),
            }
        }
        PathMap::from_sorted(out, true)
    }
}

impl<V> std::ops::Index<&[u8]> for PathMap<V> {
    type Output = V;

    fn index(&self, path: &[u8]) -> &V {
        self.get(path).expect("no entry at this path")
    }
}

impl<'a, V> IntoIterator for &'a PathMap<V> {
    type Item = (&'a [u8], &'a V);
    type IntoIter = Iter<'a, V>;

    fn into_iter(self) -> Iter<'a, V> {
        self.iter()
    }
}

/// Equal when they hold the same entries, however they are laid out.
impl<V: PartialEq> PartialEq for PathMap<V> {
    fn eq(&self, other: &Self) -> bool {
        self.len == other.len && self.iter().eq(other.iter())
    }
}

impl<V: Eq> Eq for PathMap<V> {}

impl<V: std::fmt::Debug> std::fmt::Debug for PathMap<V> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_map()
            .entries(self.iter().map(|(p, v)| (String::from_utf8_lossy(p), v)))
            .finish()
    }
}

impl<V> Clone for Iter<'_, V> {
    fn clone(&self) -> Self {
        Iter {
            map: self.map,
            base: self.base.clone(),
            added: self.added.clone(),
        }
    }
}

/// The entries in path order: the base and the paths added since, merged.
pub struct Iter<'a, V> {
    map: &'a PathMap<V>,
    base: Range<usize>,
    added: Peekable<btree_map::Range<'a, Vec<u8>, V>>,
}

impl<'a, V> Iterator for Iter<'a, V> {
    type Item = (&'a [u8], &'a V);

    fn next(&mut self) -> Option<Self::Item> {
        loop {
            let base = (self.base.start < self.base.end).then(|| {
                let i = self.base.start;
                (self.map.base_path(i), self.map.base[i].as_ref())
            });
            // The two never hold the same path.
            let added_first = match (&base, self.added.peek()) {
                (None, None) => return None,
                (Some(_), None) => false,
                (None, Some(_)) => true,
                (Some((b, _)), Some((a, _))) => a.as_slice() < *b,
            };
            if added_first {
                return self.added.next().map(|(p, v)| (p.as_slice(), v));
            }
            self.base.start += 1;
            if let Some((p, Some(v))) = base {
                return Some((p, v));
            }
        }
    }
}

#[cfg(test)]
mod tests;
