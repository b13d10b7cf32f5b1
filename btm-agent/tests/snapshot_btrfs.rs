//! Btrfs mode against a real, loop-mounted btrfs.
//!
//! Needs root, `mkfs.btrfs`, `btrfs`, `losetup`, `mount`; otherwise the tests print
//! `SKIP: <reason>`, or fail when `BTM_REQUIRE_KERNEL=1`. Every test makes its own filesystem
//! image in its own temporary directory and unmounts it and detaches the loop device when done,
//! even on failure.

#[path = "snapshot_support.rs"]
mod support;

use std::ffi::OsStr;
use std::path::{Path, PathBuf};

use btm_agent::snapshot::{self, Btrfs, Probe, SnapshotBackend, SnapshotError};
use support::*;

/// A 1 GiB sparse image with a fresh btrfs, loop-mounted; torn down on drop.
struct LoopBtrfs {
    /// Declared first: unmounted and detached before its directory goes.
    fs: btm_testkit::LoopFs,
    mnt: PathBuf,
    dir: tempfile::TempDir,
}

impl LoopBtrfs {
    fn create() -> Result<LoopBtrfs, String> {
        let dir = tempfile::Builder::new()
            .prefix("btm-btrfs-test-")
            .tempdir()
            .map_err(|e| e.to_string())?;
        let mnt = dir.path().join("mnt");
        let fs = btm_testkit::LoopFs::create(&dir.path().join("fs.img"), &mnt, "btrfs", 1 << 30)
            .map_err(|e| e.to_string())?;
        Ok(LoopBtrfs { fs, mnt, dir })
    }

    fn dev(&self) -> &str {
        &self.fs.dev
    }

    /// Mounts the device (again) at `at` with extra `mount` options.
    fn mount(&mut self, opts: &[&str], at: &Path) -> Result<(), String> {
        self.fs.mount_at(opts, at).map_err(|e| e.to_string())
    }

    fn subvolume(&self, name: &str) -> PathBuf {
        let p = self.mnt.join(name);
        sh(
            "btrfs",
            &[OsStr::new("subvolume"), OsStr::new("create"), p.as_os_str()],
        )
        .unwrap();
        p
    }
}

fn setup() -> Option<LoopBtrfs> {
    if let Some(reason) =
        missing_prerequisite(&["btrfs", "mkfs.btrfs", "losetup", "mount", "umount"])
    {
        skip(&reason);
        return None;
    }
    if !Path::new("/dev/loop-control").exists() {
        skip("no /dev/loop-control: loop devices are unavailable");
        return None;
    }
    match LoopBtrfs::create() {
        Ok(fs) => Some(fs),
        Err(e) => panic!("cannot set up a loop-mounted btrfs: {e}"),
    }
}

fn is_subvolume(p: &Path) -> bool {
    use std::os::unix::fs::MetadataExt;
    std::fs::symlink_metadata(p).is_ok_and(|m| m.is_dir() && m.ino() == 256)
}

#[test]
fn btrfs_snapshot_rollback_retention() {
    let Some(fs) = setup() else { return };
    let vol = fs.subvolume("vol");
    let b = snapshot::detect(&vol)
        .unwrap()
        .expect("a subvolume is detected");
    assert_eq!(b.name(), "btrfs");
    assert_eq!(
        b.describe(),
        format!("subvolume {}", vol.canonicalize().unwrap().display())
    );
    exercise_backend(b.as_ref(), &vol);

    // Layout: read-only snapshots beside the volume, no leftovers of the rollbacks.
    let snaps = fs.mnt.join(".btm-snapshots");
    let mut names: Vec<String> = std::fs::read_dir(&snaps)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    assert_eq!(names, vec!["vol@240"]);
    assert!(is_subvolume(&snaps.join("vol@240")));
    let w = std::fs::write(snaps.join("vol@240/new-file"), b"x").unwrap_err();
    assert_eq!(w.raw_os_error(), Some(libc::EROFS), "{w}");
    let mut top: Vec<String> = std::fs::read_dir(&fs.mnt)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    top.sort();
    assert_eq!(top, vec![".btm-snapshots", "vol"]);
    assert!(is_subvolume(&vol));
    // The live volume is writable again after the rollbacks.
    std::fs::write(vol.join("after"), b"ok").unwrap();
}

