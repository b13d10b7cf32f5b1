//! Shared helpers of the native snapshot tests: `snapshot_zfs.rs` and `snapshot_btrfs.rs`
//! include this file with `#[path = "snapshot_support.rs"] mod support;`. Cargo also builds it
//! as a test target of its own, which has no tests.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::fs;
use std::io::{Seek, SeekFrom, Write};
use std::os::unix::fs::{MetadataExt, PermissionsExt, symlink};
use std::path::{Path, PathBuf};

use btm_agent::retention::{Algo, Policy};
use btm_agent::snapshot::{SnapshotBackend, SnapshotError};

pub use btm_testkit::{have_tool, is_root};

/// Skips the calling test with `reason`, or fails it when skipping is forbidden (btm-testkit's
/// one rule).
pub fn skip(reason: &str) {
    btm_testkit::skip("snapshot test", reason);
}

/// Checks root and tools; `Some(reason)` when the test must be skipped.
pub fn missing_prerequisite(tools: &[&str]) -> Option<String> {
    if !is_root() {
        return Some("needs root (loop devices, mounts, zfs/btrfs administration)".into());
    }
    tools
        .iter()
        .find(|t| !have_tool(t))
        .map(|t| format!("`{t}` is not installed"))
}

/// Runs a setup command with a deadline (a hung zfs-fuse must fail the test, not stall the
/// whole run); `Err` carries the command line and its output.
pub use btm_testkit::zfs::zsh as sh;

/// One entry of a directory tree, with file contents hashed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Entry {
    Dir { mode: u32 },
    File { mode: u32, len: u64, blake3: String },
    Symlink { target: PathBuf },
}

/// A whole directory tree by relative path: what "the state at height H" means in these tests.
pub type Tree = BTreeMap<PathBuf, Entry>;

pub fn read_tree(root: &Path) -> Tree {
    fn walk(root: &Path, dir: &Path, out: &mut Tree) {
        let mut entries: Vec<_> = fs::read_dir(dir)
            .unwrap_or_else(|e| panic!("read_dir {}: {e}", dir.display()))
            .map(|e| e.unwrap().path())
            .collect();
        entries.sort();
        for p in entries {
            let md = fs::symlink_metadata(&p).unwrap();
            let rel = p.strip_prefix(root).unwrap().to_path_buf();
            let mode = md.mode() & 0o7777;
            if md.file_type().is_symlink() {
                out.insert(
                    rel,
                    Entry::Symlink {
                        target: fs::read_link(&p).unwrap(),
                    },
                );
            } else if md.is_dir() {
                out.insert(rel, Entry::Dir { mode });
                walk(root, &p, out);
            } else {
                let data = fs::read(&p).unwrap();
                out.insert(
                    rel,
                    Entry::File {
                        mode,
                        len: md.len(),
                        blake3: blake3::hash(&data).to_hex().to_string(),
                    },
                );
            }
        }
    }
    let mut t = Tree::new();
    walk(root, root, &mut t);
    t
}

/// Deterministic pseudo-random bytes (xorshift64*).
pub fn noise(seed: u64, len: usize) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..len)
        .map(|_| {
            x ^= x >> 12;
            x ^= x << 25;
            x ^= x >> 27;
            (x.wrapping_mul(0x2545_F491_4F6C_DD1D) >> 56) as u8
        })
        .collect()
}

fn pwrite(path: &Path, off: u64, data: &[u8]) {
    let mut f = fs::OpenOptions::new().write(true).open(path).unwrap();
    f.seek(SeekFrom::Start(off)).unwrap();
    f.write_all(data).unwrap();
    f.sync_all().unwrap();
}

/// Changes the tree under `vol` in a way that depends on `step` (0 builds the first state).
pub fn mutate(vol: &Path, step: u64) {
    let p = |s: &str| vol.join(s);
    match step {
        0 => {
            fs::write(p("a.txt"), b"hello 0\n").unwrap();
            fs::create_dir_all(p("dir/sub")).unwrap();
            fs::write(p("dir/b.bin"), noise(1, 300 * 1024)).unwrap();
            fs::write(p("dir/sub/deep.txt"), b"deep\n").unwrap();
            fs::write(p("empty"), b"").unwrap();
            symlink("a.txt", p("link")).unwrap();
            let f = fs::File::create(p("sparse")).unwrap();
            f.set_len(2 << 20).unwrap();
            drop(f);
            pwrite(&p("sparse"), 1 << 20, &noise(2, 4096));
        }
        1 => {
            fs::write(p("a.txt"), b"hello 1\n").unwrap(); // same size, new bytes
            pwrite(&p("dir/b.bin"), 100 * 1024, &noise(3, 4096));
            fs::remove_file(p("empty")).unwrap();
            fs::write(p("new1.txt"), b"new in step 1\n").unwrap();
            fs::set_permissions(p("dir/sub/deep.txt"), fs::Permissions::from_mode(0o600)).unwrap();
        }
        2 => {
            fs::rename(p("new1.txt"), p("dir/renamed.txt")).unwrap();
            fs::OpenOptions::new()
                .write(true)
                .open(p("dir/b.bin"))
                .unwrap()
                .set_len(50 * 1024)
                .unwrap();
            fs::OpenOptions::new()
                .append(true)
                .open(p("a.txt"))
                .unwrap()
                .write_all(b"appended in step 2\n")
                .unwrap();
            fs::remove_file(p("link")).unwrap();
            symlink("dir/renamed.txt", p("link")).unwrap();
            fs::create_dir(p("later")).unwrap();
            fs::write(p("later/x"), noise(4, 10_000)).unwrap();
        }
        k => {
            fs::write(p(&format!("gen{k}.txt")), format!("generation {k}\n")).unwrap();
            pwrite(&p("a.txt"), 0, format!("hello {}\n", k % 10).as_bytes());
            pwrite(&p("sparse"), k * 4096, &noise(k, 100));
        }
    }
}

