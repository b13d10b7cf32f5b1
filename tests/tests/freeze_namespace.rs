//! The freeze does not walk the tree: namespace changes made between the unfrozen walk and the
//! freeze (creates, deletes, renames of files and directories, chmod, links, appends, writes)
//! are found from fanotify events, re-reading only the entries they name, and every height
//! still replays exactly. The kernel-side condition is asserted: the frozen phase did not walk
//! (`frozen_walk`), the events arrived (`frozen_entries` covers the changes), and the work it
//! did is a few dozen entries in a tree of 10^5 files, as is the number of paths each record
//! is built from.
//!
//! Writes are reported by fanotify only while a cut runs (their notification costs every write
//! of the node): the filesystem mark's mask, as the kernel shows it in fdinfo, holds
//! `FAN_MODIFY` between the cut's start and its freeze and not between heights, where the
//! tracker's marks name the written files (appends, growth by fallocate). A truncation by
//! path, which no probe can place, makes the next cut walk (tests/truncate_by_path.rs).
use std::{
    fs,
    os::{
        fd::AsRawFd,
        unix::fs::{FileExt, PermissionsExt},
    },
    path::Path,
};

use btm_tests::{Cutting, FILESYSTEMS, assert_replay_equals, can_run, cutting};

/// `n` small files in directories of 1,000, and a directory whose name is what the kernel
/// appends to the path of an unlinked one.
fn populate(vol: &Path, n: usize) {
    fs::create_dir(vol.join("odd (deleted)")).unwrap();
    for i in 0..n {
        let d = vol.join(format!("d{:03}", i / 1000));
        if i % 1000 == 0 {
            fs::create_dir_all(&d).unwrap();
        }
        fs::write(d.join(format!("f{i:06}")), (i as u64).to_le_bytes()).unwrap();
    }
    fs::hard_link(vol.join("d000/f000010"), vol.join("d001/link-10")).unwrap();
}

/// Every kind of namespace change (15 entries), made while the cut is between its walk and
/// its freeze.
fn churn(vol: &Path) {
    let p = |r: &str| vol.join(r);
    fs::write(p("d000/new-a"), b"new file").unwrap();
    // Changed through one link that is then removed: the event names only that link.
    fs::set_permissions(p("d001/link-10"), fs::Permissions::from_mode(0o700)).unwrap();
    fs::OpenOptions::new()
        .write(true)
        .open(p("d001/link-10"))
        .unwrap()
        .set_len(3)
        .unwrap();
    fs::remove_file(p("d001/link-10")).unwrap();
    fs::write(
        p("odd (deleted)/inside"),
        b"found by its directory's handle",
    )
    .unwrap();
    fs::create_dir(p("newdir")).unwrap();
    fs::write(p("newdir/inside"), vec![5u8; 10_000]).unwrap();
    fs::rename(p("d000/f000001"), p("d001/moved-in")).unwrap();
    fs::rename(p("d002"), p("d002-renamed")).unwrap();
    fs::remove_file(p("d000/f000003")).unwrap();
    fs::remove_dir_all(p("d003")).unwrap();
    // Made again at once: it may get the freed inode number back.
    fs::create_dir(p("d003")).unwrap();
    fs::write(p("d003/reborn"), b"only this").unwrap();
    fs::set_permissions(p("d000/f000004"), fs::Permissions::from_mode(0o600)).unwrap();
    std::os::unix::fs::symlink("f000005", p("d000/link-to-5")).unwrap();
    fs::hard_link(p("d000/f000006"), p("d001/hard-6")).unwrap();
    let f = fs::OpenOptions::new()
        .append(true)
        .open(p("d000/f000007"))
        .unwrap();
    f.write_all_at(&[9u8; 5000], 8).unwrap();
    fs::OpenOptions::new()
        .write(true)
        .open(p("d000/f000008"))
        .unwrap()
        .write_all_at(b"XYZ", 2)
        .unwrap();
}

