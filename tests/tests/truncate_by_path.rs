//! A file grown by truncate(2) between heights. No probe can place it: the system call names
//! a path, and ext4 and btrfs dirty nothing when a file grows by a hole. Nor does an event
//! name it: writes and truncations are reported by fanotify only while a cut runs (a
//! notification on every write costs the node more than the tracker). The tracker counts the
//! call, and the next cut walks the tree, so the height records the new size. With
//! `BTM_WRITE_EVENTS=always` the event names the file instead and the cut does not walk.
//!
//! Its own test binary: a truncation by path anywhere on the host makes the next cut of every
//! agent walk, which would upset the tests that assert their cuts do not.
use std::{ffi::CString, fs, path::Path};

use btm_tests::{Cutting, FILESYSTEMS, assert_replay_equals, can_run, cutting};

fn truncate(path: &Path, len: i64) {
    let c = CString::new(path.as_os_str().as_encoded_bytes()).unwrap();
    // SAFETY: valid C string.
    assert_eq!(unsafe { libc::truncate(c.as_ptr(), len) }, 0);
}

fn run(fstype: &str) {
    let Cutting {
        mut cutter,
        vol,
        work,
        logdir,
    } = cutting(fstype, 512, "btm-truncpath-");
    for name in ["a", "b", "c"] {
        fs::write(vol.mnt.join(name), vec![name.as_bytes()[0]; 10_000]).unwrap();
    }
    let (r1, _) = cutter.cut(1).unwrap();
    assert!(r1.full && r1.unfrozen_walk);
    let (r2, _) = cutter.cut(2).unwrap();
    assert!(!r2.unfrozen_walk, "{fstype}: a quiet height walked");

    // Grown by path, to a size that is not a multiple of a block.
    let count = |c: &btm_agent::cut::Cutter| c.tracker().stats().unwrap().path_truncates;
    let before = count(&cutter);
    truncate(&vol.mnt.join("a"), (3 << 20) + 5);
    assert!(
        count(&cutter) > before,
        "{fstype}: the tracker did not count the truncation"
    );
    let (r3, _) = cutter.cut(3).unwrap();
    assert!(
        r3.unfrozen_walk,
        "{fstype}: a truncation by path did not make the cut walk"
    );
    assert_replay_equals(&logdir, 3, &vol.mnt, work.path());

    // Writes reported between heights too: the event names the file, no walk.
    cutter.write_events_always = true;
    let (r4, _) = cutter.cut(4).unwrap();
    assert!(!r4.unfrozen_walk, "{fstype}: height 4 walked");
    truncate(&vol.mnt.join("b"), 2 << 20);
    truncate(&vol.mnt.join("c"), 100);
    let (r5, _) = cutter.cut(5).unwrap();
    assert!(
        !r5.unfrozen_walk,
        "{fstype}: with write events always on, a truncation by path made the cut walk"
    );
    assert_replay_equals(&logdir, 5, &vol.mnt, work.path());
    drop(cutter); // its namespace watch holds the mount
}

#[test]
fn a_file_grown_by_truncate_on_a_path_is_recorded_at_its_new_size() {
    if !can_run("truncation by path") {
        return;
    }
    for fs in FILESYSTEMS {
        run(fs);
    }
}
