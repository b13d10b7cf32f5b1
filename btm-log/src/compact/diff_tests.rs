//! The diff read from a run's [`Undo`] against the diff of two whole states (the code it
//! replaced, kept here as the reference): the same ops and rows for random runs of records
//! over directories, hard links, symlinks, renames, size changes and writes.

use std::collections::BTreeSet;

use proptest::prelude::*;

use super::super::rewrite::Row;
use super::{diff, rows_of_ranges};
use crate::format::{Codec, MetaExtent, PayloadRef};
use crate::record::{Entry, FileId, NsOp, RelPath, parent_of};
use crate::state::{FileState, Focus, Node, TreeState, Undo};

/// The reference: every path and every file of both states compared.
fn diff_of_states(prev: &TreeState, cur: &TreeState) -> (Vec<NsOp>, Vec<Row>) {
    fn piece_at(f: &FileState, limit: u64, x: u64) -> Option<([u8; 32], u64)> {
        if x >= limit {
            return None;
        }
        let (&s, p) = f.pieces.range(..=x).next_back()?;
        (x < s + p.len).then(|| (p.payload.hash, p.skip + (x - s)))
    }
    let mut ops = Vec::new();
    for p in prev.nodes.keys() {
        let parent_gone = parent_of(p).is_some_and(|q| !cur.nodes.contains_key(q));
        if !cur.nodes.contains_key(p) && !parent_gone {
            ops.push(NsOp::Remove { path: p.to_vec() });
        }
    }
    for (p, e) in cur.entries() {
        if prev.entry(p).as_ref() != Some(&e) {
            ops.push(NsOp::Put {
                path: p.to_vec(),
                entry: e,
            });
        }
    }
    let mut ids: Vec<FileId> = cur.files.keys().copied().collect();
    ids.sort_unstable();
    let mut out = (ops, Vec::new());
    for id in ids {
        let f = &cur.files[&id];
        let base = prev.files.get(&id);
        let base_size = base.map_or(0, |b| b.size);
        if base_size != f.size {
            out.0.push(NsOp::SetSize { id, size: f.size });
        }
        let limit = base_size.min(f.size);
        let mut cuts = BTreeSet::from([0, f.size, limit]);
        for g in [Some(f), base].into_iter().flatten() {
            for (&s, p) in &g.pieces {
                cuts.insert(s.min(f.size));
                cuts.insert((s + p.len).min(f.size));
            }
        }
        let cuts: Vec<u64> = cuts.into_iter().collect();
        let mut ranges: Vec<(u64, u64)> = Vec::new();
        for w in cuts.windows(2) {
            let (a, b) = (w[0], w[1]);
            if a >= b || base.and_then(|g| piece_at(g, limit, a)) == piece_at(f, f.size, a) {
                continue;
            }
            match ranges.last_mut() {
                Some(last) if last.1 == a => last.1 = b,
                _ => ranges.push((a, b)),
            }
        }
        rows_of_ranges(id, f, ranges, &mut out).expect("collecting cannot fail");
    }
    out
}

/// One random choice, read against the tree as it is when its op is made.
type Pick = (u8, u16, u16, u16);

fn payload(n: u64, len: u64) -> PayloadRef {
    PayloadRef {
        seg: 1,
        offset: n * 100_000,
        stored_len: len,
        raw_len: len,
        codec: Codec::Raw,
        hash: *blake3::hash(&n.to_le_bytes()).as_bytes(),
    }
}