/// Whether the kernel reports writes on the filesystem of `vol` to a fanotify group of this
/// process: the `mask` of its filesystem mark in fdinfo (`sdev` is the superblock's `dev_t`,
/// which mountinfo gives: on btrfs `stat` gives the subvolume's). None when no group of this
/// process marks that filesystem.
fn writes_watched(vol: &Path) -> Option<bool> {
    let m = btm_agent::volume::Mount::at(vol).unwrap();
    let (major, minor) = (m.major as u64, m.minor as u64);
    let want = format!("sdev:{:x} ", (major << 20) | minor);
    let mut found = None;
    for fd in fs::read_dir("/proc/self/fdinfo").unwrap().flatten() {
        let Ok(info) = fs::read_to_string(fd.path()) else {
            continue;
        };
        for line in info.lines().filter(|l| l.starts_with("fanotify sdev:")) {
            if !line.contains(&want) {
                continue;
            }
            let mask = line
                .split(" mask:")
                .nth(1)
                .unwrap()
                .split(' ')
                .next()
                .unwrap();
            let mask = u64::from_str_radix(mask, 16).unwrap();
            *found.get_or_insert(false) |= mask & libc::FAN_MODIFY != 0;
        }
    }
    found
}

/// Changes made between two heights (each call makes new ones): a directory rename, a
/// removal, a tree removed and made again, a create, an append, a link, a chmod.
fn churn_between(vol: &Path) {
    let p = |r: &str| vol.join(r);
    let n = (0..)
        .find(|i| !p(&format!("between-{i}")).exists())
        .unwrap();
    let (from, d) = [("d004", 4), ("d002-renamed", 2)][n];
    fs::rename(p(from), p(&format!("between-{n}"))).unwrap();
    fs::remove_file(p(&format!("between-{n}/f{:06}", d * 1000 + 1))).unwrap();
    fs::write(p(&format!("d000/made-{n}")), vec![n as u8 + 1; 3000]).unwrap();
    fs::remove_dir_all(p("d003")).unwrap();
    fs::create_dir(p("d003")).unwrap();
    fs::write(p(&format!("d003/again-{n}")), b"again").unwrap();
    fs::OpenOptions::new()
        .append(true)
        .open(p("d000/f000009"))
        .unwrap()
        .write_all_at(b"more", 8 + n as u64 * 4)
        .unwrap();
    fs::hard_link(p("d000/f000011"), p(&format!("d001/hard-11-{n}"))).unwrap();
    // Grown through the new link only: the other path's size must follow.
    fs::OpenOptions::new()
        .append(true)
        .open(p(&format!("d001/hard-11-{n}")))
        .unwrap()
        .write_all_at(&[7u8; 6000], 0)
        .unwrap();
    fs::set_permissions(
        p("d000/f000012"),
        fs::Permissions::from_mode(0o640 + n as u32),
    )
    .unwrap();
    // Grown by plain allocation: no folio is dirtied, the tracker's fallocate probe marks it.
    let f = fs::OpenOptions::new()
        .write(true)
        .open(p("d000/f000013"))
        .unwrap();
    let len = 20_000 * (n as i64 + 1);
    // SAFETY: plain syscall on an open descriptor.
    assert_eq!(unsafe { libc::fallocate(f.as_raw_fd(), 0, 0, len) }, 0);
    assert_eq!(f.metadata().unwrap().len(), len as u64);
}

