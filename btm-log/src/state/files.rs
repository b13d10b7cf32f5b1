//! The folded state's files by id: a vector sorted by id, plus a map for the ids that arrive
//! out of order.
//!
//! The agent hands out ids in increasing order, so a new file's id is almost always above
//! every id the table holds and is pushed at the end. A `HashMap` cost about 100 bytes a file
//! at 10^6 files (48-byte slots at a load between 44 and 88 %); the vector costs 48: a removed
//! file's slot is marked in a bitmap beside it, not by an `Option` (which took 8 more bytes a
//! slot: the file's state has no spare value to mark it with).
use std::collections::BTreeMap;

use super::FileState;
use crate::record::FileId;

#[derive(Clone, Default)]
pub struct FileTable {
    /// Sorted by id. A removed file's slot holds an empty state and its bit in `gone` (the
    /// slot is reused if the id comes back, dropped at the next fold).
    base: Vec<(FileId, FileState)>,
    /// One bit per slot of `base`: removed.
    gone: Vec<u64>,
    /// Ids below the last one of `base` that `base` does not have.
    late: BTreeMap<FileId, FileState>,
    len: usize,
    removed: usize,
}

/// A slot: 48 bytes (with an `Option` around the state, 56).
const _: () = assert!(std::mem::size_of::<(FileId, FileState)>() == 48);

/// Bit `i` of `bits`.
fn bit(bits: &[u64], i: usize) -> bool {
    bits.get(i / 64).is_some_and(|w| w & (1 << (i % 64)) != 0)
}

/// The state a removed slot keeps: no pieces, so nothing allocated.
fn empty() -> FileState {
    FileState {
        mode: 0,
        uid: 0,
        gid: 0,
        size: 0,
        nlink: 0,
        pieces: Default::default(),
    }
}

impl FileTable {
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    fn slot(&self, id: FileId) -> Result<usize, usize> {
        self.base.binary_search_by_key(&id, |(i, _)| *i)
    }

    fn is_gone(&self, i: usize) -> bool {
        bit(&self.gone, i)
    }

    fn set_gone(&mut self, i: usize, gone: bool) {
        if self.gone.len() <= i / 64 {
            self.gone.resize(i / 64 + 1, 0);
        }
        if gone {
            self.gone[i / 64] |= 1 << (i % 64);
        } else {
            self.gone[i / 64] &= !(1 << (i % 64));
        }
    }

    pub fn get(&self, id: &FileId) -> Option<&FileState> {
        match self.slot(*id) {
            Ok(i) if self.is_gone(i) => None,
            Ok(i) => Some(&self.base[i].1),
            Err(_) => self.late.get(id),
        }
    }

    pub fn get_mut(&mut self, id: &FileId) -> Option<&mut FileState> {
        match self.slot(*id) {
            Ok(i) if self.is_gone(i) => None,
            Ok(i) => Some(&mut self.base[i].1),
            Err(_) => self.late.get_mut(id),
        }
    }

    pub fn contains_key(&self, id: &FileId) -> bool {
        self.get(id).is_some()
    }

    /// Sets file `id`; the state it replaced.
    pub fn insert(&mut self, id: FileId, f: FileState) -> Option<FileState> {
        let old = match self.slot(id) {
            Ok(i) => {
                let old = std::mem::replace(&mut self.base[i].1, f);
                if self.is_gone(i) {
                    self.set_gone(i, false);
                    self.removed -= 1;
                    None
                } else {
                    Some(old)
                }
            }
            Err(i) if i == self.base.len() => {
                self.base.push((id, f));
                None
            }
            Err(_) => {
                let old = self.late.insert(id, f);
                self.fold_if_late();
                old
            }
        };
        if old.is_none() {
            self.len += 1;
        }
        old
    }

    /// File `id`, made by `new` when the table does not have it.
    pub fn get_or_insert_with(
        &mut self,
        id: FileId,
        new: impl FnOnce() -> FileState,
    ) -> &mut FileState {
        if !self.contains_key(&id) {
            self.insert(id, new());
        }
        self.get_mut(&id).expect("just inserted")
    }

    pub fn remove(&mut self, id: &FileId) -> Option<FileState> {
        let old = match self.slot(*id) {
            Ok(i) if self.is_gone(i) => None,
            Ok(i) => {
                self.set_gone(i, true);
                self.removed += 1;
                Some(std::mem::replace(&mut self.base[i].1, empty()))
            }
            Err(_) => self.late.remove(id),
        };
        if old.is_some() {
            self.len -= 1;
            if self.removed > self.base.len() / 2 {
                self.fold();
            }
        }
        old
    }

    /// Every file, in no particular order.
    pub fn iter(&self) -> impl Iterator<Item = (&FileId, &FileState)> {
        let base = (self.base.iter().enumerate())
            .filter(|(i, _)| !self.is_gone(*i))
            .map(|(_, (id, f))| (id, f));
        base.chain(self.late.iter())
    }

    pub fn keys(&self) -> impl Iterator<Item = &FileId> {
        self.iter().map(|(i, _)| i)
    }

    pub fn values(&self) -> impl Iterator<Item = &FileState> {
        self.iter().map(|(_, f)| f)
    }

    pub fn values_mut(&mut self) -> impl Iterator<Item = &mut FileState> {
        let gone = &self.gone;
        let base = (self.base.iter_mut().enumerate())
            .filter(move |(i, _)| !bit(gone, *i))
            .map(|(_, (_, f))| f);
        base.chain(self.late.values_mut())
    }

