//! Write faults whose VMA lookup is busy are kept for the agent, which resolves them from
//! /proc/PID/maps at the drain (btm-agent/src/tracker/deferred.rs) instead of widening every
//! partially-marked folio of the cut.
//!
//! `BTM_TEST_DEFER_FAULTS=1` makes the fault probe defer every fault its cache cannot answer,
//! as a busy lookup would (asserted: `fault_deferred` rises by at least one per store, so the
//! deferral is what is tested). The file's 2 MiB folios are first dirtied by a pwrite of one
//! page each, so no folio event follows the stores: only the resolved faults can mark them.
//! - Resolved: every stored page is marked, nothing counts as unresolved.
//! - The mapping is gone before the drain (munmap settles a change): the agent cannot tell
//!   what the address was, counts the faults as unresolved and widens the partial folios, so
//!   the stored pages are still covered.
use std::{
    collections::BTreeSet,
    fs::{File, OpenOptions},
    io::Write,
    os::{
        fd::AsRawFd,
        unix::fs::{FileExt, MetadataExt},
    },
};

use btm_agent::{
    tracker::{Limits, Tracker},
    volume::Mount,
};
use btm_tests::{LoopFs, Rng, can_run, drain_frozen, missed};

const MIB: u64 = 1 << 20;
const LEN: u64 = 8 * MIB;
const PAGE: u64 = 4096;

/// Stores into 8 pages of each 2 MiB folio of a mapping of the file, after a pwrite dirtied
/// page 511 of each; returns the pages stored into and the mapping.
fn stores(f: &File, rng: &mut Rng) -> (BTreeSet<u64>, *mut u8) {
    // SAFETY: a shared mapping of a file the test owns.
    let p = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            LEN as usize,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_SHARED,
            f.as_raw_fd(),
            0,
        )
    };
    assert!(p != libc::MAP_FAILED);
    let p = p as *mut u8;
    let mut pages = BTreeSet::new();
    for folio in 0..LEN / (2 * MIB) {
        f.write_all_at(&rng.bytes(PAGE as usize), (folio * 512 + 511) * PAGE)
            .unwrap();
        while pages.len() < ((folio + 1) * 8) as usize {
            pages.insert(folio * 512 + rng.below(511));
        }
    }
    for &pg in &pages {
        // SAFETY: inside the mapping.
        unsafe {
            let b = p.add((pg * PAGE + 9) as usize);
            std::ptr::write_volatile(b, !std::ptr::read_volatile(b));
        }
    }
    (pages, p)
}

#[test]
fn busy_faults_are_resolved_by_the_agent() {
    if !can_run("fault_defer") {
        return;
    }
    let fs = LoopFs::new("xfs", 512).expect("loop fs");
    let mount = Mount::at(&fs.mnt).unwrap();
    let path = fs.path("b.mdb");
    let mut rng = Rng(0xdefe_44ed);
    let mut f = File::create(&path).unwrap();
    for _ in 0..LEN / (2 * MIB) {
        f.write_all(&rng.bytes((2 * MIB) as usize)).unwrap();
    }
    f.sync_all().unwrap();
    let ino = std::fs::metadata(&path).unwrap().ino();
    let f = OpenOptions::new()
        .read(true)
        .write(true)
        .open(&path)
        .unwrap();
    // SAFETY: this test binary holds one test, so no other thread reads the environment.
    unsafe { std::env::set_var("BTM_TEST_DEFER_FAULTS", "1") };
    let mut tracker = Tracker::start(&mount, Limits::for_volume_bytes(512 * MIB)).unwrap();
    let _ = drain_frozen(&mut tracker, &fs.mnt);

    // Resolved at the drain.
    let before = tracker.stats().unwrap();
    let (pages, p) = stores(&f, &mut rng);
    let set = drain_frozen(&mut tracker, &fs.mnt);
    let after = tracker.stats().unwrap();
    assert!(
        after.fault_deferred - before.fault_deferred >= LEN / (2 * MIB),
        "only {} deferred faults for {} pages: the deferral is not what this tests",
        after.fault_deferred - before.fault_deferred,
        pages.len()
    );
    assert_eq!(
        after.fault_unresolved, before.fault_unresolved,
        "resolved ones"
    );
    assert_eq!(
        missed(&set, ino, &pages),
        Vec::<u64>::new(),
        "deferred stores"
    );
    // SAFETY: the mapping made by `stores`.
    unsafe { libc::munmap(p as *mut libc::c_void, LEN as usize) };

    // The mapping is gone before the drain: unknown, so everything partial is widened.
    let before = tracker.stats().unwrap();
    let (pages, p) = stores(&f, &mut rng);
    // SAFETY: as above.
    unsafe { libc::munmap(p as *mut libc::c_void, LEN as usize) };
    let set = drain_frozen(&mut tracker, &fs.mnt);
    let after = tracker.stats().unwrap();
    assert!(after.fault_deferred > before.fault_deferred);
    assert!(
        after.fault_unresolved > before.fault_unresolved,
        "faults of a mapping gone before the drain must count as unresolved"
    );
    assert_eq!(missed(&set, ino, &pages), Vec::<u64>::new(), "gone mapping");
}