fn run(fstype: &str, files: usize, size_mb: u64) {
    let Cutting {
        mut cutter,
        vol,
        work,
        logdir,
    } = cutting(fstype, size_mb, "btm-freezens-");
    populate(&vol.mnt, files);
    let (r1, _) = cutter.cut(1).unwrap();
    assert!(r1.full);
    assert_replay_equals(&logdir, 1, &vol.mnt, work.path());

    assert_eq!(
        writes_watched(&vol.mnt),
        Some(false),
        "writes are watched between heights"
    );
    let root = vol.mnt.clone();
    cutter.before_freeze = Some(Box::new(move || {
        assert_eq!(
            writes_watched(&root),
            Some(true),
            "writes are not watched while the cut runs"
        );
        churn(&root);
    }));
    let (r2, _) = cutter.cut(2).unwrap();
    cutter.before_freeze = None;
    eprintln!(
        "{fstype}, {files} files: freeze {:.1} ms, {} entries re-read, {} files opened, walked: {}",
        r2.freeze_ms, r2.frozen_entries, r2.frozen_opens, r2.frozen_walk
    );
    assert!(
        !r2.frozen_walk,
        "the frozen phase walked the whole tree: no namespace events on {fstype}"
    );
    assert!(
        r2.frozen_entries >= 10,
        "only {} entries re-read for 15 changes: events were missed",
        r2.frozen_entries
    );
    assert!(
        r2.frozen_entries < 200 && r2.frozen_opens < 50,
        "the freeze did work that grows with the tree: {} entries, {} opens for {files} files",
        r2.frozen_entries,
        r2.frozen_opens
    );
    assert_replay_equals(&logdir, 2, &vol.mnt, work.path());

    // Quiet height: nothing is re-read or opened inside the freeze.
    let (r3, _) = cutter.cut(3).unwrap();
    assert!(!r3.frozen_walk);
    assert_eq!((r3.frozen_entries, r3.frozen_opens), (0, 0), "{r3:?}");
    assert_replay_equals(&logdir, 3, &vol.mnt, work.path());

    // Changes between heights: the unfrozen phase patches the namespace the last freeze
    // left from events instead of walking the tree.
    churn_between(&vol.mnt);
    let (r4, _) = cutter.cut(4).unwrap();
    assert!(r1.unfrozen_walk, "the baseline walks");
    for r in [&r2, &r3, &r4] {
        assert!(!r.unfrozen_walk, "height {} walked unfrozen", r.height);
        // The record is built from the paths that changed (the churn renames a directory
        // of 1,000 files and removes another: about 3,000 paths before and after), not
        // from every path (this debug build also builds it from every path and fails the
        // cut if they differ).
        let most = if r.height == 3 { 20 } else { 3_500 };
        assert!(
            r.record_paths < most,
            "height {} built its record from {} paths of {files} files",
            r.height,
            r.record_paths
        );
    }
    assert_replay_equals(&logdir, 4, &vol.mnt, work.path());
    assert_eq!(writes_watched(&vol.mnt), Some(false), "after height 4");
    // The report says where the time went: the phases add up to the cut, and on a block
    // device the syncfs's write-back is counted (data was written before height 4).
    for r in [&r2, &r3, &r4] {
        let p = &r.phases_ms;
        let sum = p.syncfs + p.drain + p.namespace + p.read + p.frozen + p.record;
        assert!(
            sum <= r.total_ms + 0.5 && sum >= r.total_ms * 0.8,
            "phases {p:?} add up to {sum} ms of {} ms",
            r.total_ms
        );
        assert!(p.frozen >= r.freeze_ms, "{p:?} vs freeze {}", r.freeze_ms);
    }
    if fstype == "btrfs" {
        assert_eq!(
            r4.synced_bytes, None,
            "btrfs's anonymous device has no statistics"
        );
    } else {
        assert!(r4.synced_bytes.unwrap_or(0) > 0, "{:?}", r4.synced_bytes);
    }

    // The periodic walk checks the namespace kept from events against the tree.
    churn_between(&vol.mnt);
    cutter.walk_every = 1;
    let (r5, _) = cutter.cut(5).unwrap();
    assert!(r5.unfrozen_walk);
    assert_eq!(
        r5.namespace_missed, 0,
        "the namespace kept from events differs from the tree"
    );
    assert_replay_equals(&logdir, 5, &vol.mnt, work.path());

    drop(cutter); // its namespace watch holds the mount
}

#[test]
fn namespace_changes_before_the_freeze_are_found_without_a_walk() {
    if !can_run("namespace events") {
        return;
    }
    for fs in FILESYSTEMS {
        run(fs, 5_000, 1024);
    }
}

#[test]
fn the_freeze_of_a_tree_of_100k_files_rereads_only_what_changed() {
    if !can_run("namespace events at scale") {
        return;
    }
    // 4 GiB (sparse): enough inodes for 10^5 files.
    run("ext4", 100_000, 4096);
}
