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

/// A tree of up to 3 levels over names a, b, c: directories, files (ids 1-4, so some are
/// hard links of each other) and symlinks; every parent a directory.
fn tree() -> impl proptest::strategy::Strategy<Value = BTreeMap<RelPath, Entry>> {
    use proptest::prelude::*;
    let names = prop::collection::vec((0u8..3, 0u8..3, 0u8..3, 0u8..7), 0..24);
    names.prop_map(|picks| {
        let mut t: BTreeMap<RelPath, Entry> = BTreeMap::new();
        for (a, b, c, kind) in picks {
            let depth = 1 + (kind as usize % 3);
            let parts = [a, b, c];
            // The path of the first `d` names.
            let path_of = |d: usize| -> Vec<u8> {
                parts[..d]
                    .iter()
                    .map(|n| [b'a' + n])
                    .collect::<Vec<_>>()
                    .join(&b'/')
            };
            let path = path_of(depth);
            // Every ancestor must be a directory: skip a path under a file or symlink.
            let ancestors_ok = (1..depth)
                .all(|d| !matches!(t.get(&path_of(d)), Some(e) if !matches!(e, Entry::Dir { .. })));
            if !ancestors_ok || t.contains_key(&path) {
                continue;
            }
            for d in 1..depth {
                t.entry(path_of(d)).or_insert_with(dir);
            }
            let entry = match kind {
                0 => dir(),
                1..=4 => file(kind as u64),
                _ => Entry::Symlink {
                    target: vec![b'x'; kind as usize],
                    uid: 0,
                    gid: 0,
                },
            };
            t.insert(path, entry);
        }
        t
    })
}

fn state_of(t: &BTreeMap<RelPath, Entry>) -> crate::log::TreeState {
    let mut s = crate::log::TreeState::default();
    let ops: Vec<NsOp> = t
        .iter()
        .map(|(p, e)| NsOp::Put {
            path: p.clone(),
            entry: e.clone(),
        })
        .collect();
    s.apply(1, &ops, &[]).unwrap();
    s
}

proptest::proptest! {
    /// The ops between two trees, applied to the first, give the second (whatever order of
    /// removes and puts the one-pass merge emits them in).
    #[test]
    fn namespace_ops_turn_one_tree_into_the_other(prev in tree(), next in tree()) {
        let mut s = state_of(&prev);
        s.apply(2, &namespace_ops(&prev, &next), &[]).unwrap();
        let got: BTreeMap<RelPath, Entry> = s.entries().map(|(p, e)| (p.to_vec(), e)).collect();
        proptest::prop_assert_eq!(got, next);
    }
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

/// The files the tracker marked are re-read at the paths the inode index gives once the
/// events are in (a rename, a new file, a removal, another link), and the patched scan is
/// what a walk finds; numbers no path leads to are skipped or looked for over the scan.
#[test]
fn marked_files_are_found_by_inode_after_the_events() {
    use std::os::unix::fs::MetadataExt;
    let dir = tempfile::tempdir().unwrap();
    let p = |f: &str| dir.path().join(f);
    std::fs::create_dir(p("d")).unwrap();
    for f in ["a", "b", "r", "d/x"] {
        std::fs::write(p(f), f).unwrap();
    }
    std::fs::hard_link(p("b"), p("b2")).unwrap();
    let ino = |f: &str| std::fs::metadata(p(f)).unwrap().ino();
    let mut scan = Scan::walk(dir.path()).unwrap();
    let (a, b, r) = (ino("a"), ino("b"), ino("r"));
    // Written without an event naming them (the tracker's marks say so).
    std::fs::write(p("a"), "longer than before").unwrap();
    std::fs::write(p("b2"), "written through the other link").unwrap();
    // Named by events: a rename of a written file, a new file, a removed one.
    std::fs::write(p("d/x"), "x, longer").unwrap();
    let x = ino("d/x");
    std::fs::rename(p("d/x"), p("d/y")).unwrap();
    std::fs::write(p("n"), "new").unwrap();
    let n = ino("n");
    std::fs::remove_file(p("r")).unwrap();
    let named: BTreeSet<(RelPath, Vec<u8>)> = [("d", "x"), ("d", "y"), ("", "n"), ("", "r")]
        .iter()
        .map(|(d, f)| (d.as_bytes().to_vec(), f.as_bytes().to_vec()))
        .collect();
    let phantom = u64::MAX - 7;
    let unknown = u64::MAX - 8;
    let marked = [a, b, x, n, r, phantom, unknown];
    let (_, reread) = scan.patch_marked(&named, marked, |i| i == phantom).unwrap();
    let walked = Scan::walk(dir.path()).unwrap();
    assert!(
        scan.differences(&walked).is_empty(),
        "{:?}",
        scan.differences(&walked)
    );
    for f in ["a", "d/y", "n"] {
        assert!(
            reread.contains(&f.as_bytes().to_vec()),
            "{f} not re-read: {reread:?}"
        );
    }
    assert!(
        reread.iter().any(|f| f == b"b" || f == b"b2"),
        "no path of the written link re-read: {reread:?}"
    );
    // By inode number: a file of the walk's base (`a`), one moved since (`d/y`), one new
    // (`n`), one removed (`r`); the same once the changes are folded into the base.
    // A file re-read where the base has it takes no copy of its path; a new one does.
    assert!(!scan.by_ino.contains_key(&a) && scan.by_ino.contains_key(&n));
    for settled in [false, true] {
        if settled {
            scan.entries.settle_now();
            scan.index_base();
            assert!(scan.by_ino.is_empty());
        }
        for (f, i) in [("a", a), ("d/y", x), ("n", n)] {
            let found = scan.file_by_ino(i).map(|(_, p, _)| p.to_vec());
            assert_eq!(found.as_deref(), Some(f.as_bytes()), "settled: {settled}");
        }
        assert!(scan.file_by_ino(r).is_none());
        let b_at = scan.file_by_ino(b).map(|(_, p, _)| p.to_vec());
        assert!(matches!(b_at.as_deref(), Some(b"b" | b"b2")), "{b_at:?}");
    }
}

/// The scan's own copy of the volume's root is close-on-exec: a child the agent starts must
/// not inherit a descriptor of the volume (it would keep it from being unmounted).
#[test]
fn the_scan_holds_the_root_close_on_exec() {
    use std::os::fd::AsRawFd;
    let dir = tempfile::tempdir().unwrap();
    let scan = Scan::walk(dir.path()).unwrap();
    let root = scan.root.as_ref().expect("a walk keeps its root");
    // SAFETY: F_GETFD on a descriptor the scan owns.
    let flags = unsafe { libc::fcntl(root.as_raw_fd(), libc::F_GETFD) };
    assert!(flags >= 0 && flags & libc::FD_CLOEXEC != 0, "flags {flags}");
}
