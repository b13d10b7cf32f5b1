//! The cutter's file ids by identity, kept between heights: a vector sorted by identity
//! (24 bytes a file) with the few changes of each height beside it, folded in when they grow.
//!
//! Why: a hash map of every file's identity held 52 bytes a file at 10^6 files (its table
//! doubles to a power of two: about half empty), for lookups that a bisection serves as well;
//! a height changes few files, and a full cut replaces the whole map at once.
use super::{FastMap, Identity};
use crate::log::FileId;

/// No id: the log hands out ids from 1, so 0 marks an identity removed since the last fold.
const NONE: FileId = 0;

/// Changes kept beside the vector beyond an eighth of it before they are folded in (a few in
/// tests, so that the property test folds often).
const SLACK: usize = if cfg!(test) { 8 } else { 1024 };

#[derive(Clone, Debug, Default)]
pub struct IdMap {
    /// Sorted by identity, each once; [`NONE`] where removed since the last fold.
    base: Vec<(Identity, FileId)>,
    /// Identities not in `base`, added since the last fold.
    added: FastMap<Identity, FileId>,
    /// Removed entries in `base`.
    dead: usize,
}

impl IdMap {
    pub fn len(&self) -> usize {
        self.base.len() - self.dead + self.added.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub fn get(&self, ident: &Identity) -> Option<&FileId> {
        if let Some(id) = self.added.get(ident) {
            return Some(id);
        }
        let i = self.base.binary_search_by(|e| e.0.cmp(ident)).ok()?;
        Some(&self.base[i].1).filter(|id| **id != NONE)
    }

    pub fn insert(&mut self, ident: Identity, id: FileId) {
        debug_assert_ne!(id, NONE, "file ids start at 1");
        match self.base.binary_search_by(|e| e.0.cmp(&ident)) {
            Ok(i) => {
                if self.base[i].1 == NONE {
                    self.dead -= 1;
                }
                self.base[i].1 = id;
            }
            Err(_) => {
                self.added.insert(ident, id);
                self.fold_when_many();
            }
        }
    }

    pub fn remove(&mut self, ident: &Identity) -> Option<FileId> {
        if let Some(id) = self.added.remove(ident) {
            return Some(id);
        }
        let i = self.base.binary_search_by(|e| e.0.cmp(ident)).ok()?;
        let id = std::mem::replace(&mut self.base[i].1, NONE);
        if id == NONE {
            return None;
        }
        self.dead += 1;
        self.fold_when_many();
        Some(id)
    }

    pub fn clear(&mut self) {
        *self = IdMap::default();
    }

    pub fn retain(&mut self, mut keep: impl FnMut(&Identity, &FileId) -> bool) {
        self.added.retain(|i, id| keep(i, id));
        for (i, id) in &mut self.base {
            if *id != NONE && !keep(i, id) {
                *id = NONE;
                self.dead += 1;
            }
        }
        self.fold_when_many();
    }

    /// Every (identity, id), sorted by identity.
    pub fn sorted(&self) -> Vec<(Identity, FileId)> {
        let mut v: Vec<_> = (self.base.iter().copied())
            .filter(|e| e.1 != NONE)
            .chain(self.added.iter().map(|(i, id)| (*i, *id)))
            .collect();
        v.sort_unstable_by_key(|e| e.0);
        v
    }

    /// Folds the changes into the sorted vector once they are more than an eighth of it, so
    /// that lookups stay bisections and the side map stays small.
    fn fold_when_many(&mut self) {
        if self.added.len() + self.dead > SLACK + self.base.len() / 8 {
            self.base = self.sorted();
            self.base.shrink_to_fit();
            self.added = FastMap::default();
            self.dead = 0;
        }
    }
}

impl FromIterator<(Identity, FileId)> for IdMap {
    /// As a map collects: a later id of the same identity wins.
    fn from_iter<T: IntoIterator<Item = (Identity, FileId)>>(iter: T) -> IdMap {
        let mut base: Vec<_> = iter.into_iter().collect();
        // Stable: equal identities keep their order, and the last of each run is kept.
        base.sort_by_key(|e| e.0);
        base.reverse();
        base.dedup_by_key(|e| e.0);
        base.reverse();
        base.shrink_to_fit();
        IdMap {
            base,
            ..IdMap::default()
        }
    }
}

impl Extend<(Identity, FileId)> for IdMap {
    fn extend<T: IntoIterator<Item = (Identity, FileId)>>(&mut self, iter: T) {
        for (i, id) in iter {
            self.insert(i, id);
        }
    }
}

impl PartialEq for IdMap {
    fn eq(&self, other: &IdMap) -> bool {
        self.len() == other.len() && self.sorted() == other.sorted()
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use proptest::prelude::*;

    use super::*;

    #[derive(Clone, Debug)]
    enum Op {
        Insert(u8, u64),
        Remove(u8),
        Retain(u8),
        Collect,
        Clear,
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            8 => (any::<u8>(), 1..1000u64).prop_map(|(k, v)| Op::Insert(k, v)),
            4 => any::<u8>().prop_map(Op::Remove),
            1 => any::<u8>().prop_map(Op::Retain),
            1 => Just(Op::Collect),
            1 => Just(Op::Clear),
        ]
    }

