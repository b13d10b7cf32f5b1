//! A filesystem mounted inside the tracked volume is not part of it: cuts skip it, and a
//! rollback (replay into the volume) must neither enter nor delete it, even where the height
//! has no directory of that name.
use std::{fs, path::Path, process::Command};

use btm_agent::log::{Log, ReplayOptions};
use btm_tests::{Cutting, can_run, cutting};

/// A tmpfs mounted at `at`, unmounted when dropped.
struct Tmpfs(std::path::PathBuf);

impl Tmpfs {
    fn mount(at: &Path) -> Tmpfs {
        fs::create_dir_all(at).unwrap();
        let ok = Command::new("mount")
            .args(["-t", "tmpfs", "-o", "size=8m", "tmpfs"])
            .arg(at)
            .status()
            .unwrap()
            .success();
        assert!(ok, "mount tmpfs at {}", at.display());
        Tmpfs(at.to_path_buf())
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.0).status();
    }
}

#[test]
fn rollback_leaves_filesystems_mounted_inside_the_volume_alone() {
    if !can_run("nested mounts") {
        return;
    }
    let Cutting {
        mut cutter,
        vol,
        logdir,
        work: _work,
    } = cutting("ext4", 256, "btm-nested-");
    fs::write(vol.path("chain.dat"), b"height one").unwrap();
    cutter.cut(1).unwrap();
    // Mounted after height 1: one at a new directory of the volume's root, one deeper, inside a
    // directory height 1 does not have either.
    let ext = Tmpfs::mount(&vol.path("ext"));
    fs::write(vol.path("ext/keep"), b"not the volume's").unwrap();
    let deep = Tmpfs::mount(&vol.path("later/deep"));
    fs::write(vol.path("later/deep/keep"), b"not the volume's either").unwrap();
    fs::write(vol.path("chain.dat"), b"height two, longer").unwrap();
    cutter.cut(2).unwrap();
    drop(cutter);
    let log = Log::open_append(&logdir).unwrap();
    let st2 = log.state_at(2).unwrap();
    assert!(
        st2.entries()
            .all(|(p, _)| !p.starts_with(b"ext") || p == b"ext"),
        "a cut recorded the inner filesystem's files"
    );

    let opts = ReplayOptions {
        progress: false,
        ..Default::default()
    };
    // `later/` is not in height 1: removing it would descend into the mount under it.
    let err = log.replay(1, &vol.mnt, &opts).unwrap_err().to_string();
    assert!(err.contains("another filesystem is mounted here"), "{err}");
    assert_eq!(fs::read(vol.path("ext/keep")).unwrap(), b"not the volume's");
    assert_eq!(
        fs::read(vol.path("later/deep/keep")).unwrap(),
        b"not the volume's either"
    );
    // Once the deep one is unmounted, the rollback goes through and keeps `ext` as it is.
    drop(deep);
    log.replay(1, &vol.mnt, &opts).unwrap();
    assert_eq!(fs::read(vol.path("chain.dat")).unwrap(), b"height one");
    assert!(!vol.path("later").exists());
    assert_eq!(fs::read(vol.path("ext/keep")).unwrap(), b"not the volume's");
    drop(ext);
}
