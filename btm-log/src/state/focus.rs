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

use crate::format::MetaExtent;
use crate::record::{Entry, FileId, NsOp};

/// (file, start, end) ranges: sorted and merged (disjoint, not touching) up to `merged`, as
/// added after it. 24 bytes a range: a map per file cost about 250 bytes a file (a tree node
/// for one range), 250 MiB for a run that holds a baseline of 10^6 files.
#[derive(Debug, Default)]
pub(crate) struct Focus {
    ranges: Vec<(FileId, u64, u64)>,
    merged: usize,
}

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
                } => self.push(*id, 0, u64::MAX),
                NsOp::SetSize { id, size } => self.push(*id, *size, u64::MAX),
                NsOp::Put { .. } | NsOp::Remove { .. } => {}
            }
        }
        for e in extents {
            let start = e.offset();
            self.push(e.id(), start, start.saturating_add(e.len()));
        }
        // Merged again once the ranges added since are as many as those merged: memory
        // follows the ranges, not the extents (scattered writes at every height).
        if self.ranges.len() - self.merged > self.merged.max(1 << 16) {
            self.merge();
        }
    }

    fn push(&mut self, id: FileId, start: u64, end: u64) {
        if start < end {
            self.ranges.push((id, start, end));
        }
    }

    /// Sorts and merges every range: call once all are added, before [`Focus::within`].
    pub(crate) fn merge(&mut self) {
        self.ranges.sort_unstable();
        let mut out = 0usize;
        for i in 0..self.ranges.len() {
            let r = self.ranges[i];
            match out.checked_sub(1).map(|j| &mut self.ranges[j]) {
                Some(last) if last.0 == r.0 && last.2 >= r.1 => last.2 = last.2.max(r.2),
                _ => {
                    self.ranges[out] = r;
                    out += 1;
                }
            }
        }
        self.ranges.truncate(out);
        self.ranges.shrink_to_fit();
        self.merged = out;
    }

    /// The parts of `[start, end)` of file `id` inside its ranges, in order (after
    /// [`Focus::merge`]).
    pub(crate) fn within(
        &self,
        id: FileId,
        start: u64,
        end: u64,
    ) -> impl Iterator<Item = (u64, u64)> + '_ {
        debug_assert_eq!(self.merged, self.ranges.len(), "merge before within");
        // The first range of the file that ends after `start`.
        let i = self.ranges.partition_point(|r| (r.0, r.2) <= (id, start));
        self.ranges[i..]
            .iter()
            .take_while(move |r| r.0 == id && r.1 < end)
            .map(move |r| (r.1.max(start), r.2.min(end)))
            .filter(|(s, e)| s < e)
    }

    /// Ranges held, over all files (a compaction reports it).
    pub(crate) fn ranges(&self) -> usize {
        self.ranges.len()
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
        f.merge();
        assert_eq!(
            f.within(1, 0, 100).collect::<Vec<_>>(),
            vec![(10, 20), (40, 50)]
        );
        assert_eq!(
            f.within(1, 15, 45).collect::<Vec<_>>(),
            vec![(15, 20), (40, 45)]
        );
        assert_eq!(f.within(1, 20, 40).collect::<Vec<_>>(), vec![]);
        assert_eq!(f.within(2, 0, 150).collect::<Vec<_>>(), vec![(100, 150)]);
        assert_eq!(f.within(3, 7, 9).collect::<Vec<_>>(), vec![(7, 9)]);
        assert_eq!(f.within(4, 0, u64::MAX).collect::<Vec<_>>(), vec![]);
        assert_eq!(f.ranges(), 4);
    }

    /// Ranges that touch or overlap merge, per file, whatever the order they came in and
    /// however often they were merged on the way.
    #[test]
    fn ranges_merge_per_file() {
        let mut f = Focus::default();
        let zero = |id, offset, len| MetaExtent::Zero { id, offset, len };
        for k in (0..200_000u64).rev() {
            f.add(&[], &[zero(k % 3, (k / 3) * 10, 10)]);
        }
        f.add(&[], &[zero(0, 1_000_000, 5), zero(1, 2_000_000, 0)]);
        f.merge();
        let n = 200_000u64.div_ceil(3) * 10;
        assert_eq!(
            f.within(0, 0, u64::MAX).collect::<Vec<_>>(),
            vec![(0, n), (1_000_000, 1_000_005)]
        );
        assert_eq!(
            f.within(1, 0, u64::MAX).collect::<Vec<_>>(),
            vec![(0, 666_670)]
        );
        assert_eq!(f.within(2, 5, 25).collect::<Vec<_>>(), vec![(5, 25)]);
        assert_eq!(f.ranges(), 4);
    }
}