    /// Identities that collide on the inode number and differ in birth time, as a reused
    /// inode number does.
    fn ident(k: u8) -> Identity {
        ((k % 64) as u64, (k / 64) as i64)
    }

    proptest! {
        /// Any sequence of operations leaves the same ids as a hash map, with the vector
        /// folded often (hundreds of keys, folded past an eighth of them plus 8).
        #[test]
        fn matches_a_hash_map(ops in proptest::collection::vec(op(), 1..400), seed in 0..4096u64) {
            // A base to start from, so folds and tombstones are exercised from the first op
            // (identity 7 twice: the later id wins, as in a map).
            let start: Vec<(Identity, FileId)> = (0..=255u8)
                .filter(|k| (seed >> (k % 12)) & 1 == 1)
                .map(|k| (ident(k), k as u64 + 1))
                .chain([(ident(7), 998), (ident(7), 999)])
                .collect();
            let mut m: IdMap = start.iter().copied().collect();
            let mut model: HashMap<Identity, FileId> = start.into_iter().collect();
            for op in ops {
                match op {
                    Op::Insert(k, v) => {
                        m.insert(ident(k), v);
                        model.insert(ident(k), v);
                    }
                    Op::Remove(k) => {
                        prop_assert_eq!(m.remove(&ident(k)), model.remove(&ident(k)));
                    }
                    Op::Retain(k) => {
                        let keep = |i: &Identity, id: &FileId| !(i.0 + *id).is_multiple_of(k as u64 % 5 + 2);
                        m.retain(keep);
                        model.retain(|i, id| keep(i, id));
                    }
                    Op::Collect => m = m.sorted().into_iter().collect(),
                    Op::Clear => {
                        m.clear();
                        model.clear();
                    }
                }
                prop_assert_eq!(m.len(), model.len());
                for k in 0..=255u8 {
                    prop_assert_eq!(m.get(&ident(k)), model.get(&ident(k)));
                }
            }
            let mut want: Vec<_> = model.into_iter().collect();
            want.sort_unstable();
            prop_assert_eq!(m.sorted(), want);
        }
    }

    #[test]
    fn folds_once_changes_outgrow_an_eighth() {
        let mut m: IdMap = (0..16_000u64).map(|i| ((i, 0), i + 1)).collect();
        for i in 0..2000u64 {
            m.remove(&(i, 0));
        }
        assert!(m.dead + m.added.len() <= SLACK + m.base.len() / 8);
        assert_eq!(m.len(), 14_000);
        for i in 20_000..23_000u64 {
            m.insert((i, 0), i + 1);
        }
        assert!(
            m.added.len() <= SLACK + m.base.len() / 8,
            "{}",
            m.added.len()
        );
        assert_eq!(m.len(), 17_000);
        assert_eq!(m.get(&(22_999, 0)), Some(&23_000));
        assert_eq!(m.get(&(1, 0)), None);
        assert_eq!(m.get(&(2000, 0)), Some(&2001));
    }
}
