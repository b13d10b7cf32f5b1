//! ZFS mode against a real pool: zfs-fuse (or OpenZFS) on a file-backed vdev.
//!
//! Needs root and `zfs`/`zpool` (plus `zfs-fuse` when no ZFS daemon/module answers: the tests
//! start the daemon themselves and leave it running). Otherwise they print `SKIP: <reason>`,
//! or fail when `BTM_REQUIRE_KERNEL=1`. Every test makes its own uniquely named pool in its own
//! scratch directory ([`btm_testkit::zfs::Pool`]) and destroys it when done, even on failure.

#[path = "snapshot_support.rs"]
mod support;

use std::path::Path;
use std::time::Duration;

use btm_agent::snapshot::{self, Probe, SnapshotBackend, Zfs};
use support::*;

/// A test pool, with a deadline: a zfs-fuse daemon that stops answering hangs file access on
/// the pool, which no per-command deadline reaches, so the test process ends after a few
/// minutes (detaching the pools first) instead of holding CI to its limit.
struct Pool {
    pool: btm_testkit::zfs::Pool,
    /// Last field: disarmed after the pool is destroyed, which can hang as well.
    _deadline: btm_testkit::Watchdog,
}

impl std::ops::Deref for Pool {
    type Target = btm_testkit::zfs::Pool;
    fn deref(&self) -> &Self::Target {
        &self.pool
    }
}

/// A fresh pool, or `None` after printing why the test is skipped.
fn setup() -> Option<Pool> {
    if let Some(reason) = missing_prerequisite(&["zfs", "zpool"]) {
        skip(&reason);
        return None;
    }
    let deadline = btm_testkit::watchdog_then(
        "snapshot_zfs",
        Duration::from_secs(240),
        btm_testkit::zfs::detach_all_test_pools,
    );
    if let Err(reason) = btm_testkit::zfs::ensure_daemon() {
        skip(&reason);
        return None;
    }
    match btm_testkit::zfs::Pool::create("btmt", &btm_testkit::scratch()) {
        Ok(pool) => Some(Pool {
            pool,
            _deadline: deadline,
        }),
        // With root, tools and a daemon in place, failing to make a pool is a real failure.
        Err(e) => panic!("cannot create a test pool: {e}"),
    }
}

#[test]
fn zfs_snapshot_rollback_retention() {
    let Some(pool) = setup() else { return };
    let b = snapshot::detect(&pool.mnt)
        .unwrap()
        .expect("a dataset mountpoint is detected");
    assert_eq!(b.name(), "zfs");
    assert_eq!(b.describe(), format!("dataset {}", pool.name));
    exercise_backend(b.as_ref(), &pool.mnt);
    // Snapshot names on the ZFS side are dataset@height.
    let names = sh(
        "zfs",
        &[
            "list", "-H", "-o", "name", "-t", "snapshot", "-d", "1", &pool.name,
        ],
    )
    .unwrap();
    assert_eq!(names.trim(), format!("{}@240", pool.name));
}

#[test]
fn zfs_detection_child_datasets_and_foreign_snapshots() {
    let Some(pool) = setup() else { return };
    let child = pool.create_dataset("child").unwrap();
    let child_mnt = pool.mnt.join("child");

    // A child dataset is found by its own mountpoint.
    let cb = snapshot::detect(&child_mnt).unwrap().unwrap();
    assert_eq!(cb.describe(), format!("dataset {child}"));
    let z = Zfs::open(&child_mnt).unwrap();
    assert_eq!(z.dataset(), child);
    assert_eq!(z.mountpoint(), child_mnt.canonicalize().unwrap());

    // A plain directory inside a dataset is not a volume of its own.
    let sub = pool.mnt.join("plain");
    std::fs::create_dir(&sub).unwrap();
    match snapshot::probe(&sub).unwrap() {
        Probe::NotNative { reason } => {
            assert!(reason.contains("not a dataset's mountpoint"), "{reason}");
            assert!(reason.contains(&pool.name), "{reason}");
        }
        Probe::Found(b) => panic!("found {} for a plain directory", b.describe()),
    }
    assert!(snapshot::detect(&sub).unwrap().is_none());
    let e = Zfs::open(&sub).unwrap_err();
    assert!(
        e.to_string().contains("no ZFS dataset is mounted at"),
        "{e}"
    );

    // The parent does not see the child's snapshots, nor snapshots it did not make.
    let parent = snapshot::detect(&pool.mnt).unwrap().unwrap();
    cb.snapshot(10).unwrap();
    sh("zfs", &["snapshot", &format!("{}@manual", pool.name)]).unwrap();
    sh("zfs", &["snapshot", &format!("{}@0100", pool.name)]).unwrap();
    assert_eq!(parent.list().unwrap(), Vec::<u64>::new());
    assert_eq!(cb.list().unwrap(), vec![10]);
    parent.snapshot(5).unwrap();
    parent.snapshot(6).unwrap();
    parent.delete(&[5, 6]).unwrap();
    assert_eq!(parent.list().unwrap(), Vec::<u64>::new());
    let left = sh("zfs", &["list", "-H", "-o", "name", "-t", "snapshot"]).unwrap();
    assert!(left.contains(&format!("{}@manual", pool.name)), "{left}");
    assert!(left.contains(&format!("{}@0100", pool.name)), "{left}");
    assert!(left.contains(&format!("{child}@10")), "{left}");

    // Deleting the child's snapshot through the child backend.
    cb.delete(&[10]).unwrap();
    assert!(cb.list().unwrap().is_empty());
}

#[test]
fn zfs_rollback_of_a_busy_tree_and_reopen() {
    let Some(pool) = setup() else { return };
    let b: Box<dyn SnapshotBackend> = snapshot::detect(&pool.mnt).unwrap().unwrap();
    mutate(&pool.mnt, 0);
    let t10 = read_tree(&pool.mnt);
    b.snapshot(10).unwrap();
    mutate(&pool.mnt, 1);
    // A file held open across the rollback (the node should be stopped; ZFS copes anyway).
    let held = std::fs::File::open(pool.mnt.join("a.txt")).unwrap();
    b.snapshot(20).unwrap();
    b.rollback(10).unwrap();
    drop(held);
    assert_eq!(read_tree(&pool.mnt), t10);
    // A second backend for the same volume sees the same state.
    let again = Zfs::open(Path::new(&pool.mnt)).unwrap();
    assert_eq!(again.list().unwrap(), vec![10]);
    again.snapshot(20).unwrap();
    assert_eq!(b.list().unwrap(), vec![10, 20]);
}
