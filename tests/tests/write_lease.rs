//! A write lease (`F_SETLEASE`, as Samba or an NFS server takes) on a file of the volume the
//! node did not change: the next cut must not open that file, since an open starts breaking
//! the lease and waits up to `fs.lease-break-time` (45 s by default) for its holder. The
//! kernel's own record, /proc/locks, shows the lease still ACTIVE (never breaking) after the
//! cut, and the height replays exactly.
use std::os::fd::AsRawFd;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};

use btm_tests::{
    LoopFs, assert_replay_equals, can_run, log_heights, snapshot_via, start_agent, workdir,
};

/// The /proc/locks line of the lease on the file with this device and inode, if any.
fn lease_line(dev: u64, ino: u64) -> Option<String> {
    let id = format!(
        "{:02x}:{:02x}:{ino} ",
        libc::major(dev as libc::dev_t),
        libc::minor(dev as libc::dev_t)
    );
    std::fs::read_to_string("/proc/locks")
        .unwrap()
        .lines()
        .find(|l| l.contains("LEASE") && l.contains(&id))
        .map(str::to_string)
}

#[test]
fn a_lease_on_an_unchanged_file_is_never_broken_by_a_cut() {
    if !can_run("write lease") {
        return;
    }
    let vol = LoopFs::new("ext4", 256).unwrap();
    let work = workdir("btm-lease-");
    let (log, sock) = (work.path().join("log"), work.path().join("agent.sock"));
    std::fs::write(vol.path("leased"), vec![7u8; 1 << 20]).unwrap();
    std::fs::write(vol.path("other"), b"before").unwrap();
    let mut agent = start_agent(&vol.mnt, &log, &sock, &[]);
    snapshot_via(&sock, 1);

    // The lease: the holder ignores SIGIO, so a break would only show in /proc/locks.
    unsafe { libc::signal(libc::SIGIO, libc::SIG_IGN) };
    let leased = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(vol.path("leased"))
        .unwrap();
    let md = leased.metadata().unwrap();
    let rc = unsafe { libc::fcntl(leased.as_raw_fd(), libc::F_SETLEASE, libc::F_WRLCK) };
    assert_eq!(rc, 0, "F_SETLEASE: {}", std::io::Error::last_os_error());
    let line = lease_line(md.dev(), md.ino()).expect("the lease is in /proc/locks");
    assert!(line.contains("ACTIVE") && line.contains("WRITE"), "{line}");

    // The node changes another file; heights 2 and 3 are cut while the lease is held.
    for h in 2..=3u64 {
        std::fs::write(vol.path("other"), format!("height {h}")).unwrap();
        snapshot_via(&sock, h);
        let line = lease_line(md.dev(), md.ino()).expect("the lease is still there");
        assert!(
            line.contains("ACTIVE") && !line.contains("BREAK"),
            "the cut of height {h} started breaking the lease: {line}"
        );
        assert_eq!(
            unsafe { libc::fcntl(leased.as_raw_fd(), libc::F_GETLEASE) },
            libc::F_WRLCK,
            "the holder's lease is no longer a write lease after height {h}"
        );
    }
    // Control: an open of the leased file, as a cut that read it would do, shows at once.
    let e = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK)
        .open(vol.path("leased"))
        .expect_err("a non-blocking open of a leased file must wait for the break");
    assert_eq!(e.raw_os_error(), Some(libc::EWOULDBLOCK), "{e}");
    let line = lease_line(md.dev(), md.ino()).expect("the lease is still there");
    assert!(
        line.contains("BREAK"),
        "an open did not show as a break: {line}"
    );
    drop(leased);
    agent.terminate();
    assert_eq!(log_heights(&log), vec![1, 2, 3]);
    assert_replay_equals(&log, 3, &vol.mnt, work.path());
}
