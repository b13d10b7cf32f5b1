//! Where a compaction moved each payload of the rewritten segments: old (segment, offset) ->
//! new (segment, offset).
//!
//! Payloads are mostly copied in the order they lie in the old segments (records in order,
//! each record's payloads in the order its rows first use them, which is the order it wrote
//! them). So locations go into a vector sorted by the old one (32 bytes each, searched by
//! bisection), and only one out of that order into a hash map. A hash map of all of them took
//! 208 MiB at its peak for 2·10^6 payloads, while its table doubled.
use std::collections::HashMap;

/// A payload's place: (segment, offset).
type Loc = (u64, u64);

/// Old location -> new location. See the module documentation.
#[derive(Default)]
pub(super) struct Moved {
    sorted: Vec<(Loc, Loc)>,
    others: HashMap<Loc, Loc>,
}

impl Moved {
    /// Where the payload at `old` went, if it was copied.
    pub(super) fn get(&self, old: Loc) -> Option<Loc> {
        match self.sorted.binary_search_by_key(&old, |e| e.0) {
            Ok(i) => Some(self.sorted[i].1),
            Err(_) => self.others.get(&old).copied(),
        }
    }

    /// Records that the payload at `old` (not recorded yet) went to `new`.
    pub(super) fn insert(&mut self, old: Loc, new: Loc) {
        debug_assert!(self.get(old).is_none(), "{old:?} recorded twice");
        if self.sorted.last().is_none_or(|l| l.0 < old) {
            self.sorted.push((old, new));
        } else {
            self.others.insert(old, new);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        /// Whatever the order of the copies, it answers as a hash map of all of them does.
        #[test]
        fn answers_as_a_map_does(olds in prop::collection::vec((0u64..4, 0u64..64), 0..200)) {
            let (mut moved, mut map) = (Moved::default(), HashMap::new());
            for (i, old) in olds.into_iter().enumerate() {
                let new = (9, i as u64);
                if map.contains_key(&old) {
                    prop_assert_eq!(moved.get(old), map.get(&old).copied());
                    continue;
                }
                moved.insert(old, new);
                map.insert(old, new);
            }
            for s in 0..5 {
                for o in 0..65 {
                    prop_assert_eq!(moved.get((s, o)), map.get(&(s, o)).copied());
                }
            }
        }
    }

    #[test]
    fn copies_in_order_take_no_hash_map() {
        let mut moved = Moved::default();
        for o in 0..1000 {
            moved.insert((1 + o / 500, o % 500), (7, o));
        }
        assert!(moved.others.is_empty());
        assert_eq!(moved.sorted.len(), 1000);
        // One out of order (a payload of an earlier segment first used by a later record).
        moved.insert((0, 5), (7, 1000));
        assert_eq!(moved.others.len(), 1);
        assert_eq!(moved.get((0, 5)), Some((7, 1000)));
        assert_eq!(moved.get((2, 499)), Some((7, 999)));
        assert_eq!(moved.get((2, 500)), None);
    }
}
