//! The record that replaces a run of dropped records and the kept record after it: the
//! difference between the state before the run and the state at the kept height.
//!
//! The state before the run is not built: it is the state after it with the values the run
//! replaced put back ([`Undo`]), so the diff looks only at what the run touched (plus one pass
//! over the paths, which holds nothing).

use std::collections::{BTreeMap, BTreeSet};

use super::rewrite::Row;
use crate::LogError;
use crate::record::{Entry, FileId, NsOp, parent_of};
use crate::state::{FileBefore, FileState, Node, Piece, TreeState, Undo};

/// The kind of bytes at file position `x`, given the pieces starting at or before it (last
/// first): a hole, or payload bytes (by content).
fn piece_at<'a>(
    mut before: impl DoubleEndedIterator<Item = (&'a u64, &'a Piece)>,
    limit: u64,
    x: u64,
) -> Option<([u8; 32], u64)> {
    if x >= limit {
        return None;
    }
    let (&s, p) = before.next_back()?;
    (x < s + p.len).then(|| (p.payload.hash, p.skip + (x - s)))
}

/// Byte ranges of `cur` inside `ranges` (sorted, disjoint) where it differs from the file
/// before the run, whose pieces there are `old` and whose bytes end at `base_limit`.
fn differing(
    old: &BTreeMap<u64, Piece>,
    base_limit: u64,
    cur: &FileState,
    ranges: impl Iterator<Item = (u64, u64)>,
) -> Vec<(u64, u64)> {
    let mut out: Vec<(u64, u64)> = Vec::new();
    for (start, end) in ranges {
        let end = end.min(cur.size);
        if start >= end {
            continue;
        }
        let mut cuts = BTreeSet::from([start, end]);
        if (start..end).contains(&base_limit) {
            cuts.insert(base_limit);
        }
        let mut add = |s: u64, len: u64| {
            for c in [s, s + len] {
                if (start..end).contains(&c) {
                    cuts.insert(c);
                }
            }
        };
        let first = cur.pieces.range(..start).next_back();
        for (&s, p) in first.into_iter().chain(cur.pieces.range(start..end)) {
            add(s, p.len);
        }
        let first = old.range(..start).next_back();
        for (&s, p) in first.into_iter().chain(old.range(start..end)) {
            add(s, p.len);
        }
        let cuts: Vec<u64> = cuts.into_iter().collect();
        for w in cuts.windows(2) {
            let (a, b) = (w[0], w[1]);
            let was = piece_at(old.range(..=a), base_limit, a);
            if was == piece_at(cur.pieces.range(..=a), cur.size, a) {
                continue;
            }
            match out.last_mut() {
                Some(last) if last.1 == a => last.1 = b,
                _ => out.push((a, b)),
            }
        }
    }
    out
}

/// The entry at a path before the run, whose node then was `node`.
fn entry_before(undo: &Undo, cur: &TreeState, node: &Node) -> Option<Entry> {
    match node {
        Node::File(id) => match undo.before(*id) {
            // A path named the file before the run, so it existed: `None` cannot happen, and
            // is reported as a difference (a put is always right to write).
            Some(b) => b.map(|b| Entry::File {
                id: *id,
                mode: b.mode,
                uid: b.uid,
                gid: b.gid,
            }),
            None => cur.files.contains_key(id).then(|| cur.to_entry(node)),
        },
        _ => Some(cur.to_entry(node)),
    }
}

/// Where a diff goes as it is made: a record written as it comes (a run over every file
/// would hold over 500 MiB of operations and rows otherwise).
pub(super) trait DiffOut {
    fn op(&mut self, op: NsOp) -> Result<(), LogError>;
    fn row(&mut self, row: Row) -> Result<(), LogError>;
}

/// Rows that make file `id` read as `f` in the byte ranges `ranges`.
fn rows_of_ranges(
    id: FileId,
    f: &FileState,
    ranges: Vec<(u64, u64)>,
    out: &mut impl DiffOut,
) -> Result<(), LogError> {
    for (a, b) in ranges {
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
                out.row(Row::Zero {
                    id,
                    offset: x,
                    len: next - x,
                })?;
                x = next;
                continue;
            };
            let end = (s + piece.len).min(b);
            let skip = piece.skip + (x - s);
            if skip == 0 && end - x == piece.payload.raw_len {
                out.row(Row::Ref {
                    id,
                    offset: x,
                    p: piece.payload,
                })?;
            } else {
                // Part of a payload: cut out when written, in bounded batches.
                out.row(Row::Fresh {
                    id,
                    offset: x,
                    src: piece.payload,
                    skip,
                    len: end - x,
                })?;
            }
            x = end;
        }
    }
    Ok(())
}

/// The record of the diff from the state before a run (`cur` with `undo` put back) to `cur`:
/// applied to that state it gives a tree with `cur`'s namespace, metadata and bytes. Handed to
/// `out` as it is made: namespace operations first, then each file's size and rows in id order.
pub(super) fn diff_into(
    undo: &Undo,
    cur: &TreeState,
    out: &mut impl DiffOut,
) -> Result<(), LogError> {
    for (p, was) in undo.nodes.iter() {
        let parent_gone = parent_of(p).is_some_and(|q| !cur.nodes.contains_key(q));
        if was.is_some() && !cur.nodes.contains_key(p) && !parent_gone {
            out.op(NsOp::Remove { path: p.to_vec() })?;
        }
    }
    for (p, n) in &cur.nodes {
        let was = match undo.nodes.get(p) {
            Some(was) => was.as_ref(),
            None => match n {
                Node::File(id) if undo.before(*id).is_some() => Some(n),
                _ => continue, // Neither the path nor its file changed.
            },
        };
        let entry = cur.to_entry(n);
        if was.and_then(|w| entry_before(undo, cur, w)).as_ref() != Some(&entry) {
            out.op(NsOp::Put {
                path: p.to_vec(),
                entry,
            })?;
        }
    }
    let mut ids: Vec<FileId> = undo
        .touched_files()
        .filter(|id| cur.files.contains_key(id))
        .collect();
    ids.sort_unstable();
    let (none, whole) = (BTreeMap::new(), BTreeMap::from([(0, u64::MAX)]));
    for id in ids {
        let f = &cur.files[&id];
        let (size, touched, old) = match undo.before(id).expect("touched") {
            // Created by the run: it differs from nothing wherever it has bytes.
            None => (0, &whole, &none),
            Some(FileBefore {
                size, touched, old, ..
            }) => (*size, touched, old),
        };
        if size != f.size {
            out.op(NsOp::SetSize { id, size: f.size })?;
        }
        let ranges = touched.iter().map(|(&s, &e)| (s, e));
        let ranges = differing(old, size.min(f.size), f, ranges);
        rows_of_ranges(id, f, ranges, out)?;
    }
    Ok(())
}

/// Collects a diff (tests compare diffs whole).
#[cfg(test)]
impl DiffOut for (Vec<NsOp>, Vec<Row>) {
    fn op(&mut self, op: NsOp) -> Result<(), LogError> {
        self.0.push(op);
        Ok(())
    }
    fn row(&mut self, row: Row) -> Result<(), LogError> {
        self.1.push(row);
        Ok(())
    }
}

/// The diff of [`diff_into`], collected.
#[cfg(test)]
pub(super) fn diff(undo: &Undo, cur: &TreeState) -> (Vec<NsOp>, Vec<Row>) {
    let mut out = (Vec::new(), Vec::new());
    diff_into(undo, cur, &mut out).expect("collecting cannot fail");
    out
}

#[cfg(test)]
#[path = "diff_tests.rs"]
mod tests;
