use std::collections::BTreeMap;
use std::ops::Bound;

use proptest::prelude::*;

use super::*;

#[derive(Clone, Debug)]
enum Op {
    Insert(Vec<u8>, u32),
    Remove(Vec<u8>),
    Retain(u32),
    Settle,
    SettleNow,
}

/// Short paths from a small alphabet with '/' and a byte on each side of it, so that paths
/// under a directory, and beside it in byte order, collide often.
fn path() -> impl Strategy<Value = Vec<u8>> {
    prop::collection::vec(
        prop::sample::select(vec![b'a', b'b', b'/', b'.', b'0']),
        0..5,
    )
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        5 => (path(), any::<u32>()).prop_map(|(p, n)| Op::Insert(p, n)),
        3 => path().prop_map(Op::Remove),
        1 => (2u32..5).prop_map(Op::Retain),
        1 => Just(Op::Settle),
        1 => Just(Op::SettleNow),
    ]
}

fn bound(b: &Option<(bool, Vec<u8>)>) -> Bound<&[u8]> {
    match b {
        None => Bound::Unbounded,
        Some((true, p)) => Bound::Included(p),
        Some((false, p)) => Bound::Excluded(p),
    }
}

proptest! {
    /// Whatever the order of inserts, removals, retains and folds, the map answers exactly as
    /// a `BTreeMap` of the same operations: lookups, order, length, ranges, paths under a
    /// directory, and positions in the base.
    #[test]
    fn the_map_answers_as_a_btree_map(
        start in prop::collection::btree_map(path(), any::<u32>(), 0..20),
        ops in prop::collection::vec(op(), 0..60),
        auto in any::<bool>(),
        lo in prop::option::of((any::<bool>(), path())),
        hi in prop::option::of((any::<bool>(), path())),
    ) {
        let mut model: BTreeMap<Vec<u8>, u32> = start.clone();
        let mut m = PathMap::from_sorted(start, auto);
        for op in ops {
            match op {
                Op::Insert(p, n) => prop_assert_eq!(m.insert(p.clone(), n), model.insert(p, n)),
                Op::Remove(p) => prop_assert_eq!(m.remove(&p), model.remove(&p)),
                Op::Retain(k) => {
                    m.retain(|_, v| *v % k != 0);
                    model.retain(|_, v| *v % k != 0);
                }
                Op::Settle => {
                    m.settle();
                }
                Op::SettleNow => m.settle_now(),
            }
            prop_assert_eq!(m.len(), model.len());
            let got: Vec<(Vec<u8>, u32)> = m.iter().map(|(p, v)| (p.to_vec(), *v)).collect();
            let want: Vec<(Vec<u8>, u32)> = model.clone().into_iter().collect();
            prop_assert_eq!(got, want);
            for (p, v) in &model {
                prop_assert_eq!(m.get(p), Some(v));
                prop_assert_eq!(m.get_key_value(p), Some((p.as_slice(), v)));
            }
            // Strictly under the directory; under the root (""), every path.
            for dir in [&b""[..], b"a", b"b", b"a/b", b"."] {
                let mut lo = dir.to_vec();
                lo.push(b'/');
                let want: Vec<Vec<u8>> = (model.keys())
                    .filter(|k| dir.is_empty() || k.starts_with(&lo))
                    .cloned()
                    .collect();
                prop_assert_eq!(m.paths_under(dir), want);
            }
        }
        // Any range whose bounds are in order.
        let ordered = match (&lo, &hi) {
            (Some((_, a)), Some((_, b))) if a > b => false,
            (Some((false, a)), Some((false, b))) if a == b => false,
            _ => true,
        };
        if ordered {
            let (lo, hi) = (bound(&lo), bound(&hi));
            let got: Vec<Vec<u8>> = m.range(lo, hi).map(|(p, _)| p.to_vec()).collect();
            let want: Vec<Vec<u8>> =
                model.range::<[u8], _>((lo, hi)).map(|(p, _)| p.clone()).collect();
            prop_assert_eq!(got, want);
        }
        // Positions in the base lead to what the map holds there.
        for (at, v) in m.base_values() {
            let (p, w) = m.base_entry(at).expect("still there");
            prop_assert_eq!(v, w);
            prop_assert_eq!(model.get(p), Some(v));
            prop_assert_eq!(m.base_position(p), Some(at));
        }
        let mut values: Vec<u32> = m.values_mut().map(|v| *v).collect();
        values.sort_unstable();
        let mut want: Vec<u32> = model.values().copied().collect();
        want.sort_unstable();
        prop_assert_eq!(values, want);
    }
}

#[test]
fn changes_in_place_and_removals_do_not_grow_the_map() {
    let mut m = PathMap::from_sorted(vec![(b"a".to_vec(), 1), (b"b".to_vec(), 2)], false);
    assert_eq!(m.insert(b"a".to_vec(), 3), Some(1));
    assert_eq!(m.remove(b"b"), Some(2));
    assert_eq!(m.insert(b"b".to_vec(), 4), None);
    assert!(m.added.is_empty(), "base paths change in place");
    assert_eq!(m.insert(b"c".to_vec(), 5), None);
    assert!(
        m.added.is_empty(),
        "a path after all others is pushed to the base"
    );
    assert_eq!(m.insert(b"0".to_vec(), 6), None);
    assert_eq!(m.added.len(), 1);
    assert!(!m.settle(), "one change is below the threshold");
    m.settle_now();
    assert!(m.added.is_empty());
    assert_eq!(m.keys().collect::<Vec<_>>(), [&b"0"[..], b"a", b"b", b"c"]);
}

#[test]
fn an_automatic_map_folds_a_large_batch_of_new_paths_as_it_goes() {
    // Paths in order go straight to the base.
    let mut m = PathMap::default();
    for i in 0..100_000u32 {
        m.insert(format!("d/{i:07}").into_bytes(), i);
    }
    assert!(m.added.is_empty());
    // Paths out of order go to the map, folded as they come.
    let mut m = PathMap::default();
    for i in (0..200_000u32).rev() {
        m.insert(format!("d/{i:07}").into_bytes(), i);
    }
    assert!(
        m.added.len() <= AUTO_MIN,
        "{} paths left in the map",
        m.added.len()
    );
    assert_eq!(m.len(), 200_000);
    assert!(m.iter().map(|(_, v)| *v).eq(0..200_000));
    let mut manual = PathMap::manual();
    for i in (0..10_000u32).rev() {
        manual.insert(format!("d/{i:07}").into_bytes(), i);
    }
    assert_eq!(
        manual.added.len(),
        9_999,
        "a manual map folds only when told"
    );
}
