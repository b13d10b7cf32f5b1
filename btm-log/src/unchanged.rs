//! Appending leaves out 4 KiB blocks that already hold exactly those bytes.
//!
//! A cut may capture more than changed: a write fault can make a whole large folio writable,
//! so the tracker marks all of it (up to 2 MiB) although a process stored into one page, and a
//! full capture (after a restart) reads every file. Before data is chunked, every whole 4 KiB
//! block is compared with the state the record builds on: through the block table of the
//! payload the tip already has there (16-byte blake3 prefixes, read from the log, never the
//! payload), or, where the tip has a hole, with zeros. Equal blocks are dropped; what is left
//! is exactly the bytes that differ, in runs.
//!
//! Extents arrive one at a time (see [`super::append`]), so only what the fold guarantees is
//! used: a block is compared only where no earlier extent of the record touched it (a later
//! one could restore what an earlier one changed) and below the file's tip size. Operations
//! come last; [`Unchanged::sizes_check`] then checks that none of them empties a dropped block
//! (a shrink followed by a larger size, which reads as zeros there).

use std::collections::{BTreeMap, HashMap};
use std::ops::Range;

use super::error::LogError;
use super::format::{PayloadRef, TABLE_BLOCK, TABLE_ENTRY};
use super::record::{FileId, NsOp};
use super::replay::PayloadSource;
use super::state::TreeState;

const BLOCK: u64 = TABLE_BLOCK;

/// Block tables kept for comparisons; dropped when they grow beyond this.
const TABLE_CACHE: usize = 32 << 20;

/// What a draft record has touched and left out, per file.
#[derive(Default)]
pub(crate) struct Unchanged {
    /// File id -> a size given up front below which the tip's content survives the ops.
    limit: HashMap<FileId, u64>,
    /// File id -> byte ranges earlier extents of the record touched, start -> end, disjoint
    /// and not touching. A map, not a sorted `Vec`: extents out of offset order (10^6 writes
    /// scattered over a file) cost O(log n) each, not a sort of every range so far.
    /// Most files get one extent per record: that one is kept inline, not in a tree node
    /// (a full capture after a crash covers every file of the volume).
    covered: HashMap<FileId, Covered>,
    /// File id -> the end of the highest block left out.
    dropped_end: HashMap<FileId, u64>,
    tables: HashMap<PayloadRef, Vec<u8>>,
    table_bytes: usize,
    /// Bytes left out (for the record's statistics and tests).
    pub dropped: u64,
}

impl Unchanged {
    /// Lowers the comparison limit of each file to every size `ops` set.
    pub(crate) fn limit_by(&mut self, ops: &[NsOp]) {
        for op in ops {
            if let NsOp::SetSize { id, size } = op {
                let l = self.limit.entry(*id).or_insert(u64::MAX);
                *l = (*l).min(*size);
            }
        }
    }

    /// Records that an extent of the record touched `[start, end)` of file `id`.
    pub(crate) fn cover(&mut self, id: FileId, start: u64, end: u64) {
        if start >= end {
            return;
        }
        let c = self.covered.entry(id).or_insert(Covered::One(start, end));
        match c {
            Covered::One(s, e) if start <= *e && *s <= end => {
                (*s, *e) = ((*s).min(start), (*e).max(end));
            }
            Covered::One(s, e) => {
                let m = BTreeMap::from([(*s, *e)]);
                *c = Covered::Many(m);
                c.insert(start, end);
            }
            Covered::Many(_) => c.insert(start, end),
        }
    }

    fn touched(&self, id: FileId, start: u64, end: u64) -> bool {
        match self.covered.get(&id) {
            None => false,
            Some(Covered::One(s, e)) => *s < end && *e > start,
            Some(Covered::Many(m)) => m.range(..end).next_back().is_some_and(|(_, &e)| e > start),
        }
    }