    /// Folds the late ids into the vector once they are more than an eighth of it (at least
    /// 1,024): lookups stay a bisection of one vector, and the copy is paid once per that many
    /// late inserts.
    fn fold_if_late(&mut self) {
        if self.late.len() > (self.base.len() / 8).max(1024) {
            self.fold();
        }
    }

    /// One sorted vector of the live files.
    fn fold(&mut self) {
        let late = std::mem::take(&mut self.late);
        let base = std::mem::take(&mut self.base);
        let gone = std::mem::take(&mut self.gone);
        let mut out = Vec::with_capacity(self.len);
        let mut late = late.into_iter().peekable();
        let live = (base.into_iter().enumerate())
            .filter(|(i, _)| !bit(&gone, *i))
            .map(|(_, e)| e);
        for (id, f) in live {
            while let Some(l) = late.next_if(|(l, _)| *l < id) {
                out.push(l);
            }
            out.push((id, f));
        }
        out.extend(late);
        self.base = out;
        self.removed = 0;
    }
}

/// The file with id `id`; panics when there is none, as a `HashMap` does.
impl std::ops::Index<&FileId> for FileTable {
    type Output = FileState;

    fn index(&self, id: &FileId) -> &FileState {
        self.get(id).expect("no file with this id")
    }
}

impl FromIterator<(FileId, FileState)> for FileTable {
    fn from_iter<T: IntoIterator<Item = (FileId, FileState)>>(iter: T) -> Self {
        let mut t = FileTable::default();
        for (id, f) in iter {
            t.insert(id, f);
        }
        t
    }
}

/// Equal when they hold the same files, however they are laid out.
impl PartialEq for FileTable {
    fn eq(&self, other: &Self) -> bool {
        self.len == other.len && self.iter().all(|(i, f)| other.get(i) == Some(f))
    }
}

impl Eq for FileTable {}

impl std::fmt::Debug for FileTable {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut files: Vec<_> = self.iter().collect();
        files.sort_unstable_by_key(|(i, _)| **i);
        f.debug_map().entries(files).finish()
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use proptest::prelude::*;

    use super::*;
    use crate::pieces::PieceMap;

    fn file(n: u32) -> FileState {
        FileState {
            mode: n,
            uid: 0,
            gid: 0,
            size: 0,
            nlink: 1,
            pieces: PieceMap::default(),
        }
    }

    #[derive(Clone, Debug)]
    enum Op {
        Insert(u64, u32),
        Remove(u64),
        GetOrInsert(u64, u32),
    }

    fn op() -> impl Strategy<Value = Op> {
        // Ids mostly rising (as the agent hands them out), some anywhere below.
        let id = prop_oneof![3 => 0u64..40, 1 => 0u64..4000];
        prop_oneof![
            4 => (id.clone(), any::<u32>()).prop_map(|(i, n)| Op::Insert(i, n)),
            3 => id.clone().prop_map(Op::Remove),
            1 => (id, any::<u32>()).prop_map(|(i, n)| Op::GetOrInsert(i, n)),
        ]
    }

    proptest! {
        /// Whatever the order of ids, inserts and removals, the table answers as a `HashMap`
        /// of the same operations.
        #[test]
        fn the_table_answers_as_a_hash_map(ops in prop::collection::vec(op(), 0..3000)) {
            let mut model: HashMap<u64, FileState> = HashMap::new();
            let mut t = FileTable::default();
            for op in ops {
                match op {
                    Op::Insert(i, n) => prop_assert_eq!(t.insert(i, file(n)), model.insert(i, file(n))),
                    Op::Remove(i) => prop_assert_eq!(t.remove(&i), model.remove(&i)),
                    Op::GetOrInsert(i, n) => {
                        let got = t.get_or_insert_with(i, || file(n)).clone();
                        prop_assert_eq!(&got, model.entry(i).or_insert_with(|| file(n)));
                    }
                }
                prop_assert_eq!(t.len(), model.len());
            }
            for (i, f) in &model {
                prop_assert_eq!(t.get(i), Some(f));
            }
            let mut keys: Vec<u64> = t.keys().copied().collect();
            keys.sort_unstable();
            let mut want: Vec<u64> = model.keys().copied().collect();
            want.sort_unstable();
            prop_assert_eq!(keys, want);
            for f in t.values_mut() {
                f.size += 1;
            }
            prop_assert!(model.iter().all(|(i, f)| t.get(i).map(|g| g.size) == Some(f.size + 1)));
        }
    }

    #[test]
    fn rising_ids_are_pushed_and_late_ones_folded_in() {
        let mut t: FileTable = (0..5000).map(|i| (i * 2, file(0))).collect();
        assert!(t.late.is_empty(), "rising ids all go to the vector");
        for i in 0..1100 {
            t.insert(i * 2 + 1, file(1));
        }
        assert!(t.late.len() < 1100, "the late ids were folded in");
        assert!(t.base.windows(2).all(|w| w[0].0 < w[1].0));
        assert_eq!(t.len(), 6100);
        for i in 0..5000 {
            t.remove(&(i * 2));
        }
        assert!(t.removed <= t.base.len() / 2, "removed slots are dropped");
        assert_eq!(t.len(), 1100);
    }
}
