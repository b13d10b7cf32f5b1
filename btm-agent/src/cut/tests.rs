//! Unit tests of the cut: reads that must not block, namespace operations.
use super::{scan::identity, *};

/// A file swapped for a FIFO between the walk and the read must not block the cut.
#[test]
fn a_fifo_swapped_in_is_not_opened_blocking() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("f");
    std::fs::write(&p, b"data").unwrap();
    let ident = identity(&std::fs::metadata(&p).unwrap());
    let scan = Scan::walk(dir.path()).unwrap();
    std::fs::remove_file(&p).unwrap();
    nix::unistd::mkfifo(&p, nix::sys::stat::Mode::from_bits_truncate(0o644)).unwrap();
    let (root, scan2) = (dir.path().to_path_buf(), scan.clone());
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut st = CaptureStats::default();
        let mut sink = |_| Ok(());
        let r = read_identity(
            &root,
            &scan2,
            &b"f".to_vec(),
            &ident,
            1,
            &Want::Fresh,
            &mut st,
            &mut sink,
        );
        let _ = tx.send(r.map(|read| !read).map_err(|e| e.to_string()));
    });
    let got = rx.recv_timeout(Duration::from_secs(10));
    assert_eq!(got, Ok(Ok(true)), "the FIFO blocked the read or was read");
    // A symlink swapped in is not followed either.
    std::fs::remove_file(&p).unwrap();
    std::fs::write(dir.path().join("g"), b"data").unwrap();
    std::os::unix::fs::symlink("g", &p).unwrap();
    let mut st = CaptureStats::default();
    let r = read_identity(
        dir.path(),
        &scan,
        &b"f".to_vec(),
        &ident,
        1,
        &Want::Fresh,
        &mut st,
        &mut |_| Ok(()),
    )
    .unwrap();
    assert!(!r);
}

fn dir() -> Entry {
    Entry::Dir {
        mode: 0o755,
        uid: 0,
        gid: 0,
    }
}
fn file(id: u64) -> Entry {
    Entry::File {
        id,
        mode: 0o644,
        uid: 0,
        gid: 0,
    }
}

#[test]
fn ops_remove_topmost_then_put_in_order() {
    let prev: BTreeMap<RelPath, Entry> = [
        (b"a".to_vec(), dir()),
        (b"a/x".to_vec(), file(1)),
        (b"b".to_vec(), file(2)),
        (b"c".to_vec(), file(3)),
    ]
    .into();
    let next: BTreeMap<RelPath, Entry> = [
        (b"b".to_vec(), dir()),
        (b"b/y".to_vec(), file(2)),
        (b"c".to_vec(), file(3)),
        (b"d".to_vec(), file(1)),
    ]
    .into();
    let ops = namespace_ops(&prev, &next);
    assert_eq!(
        ops,
        vec![
            NsOp::Remove {
                path: b"a".to_vec()
            },
            NsOp::Remove {
                path: b"b".to_vec()
            },
            NsOp::Put {
                path: b"b".to_vec(),
                entry: dir()
            },
            NsOp::Put {
                path: b"b/y".to_vec(),
                entry: file(2)
            },
            NsOp::Put {
                path: b"d".to_vec(),
                entry: file(1)
            },
        ]
    );
}

/// The periodic check: paths where the kept namespace and the walk differ are counted as
/// missed unless an event since the patch names them or a directory above them.
#[test]
fn differences_not_named_by_events_are_missed() {
    let dir = tempfile::tempdir().unwrap();
    for f in ["a", "b", "c"] {
        std::fs::write(dir.path().join(f), f).unwrap();
    }
    std::fs::create_dir(dir.path().join("d")).unwrap();
    let kept = Scan::walk(dir.path()).unwrap();
    assert!(
        kept.differences(&Scan::walk(dir.path()).unwrap())
            .is_empty()
    );
    std::fs::write(dir.path().join("a"), "longer").unwrap(); // size
    std::fs::remove_file(dir.path().join("b")).unwrap(); // gone
    std::fs::write(dir.path().join("d/new"), "n").unwrap(); // new, under d
    let differ = kept.differences(&Scan::walk(dir.path()).unwrap());
    assert_eq!(differ.len(), 3, "{differ:?}");
    let named = |v: &[(&str, &str)]| {
        v.iter()
            .map(|(d, n)| (d.as_bytes().to_vec(), n.as_bytes().to_vec()))
            .collect()
    };
    assert_eq!(frozen::unexplained(&differ, &named(&[])), 3);
    assert_eq!(
        frozen::unexplained(&differ, &named(&[("", "a"), ("", "d")])),
        1
    );
    assert_eq!(
        frozen::unexplained(&differ, &named(&[("", "b"), ("d", "new"), ("", "a")])),
        0
    );
}

#[test]
fn ranges_to_reread_are_merged_so_no_byte_is_read_twice() {
    let Want::Ranges(r) = Want::ranges(vec![
        (1 << 20, 4096),
        // The marks of an append, then the tail it grew by: the same bytes.
        (8 << 20, 1 << 20),
        (0, 4096),
        (8 << 20, 1 << 20),
        (4096, 4096),
        (100, 0),
        (9 << 20, 10),
    ]) else {
        panic!("not ranges")
    };
    assert_eq!(
        r,
        vec![(0, 8192), (1 << 20, 4096), (8 << 20, (1 << 20) + 10)]
    );
}
