//! [`PieceMap`] against the `BTreeMap` it replaced: the map's own operations, and what the fold
//! makes of a file's pieces under random writes, punches and truncations, few pieces and many.

use std::collections::BTreeMap;
use std::ops::Bound;

use proptest::prelude::*;

use super::{LARGE, PieceMap};
use crate::format::{Codec, MetaExtent, PayloadRef};
use crate::record::{Entry, NsOp};
use crate::state::{Piece, TreeState};

fn payload(n: u64, len: u64) -> PayloadRef {
    PayloadRef {
        seg: 1,
        offset: n * 1000,
        stored_len: len,
        raw_len: len,
        codec: Codec::Raw,
        hash: [n as u8; 32],
    }
}

fn piece(n: u64) -> Piece {
    Piece {
        len: n % 7 + 1,
        skip: n % 3,
        payload: payload(n, 10),
    }
}

#[derive(Clone, Debug)]
enum MapOp {
    Insert(u64),
    Remove(u64),
    GetMut(u64),
    /// Removes every key in `[a, a + n)` (as a punch does).
    Clear(u64, u64),
    /// Removes every key between any two bounds.
    Take(u8, u64, u8, u64),
}

fn map_op(keys: u64) -> impl Strategy<Value = MapOp> {
    prop_oneof![
        6 => (0..keys).prop_map(MapOp::Insert),
        2 => (0..keys).prop_map(MapOp::Remove),
        1 => (0..keys).prop_map(MapOp::GetMut),
        1 => (0..keys, 0..keys).prop_map(|(a, n)| MapOp::Clear(a, n)),
        1 => (any::<u8>(), 0..keys + 10, any::<u8>(), 0..keys + 10)
            .prop_map(|(lk, l, hk, h)| MapOp::Take(lk, l, hk, h)),
    ]
}

fn bound(kind: u8, at: u64) -> Bound<u64> {
    match kind % 3 {
        0 => Bound::Included(at),
        1 => Bound::Excluded(at),
        _ => Bound::Unbounded,
    }
}

/// Whether `BTreeMap::range` accepts these bounds (it panics otherwise; so does ours).
fn valid(lo: Bound<u64>, hi: Bound<u64>) -> bool {
    use Bound::*;
    match (lo, hi) {
        (Excluded(s), Excluded(e)) => s < e,
        (Included(s) | Excluded(s), Included(e) | Excluded(e)) => s <= e,
        _ => true,
    }
}

fn check_same(ours: &PieceMap, model: &BTreeMap<u64, Piece>, probes: &[(u8, u64, u8, u64)]) {
    assert_eq!(ours.len(), model.len());
    assert_eq!(ours.is_empty(), model.is_empty());
    assert!(ours.iter().eq(model.iter()));
    assert!(ours.values().rev().eq(model.values().rev()));
    assert!((&ours.clone()).into_iter().eq(model.iter()));
    assert_eq!(ours, &model.clone().into_iter().collect::<PieceMap>());
    for &(lk, l, hk, h) in probes {
        let (lo, hi) = (bound(lk, l), bound(hk, h));
        if !valid(lo, hi) {
            continue;
        }
        assert!(
            ours.range((lo, hi)).eq(model.range((lo, hi))),
            "{lo:?}..{hi:?}"
        );
        assert!(
            ours.range((lo, hi)).rev().eq(model.range((lo, hi)).rev()),
            "{lo:?}..{hi:?} backwards"
        );
        // The call sites' shapes: the last piece before or at x, the first at or after x.
        assert_eq!(ours.range(..=l).next_back(), model.range(..=l).next_back());
        assert_eq!(ours.range(..l).next_back(), model.range(..l).next_back());
        assert_eq!(ours.range(l..).next(), model.range(l..).next());
    }
}

