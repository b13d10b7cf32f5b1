//! What one epoch marked, per inode, as merged byte extents plus an optional dirty tail.
use std::collections::BTreeMap;

use btm_common::dirty::{BLOCK_SIZE, NO_TAIL};

use super::blocks::BlockSet;

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct FileDirty {
    /// Dirty 4 KiB block numbers.
    pub blocks: BlockSet,
    /// Every byte at or beyond this offset may have changed.
    pub tail_from: Option<u64>,
    /// OR of `WHY_*` bits for the tail.
    pub why: u32,
}

impl FileDirty {
    /// Merged `(offset, len)` extents of the dirty blocks (the tail not included).
    pub fn extents(&self) -> Vec<(u64, u64)> {
        self.blocks
            .runs()
            .into_iter()
            .map(|(first, n)| (first * BLOCK_SIZE, n * BLOCK_SIZE))
            .collect()
    }

    pub fn block_bytes(&self) -> u64 {
        self.blocks.len() * BLOCK_SIZE
    }

    /// Extents clipped to `size`, with the tail (if any) as `[tail_from, size)`, merged.
    pub fn ranges_within(&self, size: u64) -> Vec<(u64, u64)> {
        let tail = self.tail_from.filter(|&t| t < size);
        let mut out: Vec<(u64, u64)> = Vec::new();
        for (o, l) in self.extents() {
            if o >= size || tail.is_some_and(|t| o >= t) {
                continue;
            }
            let end = (o + l).min(size).min(tail.unwrap_or(u64::MAX));
            out.push((o, end - o));
        }
        if let Some(t) = tail {
            match out.last_mut() {
                Some((o, l)) if *o + *l >= t => *l = size - *o,
                _ => out.push((t, size - t)),
            }
        }
        out
    }
}

#[derive(Clone, Debug, Default)]
pub struct DirtySet {
    pub files: BTreeMap<u64, FileDirty>,
    /// Large folios that were dirty with only part of them marked: (inode, first block,
    /// order). Promoted whole by [`DirtySet::widen_to_folios`].
    pub partial: Vec<(u64, u64, u32)>,
}

impl DirtySet {
    pub fn add_chunk(&mut self, ino: u64, chunk: u64, bits: &[u64]) {
        self.files
            .entry(ino)
            .or_default()
            .blocks
            .add_words(chunk, bits);
    }

    pub fn add_tail(&mut self, ino: u64, from: u64, why: u32) {
        if from == NO_TAIL {
            return;
        }
        let f = self.files.entry(ino).or_default();
        f.tail_from = Some(f.tail_from.map_or(from, |t| t.min(from)));
        f.why |= why;
    }

    /// Folds a later set into this one (used when a cut spans several drains).
    pub fn merge(&mut self, other: DirtySet) {
        for (ino, f) in other.files {
            let e = self.files.entry(ino).or_default();
            e.blocks.union(f.blocks);
            if let Some(t) = f.tail_from {
                e.tail_from = Some(e.tail_from.map_or(t, |x| x.min(t)));
            }
            e.why |= f.why;
        }
        self.partial.extend(other.partial);
    }

    /// Marks whole every folio that was dirty with only part of it marked. Used when a write
    /// fault could not be resolved to a page: the lost page sits in a folio that was clean (its
    /// folio event then marked it whole) or already dirty, and a dirty folio is either marked
    /// whole or recorded here.
    /// What the fault probe marks for a write fault on `page` of `ino`: the page, and the
    /// partially-marked folio holding it, whose other pages the fault may have made writable.
    pub fn mark_fault(&mut self, ino: u64, page: u64) {
        let f = self.files.entry(ino).or_default();
        f.blocks.insert(page);
        for &(pino, index, order) in &self.partial {
            if pino == ino && index <= page && page < index + (1u64 << order) {
                f.blocks.insert_range(index..index + (1u64 << order));
            }
        }
    }

    pub fn widen_to_folios(&mut self) {
        for &(ino, index, order) in &self.partial {
            let f = self.files.entry(ino).or_default();
            f.blocks.insert_range(index..index + (1u64 << order));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chunk_bits_become_merged_extents() {
        let mut s = DirtySet::default();
        let mut bits = [0u64; 8];
        bits[0] = 0b1011; // blocks 0,1,3
        bits[7] = 1 << 63; // block 511
        s.add_chunk(7, 1, &bits); // chunk 1 starts at block 512
        let f = &s.files[&7];
        assert_eq!(
            f.extents(),
            vec![(512 * 4096, 8192), (515 * 4096, 4096), (1023 * 4096, 4096)]
        );
    }

    #[test]
    fn widening_marks_partial_folios_whole() {
        let mut s = DirtySet::default();
        s.add_chunk(1, 0, &[1 << 3, 0, 0, 0, 0, 0, 0, 0]); // block 3
        s.partial.push((1, 0, 4)); // the 16-block folio holding it
        s.partial.push((2, 64, 2));
        s.widen_to_folios();
        assert_eq!(s.files[&1].extents(), vec![(0, 16 * 4096)]);
        assert_eq!(s.files[&2].extents(), vec![(64 * 4096, 4 * 4096)]);
    }

    #[test]
    fn ranges_clip_to_size_and_add_tail() {
        let mut f = FileDirty::default();
        f.blocks.extend([0, 1, 5, 9]);
        f.tail_from = Some(5 * 4096 + 100);
        assert_eq!(
            f.ranges_within(7 * 4096),
            vec![(0, 8192), (5 * 4096, 2 * 4096)]
        );
        assert_eq!(f.ranges_within(4096), vec![(0, 4096)]);
        let g = FileDirty {
            tail_from: Some(10),
            ..Default::default()
        };
        assert_eq!(g.ranges_within(5), vec![]);
        assert_eq!(g.ranges_within(50), vec![(10, 40)]);
    }
}