#[test]
fn btrfs_rollback_cleans_up_after_an_interrupted_rollback() {
    let Some(fs) = setup() else { return };
    // A name with a space: commands never go through a shell.
    let vol = fs.subvolume("my vol");
    let b = Btrfs::open(&vol).unwrap();
    mutate(&vol, 0);
    let t10 = read_tree(&vol);
    b.snapshot(10).unwrap();
    mutate(&vol, 1);
    b.snapshot(20).unwrap();
    assert_eq!(
        b.snapshot_path(20),
        fs.mnt
            .canonicalize()
            .unwrap()
            .join(".btm-snapshots/my vol@20")
    );

    // A crash after the swap leaves the old tree as "<vol>.btm-new"; after the first rename of
    // the two-step fallback, "<vol>.btm-old". Both are deleted when the next rollback starts.
    let leftover_new = fs.subvolume("my vol.btm-new");
    std::fs::write(leftover_new.join("junk"), b"junk").unwrap();
    let leftover_old = fs.subvolume("my vol.btm-old");
    b.rollback(10).unwrap();
    assert_eq!(read_tree(&vol), t10);
    assert_eq!(b.list().unwrap(), vec![10]);
    assert!(!leftover_new.exists() && !leftover_old.exists());

    // Something that is not ours in the way: refuse, and leave the volume alone.
    mutate(&vol, 7);
    let t_now = read_tree(&vol);
    b.snapshot(20).unwrap();
    std::fs::create_dir(&leftover_new).unwrap();
    let e = b.rollback(10).unwrap_err();
    assert!(
        e.to_string().contains("is not a subvolume btm left behind"),
        "{e}"
    );
    assert_eq!(read_tree(&vol), t_now);
    assert_eq!(b.list().unwrap(), vec![10, 20]);
    std::fs::remove_dir(&leftover_new).unwrap();
    b.rollback(10).unwrap();
    assert_eq!(read_tree(&vol), t10);
}

#[test]
fn btrfs_volumes_sharing_a_parent_keep_apart() {
    let Some(fs) = setup() else { return };
    let a = fs.subvolume("node");
    let c = fs.subvolume("node@x"); // its snapshots "node@x@H" must not look like node's
    let d = fs.subvolume("node2");
    let ba = snapshot::detect(&a).unwrap().unwrap();
    let bc = snapshot::detect(&c).unwrap().unwrap();
    let bd = snapshot::detect(&d).unwrap().unwrap();
    ba.snapshot(1).unwrap();
    bc.snapshot(2).unwrap();
    bd.snapshot(3).unwrap();
    // Entries that are not snapshots btm made are ignored.
    std::fs::write(fs.mnt.join(".btm-snapshots/node@4"), b"not a subvolume").unwrap();
    std::fs::create_dir(fs.mnt.join(".btm-snapshots/node@05")).unwrap();
    assert_eq!(ba.list().unwrap(), vec![1]);
    assert_eq!(bc.list().unwrap(), vec![2]);
    assert_eq!(bd.list().unwrap(), vec![3]);
    // A snapshot directory others could write to is refused (they could plant or swap a
    // snapshot a rollback would copy onto the volume), until it is the agent's own again.
    use std::os::unix::fs::PermissionsExt;
    let snapdir = fs.mnt.join(".btm-snapshots");
    std::fs::set_permissions(&snapdir, std::fs::Permissions::from_mode(0o777)).unwrap();
    let e = ba.preflight().unwrap_err().to_string();
    assert!(e.contains("is not the agent's own directory"), "{e}");
    assert!(ba.snapshot(9).is_err());
    std::fs::set_permissions(&snapdir, std::fs::Permissions::from_mode(0o700)).unwrap();
    ba.preflight().unwrap();
    // A stray file where the next snapshot goes is reported, not snapshotted into.
    let e = ba.snapshot(4).unwrap_err();
    assert!(e.to_string().contains("node@4 exists"), "{e}");
    ba.rollback(1).unwrap();
    ba.delete(&[1]).unwrap();
    assert_eq!(ba.list().unwrap(), Vec::<u64>::new());
    assert_eq!(bc.list().unwrap(), vec![2]);
    assert_eq!(bd.list().unwrap(), vec![3]);
}

