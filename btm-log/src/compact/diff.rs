//! The record that replaces a run of dropped records and the kept record after it: the
//! difference between the state before the run and the state at the kept height.
use std::collections::BTreeSet;

use super::rewrite::Row;
use crate::Log;
use crate::record::{FileId, NsOp, parent_of};
use crate::state::{FileState, TreeState};

/// The kind of bytes at a file position: a hole, or payload bytes (by content).
fn piece_at(f: &FileState, limit: u64, x: u64) -> Option<([u8; 32], u64)> {
    if x >= limit {
        return None;
    }
    let (&s, p) = f.pieces.range(..=x).next_back()?;
    (x < s + p.len).then(|| (p.payload.hash, p.skip + (x - s)))
}

/// Byte ranges of `[0, cur.size)` where `cur` differs from `base` (clipped to `base_limit`).
fn differing(base: Option<&FileState>, base_limit: u64, cur: &FileState) -> Vec<(u64, u64)> {
    let mut cuts = BTreeSet::from([0, cur.size]);
    let add = |cuts: &mut BTreeSet<u64>, f: &FileState| {
        for (&s, p) in &f.pieces {
            cuts.insert(s.min(cur.size));
            cuts.insert((s + p.len).min(cur.size));
        }
    };
    add(&mut cuts, cur);
    if let Some(b) = base {
        add(&mut cuts, b);
        cuts.insert(base_limit.min(cur.size));
    }
    let cuts: Vec<u64> = cuts.into_iter().collect();
    let mut out: Vec<(u64, u64)> = Vec::new();
    for w in cuts.windows(2) {
        let (a, b) = (w[0], w[1]);
        if a >= b {
            continue;
        }
        let old = base.and_then(|f| piece_at(f, base_limit, a));
        if old == piece_at(cur, cur.size, a) {
            continue;
        }
        match out.last_mut() {
            Some(last) if last.1 == a => last.1 = b,
            _ => out.push((a, b)),
        }
    }
    out
}

impl Log {
    /// The record at `height` of the diff from `prev` to `cur`: applied to `prev` it gives a
    /// tree with `cur`'s namespace, metadata and bytes.
    pub(super) fn diff(&self, prev: &TreeState, cur: &TreeState) -> (Vec<NsOp>, Vec<Row>) {
        let mut ops = Vec::new();
        for p in prev.nodes.keys() {
            let parent_gone = parent_of(p).is_some_and(|q| !cur.nodes.contains_key(q));
            if !cur.nodes.contains_key(p) && !parent_gone {
                ops.push(NsOp::Remove { path: p.clone() });
            }
        }
        for (p, e) in cur.entries() {
            if prev.entry(p).as_ref() != Some(&e) {
                ops.push(NsOp::Put {
                    path: p.clone(),
                    entry: e,
                });
            }
        }
        let mut ids: Vec<FileId> = cur.files.keys().copied().collect();
        ids.sort_unstable();
        let mut rows = Vec::new();
        for id in ids {
            let f = &cur.files[&id];
            let base = prev.files.get(&id);
            let base_size = base.map_or(0, |b| b.size);
            if base_size != f.size {
                ops.push(NsOp::SetSize { id, size: f.size });
            }
            for (a, b) in differing(base, base_size.min(f.size), f) {
                let mut x = a;
                while x < b {
                    let Some((&s, piece)) = f
                        .pieces
                        .range(..=x)
                        .next_back()
                        .filter(|(s, p)| x < **s + p.len)
                    else {
                        // A hole up to the next piece (or the range end).
                        let next = f.pieces.range(x..).next().map_or(b, |(s, _)| (*s).min(b));
                        rows.push(Row::Zero {
                            id,
                            offset: x,
                            len: next - x,
                        });
                        x = next;
                        continue;
                    };
                    let end = (s + piece.len).min(b);
                    let skip = piece.skip + (x - s);
                    if skip == 0 && end - x == piece.payload.raw_len {
                        rows.push(Row::Ref {
                            id,
                            offset: x,
                            p: piece.payload,
                        });
                    } else {
                        // Part of a payload: cut out when written, in bounded batches.
                        rows.push(Row::Fresh {
                            id,
                            offset: x,
                            src: piece.payload,
                            skip,
                            len: end - x,
                        });
                    }
                    x = end;
                }
            }
        }
        (ops, rows)
    }
}
