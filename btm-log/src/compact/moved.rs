//! Where a compaction moved each payload of the rewritten segments: old (segment, offset) ->
//! new (segment, offset).
//!
//! Payloads are copied in the order a run's diff or a copied record first uses them: mostly
//! the order they lie in the old segments, interleaved with a few other increasing sequences
//! (the payloads of files rewritten after the baseline, of scattered writes into a large
//! file). So locations go into a few runs, each sorted by old location (32 bytes an entry,
//! searched by bisection): a location joins the run whose last is the greatest below it, the
//! way patience sorting deals cards. Only when [`MAX_RUNS`] runs exist and none fits does a
//! location go to a hash map. A hash map of all of them took 208 MiB at its peak for 2·10^6
//! payloads, while its table doubled; so did one sorted vector whose first entries were a few
//! payloads of the log's end.
use std::collections::HashMap;

/// A payload's place: (segment, offset).
type Loc = (u64, u64);

/// Runs kept before locations out of every run's order go to the hash map: a lookup bisects
/// each run.
const MAX_RUNS: usize = 16;

/// Old location -> new location. See the module documentation.
#[derive(Default)]
pub(super) struct Moved {
    /// Each sorted by old location; the runs are in the order of their last entries.
    runs: Vec<Vec<(Loc, Loc)>>,
    others: HashMap<Loc, Loc>,
}

impl Moved {
    /// Where the payload at `old` went, if it was copied.
    pub(super) fn get(&self, old: Loc) -> Option<Loc> {
        let in_runs = self.runs.iter().find_map(|r| {
            let i = r.binary_search_by_key(&old, |e| e.0).ok()?;
            Some(r[i].1)
        });
        in_runs.or_else(|| self.others.get(&old).copied())
    }

    /// Records that the payload at `old` (not recorded yet) went to `new`.
    pub(super) fn insert(&mut self, old: Loc, new: Loc) {
        debug_assert!(self.get(old).is_none(), "{old:?} recorded twice");
        // Runs whose last entry is below `old`: a prefix, as the runs are ordered by it.
        let below = self
            .runs
            .partition_point(|r| r.last().is_some_and(|l| l.0 < old));
        if below > 0 {
            // Still below the next run's last: the order of the runs holds.
            self.runs[below - 1].push((old, new));
        } else if self.runs.len() < MAX_RUNS {
            self.runs.insert(0, vec![(old, new)]);
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
    fn a_few_interleaved_sequences_take_no_hash_map() {
        let mut moved = Moved::default();
        // A few payloads of the log's end first (files rewritten after the baseline), then
        // the baseline's in order, interleaved with scattered writes (a later segment).
        moved.insert((3, 10), (7, 0));
        moved.insert((3, 20), (7, 1));
        for o in 0..1000 {
            moved.insert((1 + o / 500, o % 500), (7, 2 + o));
            if o % 100 == 0 {
                moved.insert((2, 1000 + o), (8, o));
            }
        }
        assert!(moved.others.is_empty());
        assert_eq!(moved.runs.len(), 3);
        let n: usize = moved.runs.iter().map(Vec::len).sum();
        assert_eq!(n, 1012);
        assert_eq!(moved.get((3, 20)), Some((7, 1)));
        assert_eq!(moved.get((2, 499)), Some((7, 1001)));
        assert_eq!(moved.get((2, 1500)), Some((8, 500)));
        assert_eq!(moved.get((2, 500)), None);
        // Decreasing locations: one run each, then the hash map.
        let mut moved = Moved::default();
        for o in (0..100).rev() {
            moved.insert((1, o), (9, o));
        }
        assert_eq!(moved.runs.len(), MAX_RUNS);
        assert_eq!(moved.others.len(), 100 - MAX_RUNS);
        assert!((0..100).all(|o| moved.get((1, o)) == Some((9, o))));
    }
}