#[test]
fn btrfs_detection_plain_dirs_and_mount_points() {
    let Some(mut fs) = setup() else { return };
    let vol = fs.subvolume("vol");
    std::fs::write(vol.join("f"), b"data").unwrap();

    // A plain directory on btrfs: no native snapshots, and the reason says how to convert.
    let plain = fs.mnt.join("plain");
    std::fs::create_dir(&plain).unwrap();
    match snapshot::probe(&plain).unwrap() {
        Probe::NotNative { reason } => {
            assert!(reason.contains("not a subvolume"), "{reason}");
            assert!(reason.contains("btrfs subvolume create"), "{reason}");
        }
        Probe::Found(b) => panic!("found {} for a plain directory", b.describe()),
    }
    assert!(snapshot::detect(&plain).unwrap().is_none());
    assert!(Btrfs::open(&plain).is_err());

    // The top level, mounted: a mount point.
    let e = snapshot::detect(&fs.mnt).unwrap_err();
    assert!(matches!(e, SnapshotError::MountPoint { .. }), "{e}");

    // The subvolume mounted on its own with subvol=: a mount point, with the way out.
    let alone = fs.dir.path().join("alone");
    std::fs::create_dir(&alone).unwrap();
    fs.mount(&["-o", "subvol=vol"], &alone).unwrap();
    assert_eq!(std::fs::read(alone.join("f")).unwrap(), b"data");
    let e = snapshot::detect(&alone).unwrap_err();
    let msg = e.to_string();
    assert!(matches!(e, SnapshotError::MountPoint { .. }), "{msg}");
    assert!(msg.contains("subvolid=5"), "{msg}");
    assert!(msg.contains("/vol"), "{msg}");
    assert!(msg.contains(fs.dev()), "{msg}");
    assert!(Btrfs::open(&alone).is_err());

    // The same subvolume through the top-level mount works, and its preflight passes.
    let b = snapshot::detect(&vol).unwrap().unwrap();
    b.preflight().unwrap();

    // A nested subvolume would escape every snapshot: preflight says so.
    let nested = vol.join("nested");
    sh(
        "btrfs",
        &[
            OsStr::new("subvolume"),
            OsStr::new("create"),
            nested.as_os_str(),
        ],
    )
    .unwrap();
    let e = b.preflight().unwrap_err();
    assert!(e.to_string().contains("vol/nested"), "{e}");
    assert!(e.to_string().contains("nested subvolumes"), "{e}");
}

// ---- Tests that need neither root nor a snapshotting filesystem. ----

#[test]
fn tree_and_noise_helpers() {
    let d = tempfile::tempdir().unwrap();
    mutate(d.path(), 0);
    let t0 = read_tree(d.path());
    assert_eq!(read_tree(d.path()), t0);
    mutate(d.path(), 1);
    let t1 = read_tree(d.path());
    assert_ne!(t0, t1);
    assert!(matches!(t1[Path::new("link")], Entry::Symlink { .. }));
    assert_eq!(noise(7, 64), noise(7, 64));
    assert_ne!(noise(7, 64), noise(8, 64));
}

#[test]
fn detect_plain_directory_is_not_native() {
    let d = tempfile::tempdir().unwrap();
    // A fresh temporary directory is neither a dataset mountpoint nor a subvolume (unless the
    // temporary directory's filesystem is itself zfs or btrfs; then this says nothing).
    match snapshot::probe(d.path()).unwrap() {
        Probe::NotNative { reason } => assert!(!reason.is_empty()),
        Probe::Found(b) => {
            println!("temp dir is on {}; nothing to check", b.describe());
            return;
        }
    }
    assert!(snapshot::detect(d.path()).unwrap().is_none());
    let e = snapshot::detect(&d.path().join("missing")).unwrap_err();
    assert!(e.to_string().contains("missing"), "{e}");
}