fn expect_err(r: Result<(), SnapshotError>, what: &str) -> SnapshotError {
    match r {
        Ok(()) => panic!("{what}: expected an error"),
        Err(e) => e,
    }
}

/// The scenario every backend must pass, on an empty volume `vol` managed by `b`.
pub fn exercise_backend(b: &dyn SnapshotBackend, vol: &Path) {
    assert_eq!(b.list().unwrap(), Vec::<u64>::new());
    b.preflight().unwrap();

    let mut trees: BTreeMap<u64, Tree> = BTreeMap::new();
    for (step, h) in [10u64, 20, 30].into_iter().enumerate() {
        mutate(vol, step as u64);
        trees.insert(h, read_tree(vol));
        b.snapshot(h).unwrap();
    }
    assert_eq!(b.list().unwrap(), vec![10, 20, 30]);
    assert_ne!(trees[&10], trees[&20]);
    assert_ne!(trees[&20], trees[&30]);

    // Refusals, with messages that say what exists and what to do.
    let e = expect_err(b.snapshot(30), "snapshot 30 twice");
    assert!(
        matches!(e, SnapshotError::AlreadyExists { height: 30, .. }),
        "{e}"
    );
    assert!(e.to_string().contains("roll back"), "{e}");
    let e = expect_err(b.snapshot(25), "snapshot below the latest");
    assert!(
        matches!(
            e,
            SnapshotError::NotAbove {
                height: 25,
                latest: 30,
                ..
            }
        ),
        "{e}"
    );
    let e = expect_err(b.rollback(25), "rollback to a missing height");
    assert_eq!(
        e.to_string(),
        format!(
            "{} has no snapshot at height 25; available: 10, 20, 30",
            b.describe()
        )
    );
    let e = expect_err(b.delete(&[20, 21]), "delete with a missing height");
    assert!(e.to_string().contains("height 21"), "{e}");
    assert_eq!(
        b.list().unwrap(),
        vec![10, 20, 30],
        "nothing deleted on error"
    );

    // Changes after the last snapshot, as a node would make, then roll back to 20.
    mutate(vol, 99);
    b.rollback(20).unwrap();
    assert_eq!(read_tree(vol), trees[&20], "tree after rollback to 20");
    assert_eq!(
        b.list().unwrap(),
        vec![10, 20],
        "snapshots newer than 20 removed"
    );

    // The chain re-reaches 30 and goes on.
    for (step, h) in [(3u64, 30u64), (4, 40), (5, 50)] {
        mutate(vol, step);
        trees.insert(h, read_tree(vol));
        b.snapshot(h).unwrap();
    }
    assert_eq!(b.list().unwrap(), vec![10, 20, 30, 40, 50]);
    b.rollback(30).unwrap();
    assert_eq!(
        read_tree(vol),
        trees[&30],
        "tree after rollback to re-taken 30"
    );
    assert_eq!(b.list().unwrap(), vec![10, 20, 30]);
    // Rolling back to the latest discards uncommitted changes only.
    mutate(vol, 98);
    b.rollback(30).unwrap();
    assert_eq!(read_tree(vol), trees[&30]);
    assert_eq!(b.list().unwrap(), vec![10, 20, 30]);

    // Retention: fair keeps the newest two.
    let fair = Policy::new(10, 2, Algo::Fair).unwrap();
    let del = fair.to_delete(&b.list().unwrap());
    assert_eq!(del, vec![10]);
    b.delete(&del).unwrap();
    assert_eq!(b.list().unwrap(), vec![20, 30]);
    b.delete(&[]).unwrap();

    // Many heights, thinned by fade in one batched delete.
    for h in (40..=300).step_by(10) {
        mutate(vol, h);
        trees.insert(h, read_tree(vol));
        b.snapshot(h).unwrap();
    }
    // itv 2, cap 20: chunks of two positions needing multiples of 2, 4, 8, 16, ...
    let fade = Policy::new(2, 20, Algo::Fade).unwrap();
    let all = b.list().unwrap();
    assert_eq!(all.len(), 29); // 20, 30, 40..=300
    let del = fade.to_delete(&all);
    assert_eq!(fade.to_keep(&all), vec![240, 280, 290, 300]);
    b.delete(&del).unwrap();
    assert_eq!(b.list().unwrap(), vec![240, 280, 290, 300]);

    // A retained old height still rolls back correctly.
    b.rollback(240).unwrap();
    assert_eq!(b.list().unwrap(), vec![240]);
    assert_eq!(read_tree(vol), trees[&240], "tree after rollback to 240");
}
