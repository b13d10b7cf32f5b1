//! ZFS mode against a real pool: zfs-fuse (or OpenZFS) on a file-backed vdev.
//!
//! Needs root and `zfs`/`zpool` (plus `zfs-fuse` when no ZFS daemon/module answers: the tests
//! start the daemon themselves and leave it running). Otherwise they print `SKIP: <reason>`,
//! or fail when `BTM_REQUIRE_KERNEL=1`. Every test makes its own uniquely named pool in its own
//! temporary directory and destroys it when done, even on failure.

#[path = "snapshot_support.rs"]
mod support;

use std::ffi::OsStr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use btm_agent::snapshot::{self, Probe, SnapshotBackend, Zfs};
use support::*;

/// Makes sure `zpool` can talk to ZFS, starting the zfs-fuse daemon if that is what is missing.
fn ensure_zfs() -> Result<(), String> {
    static LOCK: Mutex<()> = Mutex::new(());
    let _g = LOCK.lock().unwrap_or_else(|e| e.into_inner());
    let err = match sh("zpool", &["list", "-H"]) {
        Ok(_) => return Ok(()),
        Err(e) => e,
    };
    let no_daemon = err.contains("connect") || err.contains("daemon") || err.contains("initialize");
    if !no_daemon {
        return Err(format!("zpool does not work: {err}"));
    }
    if !have_tool("zfs-fuse") {
        return Err(format!(
            "ZFS is not reachable and zfs-fuse is not installed: {err}"
        ));
    }
    // It daemonizes; keep it off our stdout/stderr so nothing waits on them.
    let st = Command::new("zfs-fuse")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .map_err(|e| format!("cannot start zfs-fuse: {e}"))?;
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        match sh("zpool", &["list", "-H"]) {
            Ok(_) => return Ok(()),
            Err(e) if Instant::now() > deadline => {
                return Err(format!(
                    "started zfs-fuse ({st}) but zpool still fails: {e}"
                ));
            }
            Err(_) => std::thread::sleep(Duration::from_millis(200)),
        }
    }
}

/// A pool on a 512 MiB sparse file, destroyed on drop.
struct Pool {
    name: String,
    mnt: PathBuf,
    created: bool,
    _dir: tempfile::TempDir,
    /// Last field: disarmed after the pool is destroyed, which can hang as well.
    _deadline: btm_testkit::Watchdog,
}

impl Pool {
    fn create() -> Result<Pool, String> {
        let dir = tempfile::Builder::new()
            .prefix("btm-zfs-test-")
            .tempdir()
            .map_err(|e| e.to_string())?;
        let img = dir.path().join("pool.img");
        std::fs::File::create(&img)
            .and_then(|f| f.set_len(512 << 20))
            .map_err(|e| e.to_string())?;
        let mut pool = Pool {
            name: unique("btmt"),
            mnt: dir.path().join("mnt"),
            created: false,
            _dir: dir,
            // A zfs-fuse daemon that stops answering hangs file access on the pool, which no
            // per-command deadline reaches: fail the run in minutes, not at CI's limit.
            _deadline: btm_testkit::watchdog("snapshot_zfs", std::time::Duration::from_secs(600)),
        };
        sh(
            "zpool",
            &[
                OsStr::new("create"),
                OsStr::new("-m"),
                pool.mnt.as_os_str(),
                OsStr::new(&pool.name),
                img.as_os_str(),
            ],
        )?;
        pool.created = true;
        Ok(pool)
    }
}

impl Drop for Pool {
    fn drop(&mut self) {
        if !self.created {
            return;
        }
        if let Err(e) = sh("zpool", &["destroy", "-f", &self.name]) {
            eprintln!("cleanup: {e}; retrying after a forced unmount");
            let _ = sh("zfs", &["unmount", "-f", &self.name]);
            if let Err(e) = sh("zpool", &["destroy", "-f", &self.name]) {
                eprintln!("cleanup failed, pool {} is left behind: {e}", self.name);
            }
        }
    }
}

/// A fresh pool, or `None` after printing why the test is skipped.
fn setup() -> Option<Pool> {
    if let Some(reason) = missing_prerequisite(&["zfs", "zpool"]) {
        skip(&reason);
        return None;
    }
    if let Err(reason) = ensure_zfs() {
        skip(&reason);
        return None;
    }
    match Pool::create() {
        Ok(p) => Some(p),
        Err(e) => {
            // With root, tools and a daemon in place, failing to make a pool is a real failure.
            panic!("cannot create a test pool: {e}")
        }
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
    let child = format!("{}/child", pool.name);
    sh("zfs", &["create", &child]).unwrap();
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