/// Applies `ops` to a [`PieceMap`] and a `BTreeMap` alike, checking after each one.
fn run_map_ops(
    keys: u64,
    ops: &[MapOp],
    probes: &[(u8, u64, u8, u64)],
) -> Result<(), TestCaseError> {
    let (mut ours, mut model) = (PieceMap::new(), BTreeMap::new());
    for (n, op) in ops.iter().enumerate() {
        let n = n as u64;
        match *op {
            MapOp::Insert(k) => {
                prop_assert_eq!(
                    ours.insert(k % keys, piece(n)),
                    model.insert(k % keys, piece(n))
                );
            }
            MapOp::Remove(k) => {
                prop_assert_eq!(ours.remove(&(k % keys)), model.remove(&(k % keys)))
            }
            MapOp::GetMut(k) => {
                let (a, b) = (ours.get_mut(&(k % keys)), model.get_mut(&(k % keys)));
                prop_assert_eq!(a.is_some(), b.is_some());
                if let (Some(a), Some(b)) = (a, b) {
                    a.len += n;
                    b.len += n;
                }
            }
            MapOp::Clear(a, len) => {
                let (a, e) = (a % keys, (a % keys) + len);
                prop_assert_eq!(
                    ours.take_range(a..e),
                    take(&mut model, (Bound::Included(a), Bound::Excluded(e)))
                );
            }
            MapOp::Take(lk, l, hk, h) => {
                let (lo, hi) = (bound(lk, l), bound(hk, h));
                if valid(lo, hi) {
                    prop_assert_eq!(ours.take_range((lo, hi)), take(&mut model, (lo, hi)));
                }
            }
        }
        // `is_large` also checks the chunks' invariants.
        prop_assert!(!ours.is_large() || ours.len() > super::SMALL);
        prop_assert!(ours.is_large() || ours.len() <= LARGE);
    }
    check_same(&ours, &model, probes);
    Ok(())
}

/// What `take_range` should return, taken out of the model.
fn take(model: &mut BTreeMap<u64, Piece>, r: (Bound<u64>, Bound<u64>)) -> Vec<(u64, Piece)> {
    let ks: Vec<u64> = model.range(r).map(|(k, _)| *k).collect();
    ks.into_iter()
        .map(|k| (k, model.remove(&k).unwrap()))
        .collect()
}

proptest! {
    /// Every operation the fold and the readers use gives what the `BTreeMap` gives, with few
    /// keys (the slice) and many (past [`LARGE`] and back).
    #[test]
    fn map_matches_a_btreemap(
        keys in prop_oneof![Just(12u64), Just(200u64), Just(1000u64)],
        ops in proptest::collection::vec(map_op(1000), 0..600),
        probes in proptest::collection::vec((any::<u8>(), 0u64..1100, any::<u8>(), 0u64..1100), 8),
    ) {
        run_map_ops(keys, &ops, &probes)?;
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(24))]
    /// The same with thousands of pieces, first read in order as a capture does, then changed
    /// anywhere: many chunks, split, emptied, merged and taken out whole.
    #[test]
    fn many_chunks_match_a_btreemap(
        first in 0usize..3000,
        ops in proptest::collection::vec(map_op(4000), 0..2000),
        probes in proptest::collection::vec((any::<u8>(), 0u64..4100, any::<u8>(), 0u64..4100), 16),
    ) {
        let ordered: Vec<MapOp> = (0..first as u64).map(MapOp::Insert).collect();
        run_map_ops(4000, &[ordered, ops].concat(), &probes)?;
    }
}

/// The fold's piece logic as it was on a `BTreeMap` (before [`PieceMap`]): the reference.
#[derive(Default)]
struct Model {
    size: u64,
    pieces: BTreeMap<u64, Piece>,
}

impl Model {
    fn punch(&mut self, start: u64, end: u64) {
        if start >= end {
            return;
        }
        if let Some((&ps, p)) = self.pieces.range(..start).next_back() {
            let pe = ps + p.len;
            if pe > start {
                let p = p.clone();
                self.pieces.get_mut(&ps).expect("piece").len = start - ps;
                if pe > end {
                    let right = Piece {
                        len: pe - end,
                        skip: p.skip + (end - ps),
                        payload: p.payload,
                    };
                    self.pieces.insert(end, right);
                    return;
                }
            }
        }
        let inside: Vec<u64> = self.pieces.range(start..end).map(|(k, _)| *k).collect();
        for k in inside {
            let p = self.pieces.remove(&k).expect("piece");
            let pe = k + p.len;
            if pe > end {
                let right = Piece {
                    len: pe - end,
                    skip: p.skip + (end - k),
                    payload: p.payload,
                };
                self.pieces.insert(end, right);
            }
        }
    }

    fn apply(&mut self, op: &FileOp, n: u64) {
        match *op {
            FileOp::SetSize(size) => {
                if size < self.size {
                    self.punch(size, u64::MAX);
                }
                self.size = size;
            }
            FileOp::Write(start, len) | FileOp::Zero(start, len) => {
                let end = (start + len).min(self.size);
                if start >= end {
                    return;
                }
                self.punch(start, end);
                if let FileOp::Write(..) = op {
                    let p = Piece {
                        len: end - start,
                        skip: 0,
                        payload: payload(n, len),
                    };
                    self.pieces.insert(start, p);
                }
            }
        }
    }
}

