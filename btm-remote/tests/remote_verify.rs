//! `verify --remote` without the source log, through `file://`: an intact copy in each layout
//! (packs, keyed packs, loose objects) verifies clean, reading every payload with a 100 %
//! subset and exactly one third of the packs with each of 1/3, 2/3, 3/3; a missing pack, a
//! changed byte inside a pack (found only when its data is read), a missing record and a
//! broken loose object are each reported, and the copy is not changed by looking.

use btm_remote::{Remote, Subset, push, verify};

mod support;
use support::*;

fn pushed(layout: &str) -> (tempfile::TempDir, std::path::PathBuf, Remote) {
    let tmp = tempfile::tempdir().unwrap();
    let log = log_with(&tmp.path().join("log"), 1..=4);
    let store = tmp.path().join("store");
    let (key, legacy) = match layout {
        "packs" => (None, false),
        "keyed" => (Some(KEY), false),
        _ => (None, true),
    };
    let remote = open(&store, key, legacy);
    push(&log, &remote, &opts("v")).unwrap();
    (tmp, store, remote)
}

fn packs_of(store: &std::path::Path) -> Vec<std::path::PathBuf> {
    walk(store)
        .into_iter()
        .filter(|p| p.to_string_lossy().contains("/packs/"))
        .collect()
}

#[test]
fn an_intact_copy_verifies_clean_in_every_layout() {
    for layout in ["packs", "keyed", "loose"] {
        let (_tmp, store, remote) = pushed(layout);
        let before = walk(&store);
        let r = verify(&remote, None, None).unwrap();
        assert!(r.problems.is_empty(), "{layout}: {:?}", r.problems);
        assert_eq!(
            (r.volumes, r.heights, r.records),
            (1, 4, 4),
            "{layout}: {r:?}"
        );
        // Height 1 stores 3 x 64 blocks, each later height CHANGED more.
        assert_eq!(r.payloads as u64, 3 * 64 + 3 * CHANGED, "{layout}: {r:?}");
        assert_eq!(
            r.objects_read, 0,
            "no data subset: nothing downloaded whole"
        );
        if layout == "loose" {
            assert_eq!((r.packs, r.loose_objects), (0, r.payloads), "{r:?}");
        } else {
            assert_eq!(
                (r.packs, r.loose_objects),
                (packs_of(&store).len(), 0),
                "{r:?}"
            );
        }
        let all = verify(&remote, Some("v"), Some(Subset::parse("100%").unwrap())).unwrap();
        assert!(all.problems.is_empty(), "{layout}: {:?}", all.problems);
        assert_eq!(
            all.payloads_read, all.payloads,
            "{layout}: every payload read"
        );
        assert_eq!(walk(&store), before, "{layout}: verify changed the store");
    }
}

#[test]
fn thirds_read_each_pack_once() {
    let (_tmp, _store, remote) = pushed("packs");
    let reads: Vec<usize> = ["1/3", "2/3", "3/3"]
        .iter()
        .map(|s| {
            let r = verify(&remote, None, Some(Subset::parse(s).unwrap())).unwrap();
            assert!(r.problems.is_empty(), "{:?}", r.problems);
            r.objects_read
        })
        .collect();
    let r = verify(&remote, None, None).unwrap();
    assert_eq!(reads.iter().sum::<usize>(), r.packs, "{reads:?}");
}

#[test]
fn damage_is_reported() {
    // A changed byte inside a pack: its presence passes, reading its data does not.
    let (_tmp, store, remote) = pushed("packs");
    let pack = packs_of(&store).pop().unwrap();
    let mut b = std::fs::read(&pack).unwrap();
    let mid = b.len() / 2;
    b[mid] ^= 0x40;
    std::fs::write(&pack, b).unwrap();
    assert!(verify(&remote, None, None).unwrap().problems.is_empty());
    let r = verify(&remote, None, Some(Subset::parse("100%").unwrap())).unwrap();
    assert_eq!(r.problems.len(), 1, "{:?}", r.problems);
    assert!(
        r.problems[0].contains("does not hold payload"),
        "{:?}",
        r.problems
    );

    // A missing pack is found without reading data.
    std::fs::remove_file(&pack).unwrap();
    let r = verify(&remote, None, None).unwrap();
    assert!(
        r.problems.iter().any(|p| p.contains("is missing")),
        "{:?}",
        r.problems
    );

    // A missing record breaks the chain of every height after it.
    let (_tmp, store, remote) = pushed("keyed");
    let rec = walk(&store)
        .into_iter()
        .find(|p| p.to_string_lossy().contains("/records/"))
        .unwrap();
    std::fs::remove_file(&rec).unwrap();
    let r = verify(&remote, None, None).unwrap();
    assert!(
        r.problems.iter().any(|p| p.contains("record object")),
        "{:?}",
        r.problems
    );

    // A loose payload object replaced by another one's bytes.
    let (_tmp, store, remote) = pushed("loose");
    let objs: Vec<_> = walk(&store)
        .into_iter()
        .filter(|p| p.to_string_lossy().contains("/objects/"))
        .collect();
    std::fs::copy(&objs[0], &objs[1]).unwrap();
    let r = verify(&remote, None, Some(Subset::parse("100%").unwrap())).unwrap();
    assert_eq!(r.problems.len(), 1, "{:?}", r.problems);
}
