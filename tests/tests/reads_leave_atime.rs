//! Reading the node's files must not change them: the agent opens what it captures with
//! O_NOATIME. Under relatime (the default) a read of a file whose access time is older than
//! its modification time updates the access time, which dirties the inode (the freeze then
//! writes every such inode back). The same holds for a directory's listing. The test first
//! shows that a plain read and a plain listing do update them on this mount, then that a
//! baseline and an incremental height (which read the files and list the directories), and
//! `verify --volume` (which reads them all again), do not.
use std::os::unix::fs::MetadataExt;
use std::path::Path;

use btm_tests::{
    LoopFs, agent_bin, assert_replay_equals, can_run, snapshot_via, start_agent, workdir,
};

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
    for d in ["dir", "control-dir"] {
        std::fs::create_dir(vol.path(d)).unwrap();
        std::fs::write(vol.path(&format!("{d}/x")), b"x").unwrap();
    }
    for f in ["control", "a", "b", "dir", "control-dir"] {
        if !f.ends_with("dir") {
            std::fs::write(vol.path(f), rng.bytes(1 << 20)).unwrap();
        }
        age_atime(&vol.path(f));
    }
    // The condition: on this mount a plain read moves an access time older than the mtime,
    // and so does a plain listing of a directory.
    std::fs::read(vol.path("control")).unwrap();
    assert_ne!(
        atime(&vol.path("control")),
        1000,
        "relatime did not update it"
    );
    std::fs::read_dir(vol.path("control-dir")).unwrap().count();
    assert_ne!(
        atime(&vol.path("control-dir")),
        1000,
        "relatime did not update the directory's"
    );
    std::fs::remove_dir_all(vol.path("control-dir")).unwrap();

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
    for f in ["a", "b", "c", "dir"] {
        assert_eq!(
            atime(&vol.path(f)),
            1000,
            "{f}: the agent's read changed its atime"
        );
    }
    // And it did read them: height 2 replays to the volume.
    assert_replay_equals(&log, 2, &vol.mnt, work.path());

    // `verify --volume` reads every file and lists every directory again.
    std::fs::write(vol.path("dir/x"), b"y").unwrap();
    for f in ["a", "b", "c", "dir", "dir/x"] {
        age_atime(&vol.path(f));
    }
    let out = std::process::Command::new(agent_bin())
        .args(["verify", "--json", "--log"])
        .arg(&log)
        .arg("--volume")
        .arg(&vol.mnt)
        .output()
        .unwrap();
    // dir/x differs from height 2 (so verify did compare): one difference, the three files
    // read whole.
    // The report, then the error that says the volume differs.
    let v: serde_json::Value = serde_json::Deserializer::from_slice(&out.stdout)
        .into_iter()
        .next()
        .and_then(Result::ok)
        .unwrap_or_else(|| panic!("verify --json: {out:?}"));
    assert_eq!(v["differences"], 1, "{v}");
    assert_eq!(v["listed"][0][0], "dir/x", "{v}");
    assert!(v["bytes_compared"].as_u64().unwrap() >= 3 << 20, "{v}");
    for f in ["a", "b", "c", "dir"] {
        assert_eq!(atime(&vol.path(f)), 1000, "{f}: verify changed its atime");
    }

    // A rollback in place compares what is there and rewrites only dir/x.
    let out = std::process::Command::new(agent_bin())
        .args(["replay", "--json", "--to", "2", "--log"])
        .arg(&log)
        .arg("--into")
        .arg(&vol.mnt)
        .output()
        .unwrap();
    assert!(out.status.success(), "replay: {out:?}");
    assert_eq!(std::fs::read(vol.path("dir/x")).unwrap(), b"x");
    for f in ["a", "b", "c"] {
        assert_eq!(
            atime(&vol.path(f)),
            1000,
            "{f}: the rollback changed its atime"
        );
    }
}
