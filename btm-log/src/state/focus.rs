//! The byte ranges of files that a compaction's runs of dropped records touch: the only
//! pieces its folded state needs.
//!
//! A compaction folds the state from the log's first record, and the diff of each run reads
//! pieces only inside the ranges that run touched ([`super::Undo`], compact/diff.rs). Folded
//! whole, that state was a second copy of the tip beside the agent's own: every piece of every
//! file (96 bytes each: a one-piece file's, and each of the millions of 4 KiB pieces of a
//! database file written all over). Folded with a focus, a piece is kept only where it overlaps
//! a range some run touches, cut to it: within those ranges the state is exact (a punch or a
//! truncation of the cut pieces is the cut of the punched pieces), and memory follows what the
//! dropped heights changed, not the volume. The namespace and every file's metadata are still
//! folded whole (renames, links and removals need them).

use std::collections::{BTreeMap, HashMap};

use super::undo::add_range;
use crate::format::MetaExtent;
use crate::record::{Entry, FileId, NsOp};

/// File -> ranges (start -> end, disjoint, not touching). See the module documentation.
#[derive(Debug, Default)]
pub(crate) struct Focus(HashMap<FileId, BTreeMap<u64, u64>>);

impl Focus {
    /// Adds what one record of a run touches. A put of a file focuses all of it: a file
    /// removed and put again under the same id starts empty, so the diff compares all of its
    /// old bytes. A size focuses everything from it on (a shrink drops those pieces).
    pub(crate) fn add(&mut self, ops: &[NsOp], extents: &[MetaExtent]) {
        for op in ops {
            match op {
                NsOp::Put {
                    entry: Entry::File { id, .. },
                    ..
                } => self.add_range(*id, 0, u64::MAX),
                NsOp::SetSize { id, size } => self.add_range(*id, *size, u64::MAX),
                NsOp::Put { .. } | NsOp::Remove { .. } => {}
            }
        }
        for e in extents {
            let start = e.offset();
            self.add_range(e.id(), start, start.saturating_add(e.len()));
        }
    }

    fn add_range(&mut self, id: FileId, start: u64, end: u64) {
        if start < end {
            add_range(self.0.entry(id).or_default(), start, end);
        }
    }

    /// The parts of `[start, end)` of file `id` inside its ranges, in order.
    pub(crate) fn within(&self, id: FileId, start: u64, end: u64) -> Vec<(u64, u64)> {
        let Some(set) = self.0.get(&id) else {
            return Vec::new();
        };
        let first = set.range(..start).next_back();
        first
            .into_iter()
            .chain(set.range(start..end))
            .map(|(&s, &e)| (s.max(start), e.min(end)))
            .filter(|(s, e)| s < e)
            .collect()
    }

    /// Ranges held, over all files (a compaction reports it).
    pub(crate) fn ranges(&self) -> usize {
        self.0.values().map(BTreeMap::len).sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::format::{Codec, PayloadRef};

    #[test]
    fn ranges_of_extents_sizes_and_puts() {
        let payload = PayloadRef {
            seg: 1,
            offset: 0,
            stored_len: 10,
            raw_len: 10,
            codec: Codec::Raw,
            hash: [0; 32],
        };
        let mut f = Focus::default();
        f.add(
            &[
                NsOp::SetSize { id: 2, size: 100 },
                NsOp::Put {
                    path: b"x".to_vec(),
                    entry: Entry::File {
                        id: 3,
                        mode: 0o644,
                        uid: 0,
                        gid: 0,
                    },
                },
            ],
            &[
                MetaExtent::Data {
                    id: 1,
                    offset: 10,
                    payload,
                },
                MetaExtent::Zero {
                    id: 1,
                    offset: 40,
                    len: 10,
                },
            ],
        );
        assert_eq!(f.within(1, 0, 100), vec![(10, 20), (40, 50)]);
        assert_eq!(f.within(1, 15, 45), vec![(15, 20), (40, 45)]);
        assert_eq!(f.within(1, 20, 40), vec![]);
        assert_eq!(f.within(2, 0, 150), vec![(100, 150)]);
        assert_eq!(f.within(3, 7, 9), vec![(7, 9)]);
        assert_eq!(f.within(4, 0, u64::MAX), vec![]);
        assert_eq!(f.ranges(), 4);
    }
}
