//! Appending leaves out 4 KiB blocks that already hold exactly those bytes.
//!
//! A cut may capture more than changed: a write fault can make a whole large folio writable,
//! so the tracker marks all of it (up to 2 MiB) although a process stored into one page. Before
//! a record is chunked, every whole 4 KiB block of its data extents is compared with the state it
//! builds on: through the block table of the payload the tip already has there (16-byte blake3
//! prefixes, read from the log, never the payload), or, where the tip has a hole, with zeros.
//! Equal blocks are dropped; what is left is exactly the bytes that differ, in runs.
//!
//! Only what the fold guarantees is used: a block is compared only when it lies below every size
//! the record's operations give its file (so it survives them unchanged) and when no two extents
//! of the record for that file overlap (a later one could restore what an earlier one changed).

use std::cell::RefCell;
use std::collections::{HashMap, HashSet};
use std::ops::Range;

use super::error::LogError;
use super::format::{PayloadRef, TABLE_BLOCK, TABLE_ENTRY};
use super::record::{ExtentBytes, ExtentData, FileId, NsOp};
use super::replay::PayloadSource;
use super::state::TreeState;

const BLOCK: u64 = TABLE_BLOCK;

/// What a record's data can be compared against: the tip, and per file the size below which
/// its tip content survives the record's operations.
pub(crate) struct Unchanged<'a> {
    src: &'a dyn PayloadSource,
    tip: &'a TreeState,
    /// File id -> the smallest size the record's ops give it (or its tip size).
    limit: HashMap<FileId, u64>,
    tables: RefCell<HashMap<PayloadRef, Vec<u8>>>,
    /// Bytes left out (for the record's statistics and tests).
    pub dropped: std::cell::Cell<u64>,
}

impl<'a> Unchanged<'a> {
    pub(crate) fn new(
        src: &'a dyn PayloadSource,
        tip: &'a TreeState,
        ops: &[NsOp],
        extents: &[ExtentData],
    ) -> Unchanged<'a> {
        let mut limit: HashMap<FileId, u64> = HashMap::new();
        for e in extents {
            if let Some(f) = tip.file(e.id) {
                limit.insert(e.id, f.size);
            }
        }
        for op in ops {
            if let NsOp::SetSize { id, size } = op
                && let Some(l) = limit.get_mut(id)
            {
                *l = (*l).min(*size);
            }
        }
        // Files whose extents overlap are left as they are.
        let mut by_id: HashMap<FileId, Vec<(u64, u64)>> = HashMap::new();
        for e in extents {
            by_id
                .entry(e.id)
                .or_default()
                .push((e.offset, e.offset.saturating_add(e.bytes.len())));
        }
        let overlapping: HashSet<FileId> = by_id
            .into_iter()
            .filter_map(|(id, mut v)| {
                v.sort_unstable();
                v.windows(2).any(|w| w[1].0 < w[0].1).then_some(id)
            })
            .collect();
        limit.retain(|id, _| !overlapping.contains(id));
        Unchanged {
            src,
            tip,
            limit,
            tables: RefCell::new(HashMap::new()),
            dropped: std::cell::Cell::new(0),
        }
    }

    /// The byte ranges of `data` (file `id` at `offset`) that differ from the tip, in order.
    pub(crate) fn changed(
        &self,
        id: FileId,
        offset: u64,
        data: &[u8],
    ) -> Result<Vec<Range<usize>>, LogError> {
        let (Some(&limit), Some(f)) = (self.limit.get(&id), self.tip.file(id)) else {
            return Ok(std::iter::once(0..data.len()).collect());
        };
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
                && self.same(f, block, &data[r.clone()])?;
            if same {
                self.dropped.set(self.dropped.get() + BLOCK);
            } else {
                keep(r);
            }
            at = next;
        }
        Ok(out)
    }

    /// Whether the 4 KiB block at `block` of file `f` (tip) holds `bytes`.
    fn same(
        &self,
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
        let mut tables = self.tables.borrow_mut();
        let table = match tables.get(&piece.payload) {
            Some(t) => t,
            None => {
                let t = self.src.load_table(&piece.payload)?;
                tables.entry(piece.payload).or_insert(t)
            }
        };
        let k = (q / BLOCK * TABLE_ENTRY) as usize;
        let Some(want) = table.get(k..k + TABLE_ENTRY as usize) else {
            return Ok(false);
        };
        Ok(blake3::hash(bytes).as_bytes()[..TABLE_ENTRY as usize] == *want)
    }
}

/// The data extents' bytes in `extents`, minus what [`Unchanged`] finds equal.
pub(crate) fn data_runs<'d>(
    unchanged: Option<&Unchanged>,
    e: &'d ExtentData,
) -> Result<Vec<(u64, &'d [u8])>, LogError> {
    let ExtentBytes::Data(d) = &e.bytes else {
        return Ok(Vec::new());
    };
    let runs = match unchanged {
        Some(u) => u.changed(e.id, e.offset, d)?,
        None => std::iter::once(0..d.len()).collect(),
    };
    Ok(runs
        .into_iter()
        .map(|r| (e.offset + r.start as u64, &d[r]))
        .collect())
}