/// A valid record made of `picks`: each op is checked against `model`, which sees the ops
/// one at a time (so it may forget a file the record keeps; it never holds one it drops).
fn record(model: &mut TreeState, h: u64, picks: &[Pick]) -> (Vec<NsOp>, Vec<MetaExtent>) {
    let mut ops = Vec::new();
    let mut extents = Vec::new();
    for (i, &(kind, a, b, c)) in picks.iter().enumerate() {
        let dirs: Vec<RelPath> = std::iter::once(Vec::new())
            .chain(
                model
                    .nodes
                    .iter()
                    .filter(|(_, n)| matches!(n, Node::Dir { .. }))
                    .map(|(p, _)| p.to_vec()),
            )
            .collect();
        let paths: Vec<&[u8]> = model.nodes.keys().collect();
        let mut ids: Vec<FileId> = model.files.keys().copied().collect();
        ids.sort_unstable();
        let under = |name: String| {
            let d = &dirs[a as usize % dirs.len()];
            let mut p = d.clone();
            if !p.is_empty() {
                p.push(b'/');
            }
            p.extend_from_slice(name.as_bytes());
            p
        };
        let (mode, uid) = (0o600 + u32::from(c % 3), u32::from(c % 2));
        let op = match kind % 8 {
            0 => Some(NsOp::Put {
                path: under(format!("d{}", b % 3)),
                entry: Entry::Dir { mode, uid, gid: 0 },
            }),
            1 | 2 => {
                // A new file (with a size), or one more name (or a new mode) for an existing one.
                let (id, new) = match ids.get(c as usize % 4) {
                    Some(&id) if kind % 8 == 2 => (id, false),
                    _ => (h * 100 + i as u64, true),
                };
                let put = NsOp::Put {
                    path: under(format!("f{}", b % 4)),
                    entry: Entry::File {
                        id,
                        mode,
                        uid,
                        gid: 0,
                    },
                };
                if new {
                    model
                        .apply(h, std::slice::from_ref(&put), &[])
                        .expect("valid op");
                    ops.push(put);
                    Some(NsOp::SetSize {
                        id,
                        size: u64::from(a % 40) * 1000,
                    })
                } else {
                    Some(put)
                }
            }
            3 => Some(NsOp::Put {
                path: under(format!("l{}", b % 2)),
                entry: Entry::Symlink {
                    target: format!("t{c}").into_bytes(),
                    uid,
                    gid: 0,
                },
            }),
            4 => (!paths.is_empty()).then(|| NsOp::Remove {
                path: paths[b as usize % paths.len()].to_vec(),
            }),
            5 => (!ids.is_empty()).then(|| NsOp::SetSize {
                id: ids[b as usize % ids.len()],
                size: u64::from(c % 40) * 1000 + u64::from(a % 7) * 300,
            }),
            _ => {
                if let Some(&id) = ids.get(b as usize % ids.len().max(1)) {
                    let offset = u64::from(a % 40) * 1000 + u64::from(c % 3) * 333;
                    let len = u64::from(c % 9) * 700 + 1;
                    extents.push(if c % 7 == 0 {
                        MetaExtent::Zero { id, offset, len }
                    } else {
                        MetaExtent::Data {
                            id,
                            offset,
                            payload: payload(h * 100 + i as u64, len),
                        }
                    });
                }
                None
            }
        };
        if let Some(op) = op {
            model
                .apply(h, std::slice::from_ref(&op), &[])
                .expect("valid op");
            ops.push(op);
        }
    }
    extents.retain(|e| model.files.contains_key(&e.id()));
    (ops, extents)
}

fn picks() -> impl Strategy<Value = Vec<Vec<Pick>>> {
    proptest::collection::vec(proptest::collection::vec(any::<Pick>(), 0..12), 1..10)
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(1000))]
    /// Records `0..split` make the state before the run, the rest the run; the diff from the
    /// run's undo values is the diff of the two whole states.
    #[test]
    fn undo_diff_is_the_diff_of_whole_states(records in picks(), split in 0usize..6) {
        let mut model = TreeState::default();
        let mut st = TreeState::default();
        let split = split.min(records.len() - 1);
        let mut undo = Undo::default();
        let mut base = None;
        let mut made = Vec::new();
        for (i, picks) in records.iter().enumerate() {
            let h = i as u64 + 1;
            let (ops, extents) = record(&mut model, h, picks);
            made.push((ops.clone(), extents.clone()));
            if i < split {
                st.apply(h, &ops, &extents).unwrap();
                model = st.clone();
                continue;
            }
            if base.is_none() {
                base = Some(st.clone());
            }
            st.apply_recording(h, &ops, &extents, &mut undo).unwrap();
            model = st.clone();
        }
        let base = base.expect("the run has a record");
        let want = diff_of_states(&base, &st);
        let got = diff(&undo, &st);
        prop_assert_eq!(&got.0, &want.0);
        prop_assert_eq!(&got.1, &want.1);
        // Folded with the run's focus (pieces only where the run touched, as compaction
        // folds), the same records give the same diff.
        let mut focus = Focus::default();
        for (ops, extents) in &made[split..] {
            focus.add(ops, extents);
        }
        focus.merge();
        let (mut st, mut undo) = (TreeState::default(), Undo::default());
        for (i, (ops, extents)) in made.iter().enumerate() {
            let u = (i >= split).then_some(&mut undo);
            st.apply_focused(i as u64 + 1, ops, extents, &focus, u).unwrap();
        }
        prop_assert_eq!(diff(&undo, &st), got);
    }
}

