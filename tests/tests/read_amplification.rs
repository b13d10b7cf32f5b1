//! A height reads what changed, byte for byte, for pwrite writers: a file appended to in small
//! writes and pages rewritten in place, on ext4, xfs and btrfs. The write probes must have run
//! for each write (the tracker's `precise` counter; on btrfs, which has no such probe, a
//! dirty-folio mark per 4 KiB page), and the cut must read each changed byte
//! once: the marks of an appended file and the tail it grew by are the same bytes, which were
//! read twice before (1.25x in the benchmark, whose block files grow by a quarter of a height).
use std::{collections::BTreeSet, fs::OpenOptions, io::Write};

use btm_tests::{Cutting, Rng, can_run, cutting, write_at};

const PAGE: u64 = 4096;

fn pwrite_height(fstype: &str) {
    let what = format!("read amplification of pwrite writers on {fstype}");
    if !can_run(&what) {
        return;
    }
    // `work` holds the log: it must live as long as the cutter.
    let Cutting {
        mut cutter,
        vol,
        work: _work,
        ..
    } = cutting(fstype, 512, "btm-readamp-");
    let blocks = vol.path("blocks.dat");
    let state = vol.path("state.db");
    std::fs::write(&blocks, vec![1u8; 8 << 20]).unwrap();
    std::fs::write(&state, vec![2u8; 16 << 20]).unwrap();
    cutter.cut(1).unwrap();
    let before = cutter.tracker().stats().unwrap();

    // 1 MiB appended in 64 KiB writes; 32 pages rewritten in place.
    let appends = 16u64;
    let mut f = OpenOptions::new().append(true).open(&blocks).unwrap();
    for i in 0..appends {
        f.write_all(&vec![3 + i as u8; 64 << 10]).unwrap();
    }
    drop(f);
    let mut rng = Rng(5);
    let mut pages = BTreeSet::new();
    while pages.len() < 32 {
        pages.insert(rng.below((16 << 20) / PAGE));
    }
    for p in &pages {
        write_at(&state, p * PAGE, &[9u8; PAGE as usize]);
    }
    let (rep, _) = cutter.cut(2).unwrap();
    let after = cutter.tracker().stats().unwrap();

    let changed = (appends << 16) + pages.len() as u64 * PAGE;
    if fstype == "btrfs" {
        // No write probe gives btrfs byte ranges: its 4 KiB folios are marked as they dirty.
        let folios = after.folio_marked - before.folio_marked;
        assert!(
            folios >= changed / PAGE,
            "{what}: {folios} folios marked for {} pages written: {after:?}",
            changed / PAGE
        );
    } else {
        let writes = appends + pages.len() as u64;
        let precise = after.precise - before.precise;
        assert!(
            precise >= writes,
            "{what}: the write probes marked {precise} precise ranges for {writes} writes: \
             {after:?}"
        );
    }
    let read = rep.read_unfrozen + rep.read_frozen;
    assert_eq!(
        read,
        changed,
        "{what}: read {read} bytes for {changed} changed ({:.2}x)",
        read as f64 / changed as f64
    );
}

#[test]
fn pwrite_heights_read_what_changed_ext4() {
    pwrite_height("ext4");
}

#[test]
fn pwrite_heights_read_what_changed_xfs() {
    pwrite_height("xfs");
}

#[test]
fn pwrite_heights_read_what_changed_btrfs() {
    pwrite_height("btrfs");
}
