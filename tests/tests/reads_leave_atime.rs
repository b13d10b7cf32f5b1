//! Reading the node's files must not change them: the agent opens what it captures with
//! O_NOATIME. Under relatime (the default) a read of a file whose access time is older than
//! its modification time updates the access time, which dirties the inode (the freeze then
//! writes every such inode back). The test first shows that a plain read does update it on
//! this mount, then that a baseline and an incremental height that read the files do not.
use std::os::unix::fs::MetadataExt;
use std::path::Path;

use btm_tests::{LoopFs, assert_replay_equals, can_run, snapshot_via, start_agent, workdir};

/// Sets the access time of `p` to 1,000 s after the epoch (older than its mtime).
fn age_atime(p: &Path) {
    let ts = [
        libc::timespec {
            tv_sec: 1000,
            tv_nsec: 0,
        },
        libc::timespec {
            tv_sec: 0,
            tv_nsec: libc::UTIME_OMIT,
        },
    ];
    let c = std::ffi::CString::new(p.as_os_str().as_encoded_bytes()).unwrap();
    // SAFETY: a NUL-terminated path and two timespecs.
    let rc = unsafe { libc::utimensat(libc::AT_FDCWD, c.as_ptr(), ts.as_ptr(), 0) };
    assert_eq!(rc, 0, "utimensat: {}", std::io::Error::last_os_error());
}

fn atime(p: &Path) -> i64 {
    std::fs::metadata(p).unwrap().atime()
}

#[test]
fn capturing_files_leaves_their_access_times() {
    if !can_run("reads leave atime") {
        return;
    }
    let vol = LoopFs::new("xfs", 512).unwrap();
    let work = workdir("btm-atime-");
    let (log, sock) = (work.path().join("log"), work.path().join("agent.sock"));
    let mut rng = btm_testkit::Rng(5);
    for f in ["control", "a", "b"] {
        std::fs::write(vol.path(f), rng.bytes(1 << 20)).unwrap();
        age_atime(&vol.path(f));
    }
    // The condition: on this mount a plain read moves an access time older than the mtime.
    std::fs::read(vol.path("control")).unwrap();
    assert_ne!(
        atime(&vol.path("control")),
        1000,
        "relatime did not update it"
    );

    let mut agent = start_agent(&vol.mnt, &log, &sock, &[]);
    snapshot_via(&sock, 1);
    // An incremental height that reads a new file and a changed one.
    std::fs::write(vol.path("c"), rng.bytes(1 << 20)).unwrap();
    age_atime(&vol.path("c"));
    let mut b = std::fs::read(vol.path("b")).unwrap();
    age_atime(&vol.path("b"));
    b[4096] ^= 1;
    std::fs::OpenOptions::new()
        .write(true)
        .open(vol.path("b"))
        .and_then(|f| std::os::unix::fs::FileExt::write_all_at(&f, &b[4096..4097], 4096))
        .unwrap();
    snapshot_via(&sock, 2);
    agent.terminate();
    for f in ["a", "b", "c"] {
        assert_eq!(
            atime(&vol.path(f)),
            1000,
            "{f}: the agent's read changed its atime"
        );
    }
    // And it did read them: height 2 replays to the volume.
    assert_replay_equals(&log, 2, &vol.mnt, work.path());
}