/// A run over a tree of many files keeps only what it touched: no copy of the tree, and of a
/// rewritten file only the old pieces of the rewritten range.
#[test]
fn a_run_keeps_only_what_it_touched() {
    let mut st = TreeState::default();
    let file = |path: String, id| NsOp::Put {
        path: path.into_bytes(),
        entry: Entry::File {
            id,
            mode: 0o644,
            uid: 0,
            gid: 0,
        },
    };
    let mut ops = Vec::new();
    let mut extents = Vec::new();
    for id in 0..1000 {
        ops.push(file(format!("f{id}"), id));
        ops.push(NsOp::SetSize { id, size: 40_960 });
        for b in 0..10 {
            extents.push(MetaExtent::Data {
                id,
                offset: b * 4096,
                payload: payload(id * 10 + b, 4096),
            });
        }
    }
    st.apply(1, &ops, &extents).unwrap();
    let base = st.clone();
    let mut undo = Undo::default();
    // Height 2: a rename of file 7; height 3: file 8 rewritten in its third block.
    let rename = [
        NsOp::Remove {
            path: b"f7".to_vec(),
        },
        file("g7".into(), 7),
    ];
    st.apply_recording(2, &rename, &[], &mut undo).unwrap();
    let write = MetaExtent::Data {
        id: 8,
        offset: 8192,
        payload: payload(99_999, 4096),
    };
    st.apply_recording(3, &[], std::slice::from_ref(&write), &mut undo)
        .unwrap();
    assert_eq!(undo.nodes.len(), 2, "{:?}", undo.nodes);
    assert_eq!(undo.files.len(), 2);
    assert!(undo.created.is_empty());
    let eight = &undo.files[&8];
    assert_eq!(eight.old.len(), 1);
    assert!(undo.files[&7].old.is_empty());
    assert_eq!(diff(&undo, &st), diff_of_states(&base, &st));

    // Folded with the run's focus, the state holds file 7 whole (put again) and of file 8
    // only the rewritten block: no other file keeps a piece.
    let mut focus = Focus::default();
    focus.add(&rename, &[]);
    focus.add(&[], std::slice::from_ref(&write));
    focus.merge();
    let (mut fst, mut fundo) = (TreeState::default(), Undo::default());
    fst.apply_focused(1, &ops, &extents, &focus, None).unwrap();
    fst.apply_focused(2, &rename, &[], &focus, Some(&mut fundo))
        .unwrap();
    fst.apply_focused(
        3,
        &[],
        std::slice::from_ref(&write),
        &focus,
        Some(&mut fundo),
    )
    .unwrap();
    let pieces: Vec<(FileId, usize)> = (0..1000)
        .map(|id| (id, fst.files[&id].pieces.len()))
        .filter(|(_, n)| *n > 0)
        .collect();
    assert_eq!(pieces, vec![(7, 10), (8, 1)]);
    assert_eq!(fst.files.len(), 1000);
    assert_eq!(diff(&fundo, &fst), diff(&undo, &st));
}

/// A file removed and put again under its id in the same run starts empty: the diff compares
/// all of its old bytes, so a focused fold must keep them all (the put focuses the whole file).
#[test]
fn an_id_put_again_after_its_removal_is_focused_whole() {
    let put = |path: &[u8]| NsOp::Put {
        path: path.to_vec(),
        entry: Entry::File {
            id: 5,
            mode: 0o644,
            uid: 0,
            gid: 0,
        },
    };
    let size = |size| NsOp::SetSize { id: 5, size };
    let block = |b: u64, n: u64| MetaExtent::Data {
        id: 5,
        offset: b * 4096,
        payload: payload(n, 4096),
    };
    let base: Vec<MetaExtent> = (0..10).map(|b| block(b, b)).collect();
    let records: Vec<(Vec<NsOp>, Vec<MetaExtent>)> = vec![
        (vec![put(b"a"), size(40_960)], base),
        (
            vec![NsOp::Remove {
                path: b"a".to_vec(),
            }],
            vec![],
        ),
        (vec![put(b"b"), size(40_960)], vec![block(3, 77)]),
    ];
    let fold = |focus: Option<&Focus>| {
        let (mut st, mut undo) = (TreeState::default(), Undo::default());
        for (i, (ops, extents)) in records.iter().enumerate() {
            let h = i as u64 + 1;
            match (focus, i) {
                (Some(f), 0) => st.apply_focused(h, ops, extents, f, None),
                (Some(f), _) => st.apply_focused(h, ops, extents, f, Some(&mut undo)),
                (None, 0) => st.apply(h, ops, extents),
                (None, _) => st.apply_recording(h, ops, extents, &mut undo),
            }
            .unwrap();
        }
        diff(&undo, &st)
    };
    let mut focus = Focus::default();
    for (ops, extents) in &records[1..] {
        focus.add(ops, extents);
    }
    focus.merge();
    let (_, rows) = fold(Some(&focus));
    // Block 3 rewritten, the other nine holes now (the file was put again empty).
    let zero: u64 = rows
        .iter()
        .map(|r| match r {
            Row::Zero { len, .. } => *len,
            _ => 0,
        })
        .sum();
    assert_eq!(zero, 9 * 4096, "{rows:?}");
    assert_eq!(fold(Some(&focus)), fold(None));
}
