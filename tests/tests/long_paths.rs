//! Paths longer than PATH_MAX inside the volume: cuts walk and read them one name at a time,
//! and replay writes them back.
use std::{
    fs,
    io::{Read, Write},
    os::fd::OwnedFd,
    path::Path,
};

use btm_agent::log::{Log, ReplayOptions};
use btm_tests::{Cutting, can_run, cutting};
use nix::{
    fcntl::{OFlag, openat},
    sys::stat::{Mode, mkdirat},
};

/// 25 levels of 200-character names: 5,025 bytes, beyond PATH_MAX (4,096).
fn deep_dir(root: &Path, create: bool) -> OwnedFd {
    let mut dir = openat(
        nix::fcntl::AT_FDCWD,
        root,
        OFlag::O_DIRECTORY,
        Mode::empty(),
    )
    .unwrap();
    for i in 0..25 {
        let name = format!("{i:02}{}", "d".repeat(198));
        if create {
            mkdirat(&dir, name.as_str(), Mode::from_bits_truncate(0o755)).unwrap();
        }
        dir = openat(&dir, name.as_str(), OFlag::O_DIRECTORY, Mode::empty()).unwrap();
    }
    dir
}

fn write_deep(root: &Path, data: &[u8]) {
    let dir = deep_dir(root, false);
    let flags = OFlag::O_CREAT | OFlag::O_WRONLY | OFlag::O_TRUNC;
    let fd = openat(&dir, "state", flags, Mode::from_bits_truncate(0o644)).unwrap();
    fs::File::from(fd).write_all(data).unwrap();
}

fn read_deep(root: &Path) -> Vec<u8> {
    let dir = deep_dir(root, false);
    let fd = openat(&dir, "state", OFlag::O_RDONLY, Mode::empty()).unwrap();
    let mut v = Vec::new();
    fs::File::from(fd).read_to_end(&mut v).unwrap();
    v
}

#[test]
fn paths_beyond_path_max_are_cut_and_replayed() {
    if !can_run("long paths") {
        return;
    }
    let Cutting {
        mut cutter,
        vol,
        work,
        logdir,
    } = cutting("ext4", 256, "btm-long-");
    deep_dir(&vol.mnt, true);
    write_deep(&vol.mnt, b"first");
    cutter.cut(1).unwrap_or_else(|e| panic!("cut 1: {e:#}"));
    write_deep(&vol.mnt, b"second, longer");
    cutter.cut(2).unwrap_or_else(|e| panic!("cut 2: {e:#}"));
    drop(cutter);
    let log = Log::open_read(&logdir).unwrap();
    let opts = ReplayOptions {
        progress: false,
        ..Default::default()
    };
    for (h, want) in [(1, b"first".as_slice()), (2, b"second, longer".as_slice())] {
        let into = work.path().join(format!("fresh-{h}"));
        log.replay(h, &into, &opts)
            .unwrap_or_else(|e| panic!("replay {h}: {e:#}"));
        assert_eq!(read_deep(&into), want, "height {h}");
    }
}
