//! An unprivileged user must not be able to keep the agent from starting (or compacting) by
//! holding a lock on one of its lock files: no lock file may be opened by another user.
use std::{fs, os::unix::fs::PermissionsExt, path::Path, process::Command};

use btm_agent::volume::{LOCK_DIR, Mount};
use btm_tests::{LoopFs, agent_bin, can_run, start_agent, workdir};

/// `flock -s -n FILE true` as uid/gid 65534: true when that user got the lock.
fn squat(file: &Path) -> bool {
    Command::new("setpriv")
        .args([
            "--reuid=65534",
            "--regid=65534",
            "--clear-groups",
            "flock",
            "-s",
            "-n",
        ])
        .arg(file)
        .arg("true")
        .status()
        .unwrap()
        .success()
}

#[test]
fn other_users_cannot_hold_the_agents_locks() {
    if !can_run("lock squatting") {
        return;
    }
    let vol = LoopFs::new("ext4", 256).unwrap();
    let work = workdir("btm-squat-");
    // Everything on the way is reachable by the other user: only the files' modes protect.
    fs::set_permissions(work.path(), fs::Permissions::from_mode(0o755)).unwrap();
    let (log, sock) = (work.path().join("log"), work.path().join("agent.sock"));
    start_agent(&vol.mnt, &log, &sock, &[]).terminate();
    // A log left by an older version: a lock file anyone could open.
    fs::set_permissions(log.join("lock"), fs::Permissions::from_mode(0o644)).unwrap();
    start_agent(&vol.mnt, &log, &sock, &[]).terminate();
    // A reader (as root) makes readers.lock.
    let listed = Command::new(agent_bin())
        .args(["list", "--log"])
        .arg(&log)
        .status()
        .unwrap();
    assert!(listed.success());

    let m = Mount::at(&vol.mnt).unwrap();
    let vol_lock = Path::new(LOCK_DIR).join(format!("vol-{}-{}.lock", m.major, m.minor));
    assert!(
        vol_lock.exists(),
        "the volume lock is not named after the mount's device"
    );
    for f in [log.join("lock"), log.join("readers.lock"), vol_lock] {
        assert!(f.exists(), "{} missing", f.display());
        assert!(!squat(&f), "uid 65534 could lock {}", f.display());
    }
    // The check itself works: the same user can lock a file it may open.
    let open = work.path().join("open.lock");
    fs::write(&open, b"").unwrap();
    fs::set_permissions(&open, fs::Permissions::from_mode(0o644)).unwrap();
    assert!(squat(&open), "flock as uid 65534 does not work here");
}