    /// A check, fed the record's operations one at a time, that they keep every dropped block
    /// as the tip has it.
    pub(crate) fn sizes_check(&self) -> SizesCheck<'_> {
        SizesCheck {
            u: self,
            sizes: HashMap::new(),
        }
    }

    /// The byte ranges of `data` (file `id` at `offset`) that differ from the tip, in order.
    pub(crate) fn changed(
        &mut self,
        src: &dyn PayloadSource,
        tip: &TreeState,
        id: FileId,
        offset: u64,
        data: &[u8],
    ) -> Result<Vec<Range<usize>>, LogError> {
        let Some(f) = tip.file(id) else {
            return Ok(std::iter::once(0..data.len()).collect());
        };
        let limit = self.limit.get(&id).map_or(f.size, |&l| l.min(f.size));
        let mut out: Vec<Range<usize>> = Vec::new();
        let mut keep = |r: Range<usize>| match out.last_mut() {
            Some(last) if last.end == r.start => last.end = r.end,
            _ if r.is_empty() => {}
            _ => out.push(r),
        };
        let end = offset + data.len() as u64;
        let mut at = offset;
        while at < end {
            let block = at / BLOCK * BLOCK;
            let next = (block + BLOCK).min(end);
            let r = (at - offset) as usize..(next - offset) as usize;
            let same = at == block
                && next == block + BLOCK
                && next <= limit
                && !self.touched(id, block, next)
                && self.same(src, f, block, &data[r.clone()])?;
            if same {
                self.dropped += BLOCK;
                let d = self.dropped_end.entry(id).or_default();
                *d = (*d).max(next);
            } else {
                keep(r);
            }
            at = next;
        }
        Ok(out)
    }

    /// Whether the 4 KiB block at `block` of file `f` (tip) holds `bytes`.
    fn same(
        &mut self,
        src: &dyn PayloadSource,
        f: &super::state::FileState,
        block: u64,
        bytes: &[u8],
    ) -> Result<bool, LogError> {
        let covering = f
            .pieces
            .range(..=block)
            .next_back()
            .filter(|(s, p)| **s + p.len > block);
        let Some((&start, piece)) = covering else {
            // A hole (or beyond the data): the block reads as zeros there.
            let next_piece = f.pieces.range(block..).next().map(|(s, _)| *s);
            let hole = next_piece.is_none_or(|s| s >= block + BLOCK);
            return Ok(hole && bytes.iter().all(|&b| b == 0));
        };
        let q = piece.skip + (block - start);
        if !q.is_multiple_of(BLOCK)
            || block + BLOCK > start + piece.len
            || q + BLOCK > piece.payload.raw_len
        {
            return Ok(false);
        }
        if !self.tables.contains_key(&piece.payload) {
            if self.table_bytes > TABLE_CACHE {
                self.tables.clear();
                self.table_bytes = 0;
            }
            let t = src.load_table(&piece.payload)?;
            self.table_bytes += t.len();
            self.tables.insert(piece.payload, t);
        }
        let table = &self.tables[&piece.payload];
        let k = (q / BLOCK * TABLE_ENTRY) as usize;
        let Some(want) = table.get(k..k + TABLE_ENTRY as usize) else {
            return Ok(false);
        };
        Ok(blake3::hash(bytes).as_bytes()[..TABLE_ENTRY as usize] == *want)
    }
}

/// Byte ranges of one file an extent touched: start -> end, disjoint and not touching.
enum Covered {
    One(u64, u64),
    Many(BTreeMap<u64, u64>),
}

impl Covered {
    /// Adds `[start, end)` (only on `Many`), merging what it overlaps or touches.
    fn insert(&mut self, start: u64, end: u64) {
        let Covered::Many(m) = self else {
            return;
        };
        let (mut s, mut e) = (start, end);
        if let Some((&ps, &pe)) = m.range(..start).next_back()
            && pe >= start
        {
            (s, e) = (ps, e.max(pe));
        }
        while let Some((&ns, &ne)) = m.range(s..=e).next() {
            m.remove(&ns);
            e = e.max(ne);
        }
        m.insert(s, e);
    }
}

/// See [`Unchanged::sizes_check`]: the smallest and the last size each op sets, for the
/// files that left blocks out.
pub(crate) struct SizesCheck<'a> {
    u: &'a Unchanged,
    sizes: HashMap<FileId, (u64, u64)>,
}

impl SizesCheck<'_> {
    pub(crate) fn op(&mut self, op: &NsOp) {
        if let NsOp::SetSize { id, size } = op
            && self.u.dropped_end.contains_key(id)
        {
            let e = self.sizes.entry(*id).or_insert((*size, *size));
            e.0 = e.0.min(*size);
            e.1 = *size;
        }
    }

    /// Fails when a file is shrunk below a block left out and grown again.
    pub(crate) fn finish(self) -> Result<(), String> {
        for (id, (min, last)) in self.sizes {
            if min < last && self.u.dropped_end[&id] > min {
                return Err(format!(
                    "file id {id} is shrunk to {min} and grown again after its data was compared \
                     with the tip: give the sizes before the extents"
                ));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::{Covered, Unchanged};

    /// The sorted-`Vec` ranges this module kept before: the reference.
    fn cover_vec(v: &mut Vec<(u64, u64)>, start: u64, end: u64) {
        if start >= end {
            return;
        }
        v.push((start, end));
        v.sort_unstable();
        let mut merged: Vec<(u64, u64)> = Vec::with_capacity(v.len());
        for &(s, e) in v.iter() {
            match merged.last_mut() {
                Some(m) if s <= m.1 => m.1 = m.1.max(e),
                _ => merged.push((s, e)),
            }
        }
        *v = merged;
    }

    fn touched_vec(v: &[(u64, u64)], start: u64, end: u64) -> bool {
        let i = v.partition_point(|r| r.1 <= start);
        v.get(i).is_some_and(|r| r.0 < end)
    }

    proptest! {
        /// Extents in any order cover, merge and answer "touched" as the sorted ranges did.
        #[test]
        fn covered_ranges_match_sorted_ranges(
            covers in proptest::collection::vec((0u64..2000, 0u64..60), 0..200),
            probes in proptest::collection::vec((0u64..2100, 1u64..80), 1..50),
        ) {
            let mut u = Unchanged::default();
            let mut v = Vec::new();
            for &(s, n) in &covers {
                u.cover(7, s, s + n);
                cover_vec(&mut v, s, s + n);
                let m: Vec<(u64, u64)> = match u.covered.get(&7) {
                    None => Vec::new(),
                    Some(Covered::One(a, b)) => vec![(*a, *b)],
                    Some(Covered::Many(m)) => m.iter().map(|(a, b)| (*a, *b)).collect(),
                };
                prop_assert_eq!(&m, &v);
            }
            for &(s, n) in &probes {
                prop_assert_eq!(u.touched(7, s, s + n), touched_vec(&v, s, s + n));
                prop_assert!(!u.touched(8, s, s + n));
            }
        }
    }
}