#[derive(Clone, Debug)]
enum FileOp {
    SetSize(u64),
    Write(u64, u64),
    Zero(u64, u64),
}

/// Writes of `unit`-sized blocks (often one, sometimes many) over a file of up to `blocks`
/// blocks, punches and truncations (one op in `cut_every`). Offsets are sometimes off the block,
/// to split pieces.
fn file_op(blocks: u64, unit: u64, cut_every: u32) -> impl Strategy<Value = FileOp> {
    let at = move || (0..blocks, 0..3u64).prop_map(move |(b, o)| b * unit + o * (unit / 3));
    prop_oneof![
        cut_every - 4 => (at(), prop_oneof![4 => Just(unit), 1 => 1..unit * 8])
            .prop_map(|(a, l)| FileOp::Write(a, l)),
        2 => (at(), 1..unit * 16).prop_map(|(a, l)| FileOp::Zero(a, l)),
        1 => at().prop_map(FileOp::SetSize),
        1 => Just(FileOp::SetSize(blocks * unit)),
    ]
}

proptest! {
    /// What the fold makes of one file's pieces, with the `BTreeMap` reference alongside:
    /// identical after every record, for files of a few pieces and of hundreds.
    #[test]
    fn fold_matches_the_btreemap_fold(
        (ops, blocks) in prop_oneof![
            (proptest::collection::vec(file_op(8, 4096, 16), 1..40), Just(8u64)),
            (proptest::collection::vec(file_op(400, 4096, 200), 1..700), Just(400u64)),
        ],
    ) {
        let mut st = TreeState::default();
        let put = NsOp::Put {
            path: b"f".to_vec(),
            entry: Entry::File { id: 1, mode: 0o644, uid: 0, gid: 0 },
        };
        let grow = NsOp::SetSize { id: 1, size: blocks * 4096 };
        st.apply(1, &[put, grow.clone()], &[]).unwrap();
        let mut model = Model::default();
        model.apply(&FileOp::SetSize(blocks * 4096), 0);
        for (i, op) in ops.iter().enumerate() {
            let h = i as u64 + 2;
            let (nsops, extents) = match *op {
                FileOp::SetSize(size) => (vec![NsOp::SetSize { id: 1, size }], vec![]),
                FileOp::Write(offset, len) => {
                    (vec![], vec![MetaExtent::Data { id: 1, offset, payload: payload(h, len) }])
                }
                FileOp::Zero(offset, len) => (vec![], vec![MetaExtent::Zero { id: 1, offset, len }]),
            };
            st.apply(h, &nsops, &extents).unwrap();
            model.apply(op, h);
            let f = st.file(1).unwrap();
            prop_assert_eq!(f.size, model.size);
            prop_assert!(f.pieces.iter().eq(model.pieces.iter()), "after {:?}", op);
        }
    }
}

/// A file grows past [`LARGE`] pieces and is truncated back to a few: both moves happen and
/// the pieces stay right.
#[test]
fn fold_crosses_both_ways() {
    let mut st = TreeState::default();
    let put = NsOp::Put {
        path: b"f".to_vec(),
        entry: Entry::File {
            id: 1,
            mode: 0o644,
            uid: 0,
            gid: 0,
        },
    };
    let n = 3 * LARGE as u64;
    st.apply(
        1,
        &[
            put,
            NsOp::SetSize {
                id: 1,
                size: n * 10,
            },
        ],
        &[],
    )
    .unwrap();
    // Every other 10-byte slot, from the end backwards: each insert lands before the rest.
    let extents: Vec<MetaExtent> = (0..n)
        .rev()
        .step_by(2)
        .map(|b| MetaExtent::Data {
            id: 1,
            offset: b * 10,
            payload: payload(b, 10),
        })
        .collect();
    st.apply(2, &[], &extents).unwrap();
    let f = st.file(1).unwrap();
    assert!(f.pieces.is_large());
    assert_eq!(f.pieces.len(), n as usize / 2);
    st.apply(3, &[NsOp::SetSize { id: 1, size: 55 }], &[])
        .unwrap();
    let f = st.file(1).unwrap();
    assert!(!f.pieces.is_large());
    let v: Vec<(u64, u64)> = f.pieces.iter().map(|(s, p)| (*s, p.len)).collect();
    assert_eq!(v, vec![(10, 10), (30, 10), (50, 5)]);
}
