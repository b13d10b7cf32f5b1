//! Push and restore through a `file://` store, without root: every height of a small log
//! restores exactly as the local replay does, a resumed push uploads only what is missing, and
//! damage on the remote is found, named and repaired, in layout 1 (loose payload objects).

use std::path::Path;

use btm_log::testing::noise;
use btm_log::{CutRecord, Log, NsOp, ReplayOptions};
use btm_remote::{PushOptions, Remote, RemoteError, list_heights, push, replay};

fn no_sync() -> ReplayOptions {
    ReplayOptions {
        progress: false,
        sync: false,
        ..Default::default()
    }
}

/// Height h writes file `f<h % 3 + 1>` (new content) and, at height 4, removes `f1`.
fn record(h: u64) -> CutRecord {
    let mut r = btm_log::testing::record(h, h % 3 + 1, noise(h, 300_000 + h as usize * 1000));
    if h == 4 {
        r.ops.push(NsOp::Remove {
            path: b"f1".to_vec(),
        });
    }
    r
}

fn tree(dir: &Path) -> String {
    btm_testkit::tree_digest(dir)
}

fn opts(name: &str) -> PushOptions {
    PushOptions {
        name: name.into(),
        ..Default::default()
    }
}

#[test]
fn file_remote_roundtrip_resume_and_damage() {
    let tmp = tempfile::tempdir().unwrap();
    let logdir = tmp.path().join("log");
    let mut log = Log::open_append(&logdir).unwrap();
    for h in 1..=3 {
        log.append(record(h)).unwrap();
    }
    drop(log);
    let store = tmp.path().join("store");
    // Layout 1 (one object per payload), as btm wrote before packs: tests/packs.rs covers
    // layout 3, and this test keeps proving the old layout is still written and read.
    let remote = Remote::open(&format!("file://{}", store.display()))
        .unwrap()
        .with_legacy_layout(true);
    let first = push(&Log::open_read(&logdir).unwrap(), &remote, &opts("v")).unwrap();
    assert_eq!((first.records_uploaded, first.pointers_written), (3, 3));

    // Two more heights: only they go up.
    let mut log = Log::open_append(&logdir).unwrap();
    for h in 4..=5 {
        log.append(record(h)).unwrap();
    }
    drop(log);
    let log = Log::open_read(&logdir).unwrap();
    let rep = push(&log, &remote, &opts("v")).unwrap();
    assert_eq!(
        (rep.records_present, rep.records_uploaded),
        (3, 2),
        "{rep:?}"
    );
    assert_eq!(rep.objects_uploaded, 2, "{rep:?}");

    // Every height restores as the local replay does, into empty and stale directories.
    let stale = tmp.path().join("stale");
    for h in 1..=5u64 {
        let local = tmp.path().join(format!("local{h}"));
        log.replay(h, &local, &no_sync()).unwrap();
        let fresh = tmp.path().join(format!("remote{h}"));
        let r = replay(&remote, "v", Some(h), true, &fresh, &no_sync()).unwrap();
        assert_eq!(r.records, h as usize);
        assert_eq!(tree(&fresh), tree(&local), "height {h}");
        replay(&remote, "v", Some(h), true, &stale, &no_sync()).unwrap();
        assert_eq!(tree(&stale), tree(&local), "height {h} into a stale tree");
    }
    let hs: Vec<u64> = list_heights(&remote, "v", None)
        .unwrap()
        .iter()
        .map(|h| h.height)
        .collect();
    assert_eq!(hs, vec![1, 2, 3, 4, 5]);
    // A pointer far larger than btm writes is refused before its body is read.
    let big = store
        .join("volumes/v/heights/00000000000000000099-".to_string() + &"ab".repeat(32) + ".json");
    std::fs::write(&big, vec![b' '; 2 << 20]).unwrap();
    let e = list_heights(&remote, "v", None).unwrap_err();
    assert!(
        matches!(&e, RemoteError::Damaged(m) if m.contains("more than btm ever writes")),
        "{e:?}"
    );
    std::fs::remove_file(&big).unwrap();
    // Errors are typed by what the caller can do: nothing to restore, or a height not kept.
    let e = replay(
        &remote,
        "nope",
        None,
        true,
        &tmp.path().join("n"),
        &no_sync(),
    )
    .unwrap_err();
    assert!(matches!(e, RemoteError::NotFound(_)), "{e:?}");
    let e = replay(
        &remote,
        "v",
        Some(9),
        true,
        &tmp.path().join("n"),
        &no_sync(),
    )
    .unwrap_err();
    assert!(matches!(e, RemoteError::Log(_)), "{e:?}");

    // Damage a payload object: the restore names it, push --verify repairs it.
    let obj = walk(&store.join("objects")).into_iter().next().unwrap();
    let mut b = std::fs::read(&obj).unwrap();
    let mid = b.len() / 2;
    b[mid] ^= 1;
    std::fs::write(&obj, b).unwrap();
    let name = obj.file_name().unwrap().to_string_lossy().into_owned();
    let mut failed = None;
    for h in 1..=5 {
        if let Err(e) = replay(
            &remote,
            "v",
            Some(h),
            true,
            &tmp.path().join(format!("d{h}")),
            &no_sync(),
        ) {
            failed = Some(format!("{e:#}"));
        }
    }
    let e = failed.expect("no restore read the damaged object");
    assert!(e.contains("damaged") && e.contains(&name), "{e}");
    let rep = push(
        &log,
        &remote,
        &PushOptions {
            verify: true,
            ..opts("v")
        },
    )
    .unwrap();
    assert_eq!(rep.repaired, 1, "{rep:?}");
    for h in 1..=5 {
        replay(
            &remote,
            "v",
            Some(h),
            true,
            &tmp.path().join(format!("e{h}")),
            &no_sync(),
        )
        .unwrap();
    }
}

fn walk(dir: &Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).unwrap().flatten() {
        if e.file_type().unwrap().is_dir() {
            out.extend(walk(&e.path()));
        } else {
            out.push(e.path());
        }
    }
    out.sort();
    out
}
