//! A range-changing call made while a cut holds the volume frozen waits for the thaw, and
//! changes the file only after that cut drained the mark the call's entry made. Its exit marks
//! the range again, in the epoch of the change, so the next cut reads it. Without the exit
//! mark the change was in no epoch: a hole punched or a file grown by `ftruncate` during a
//! freeze was missing from every later height.
//!
//! The kernel-side condition is asserted: the call had entered (the tracker counted it and the
//! drain made while frozen holds its entry mark) and was still blocked when that drain ran.
use std::{
    fs::{File, OpenOptions},
    io::Write,
    os::fd::AsRawFd,
    time::{Duration, Instant},
};

use btm_agent::{
    tracker::{DirtySet, Limits, Tracker},
    volume::{Frozen, Mount},
};
use btm_tests::{FILESYSTEMS, LoopFs, Rng, can_run, drain_frozen, missed};

const MIB: u64 = 1 << 20;
const SIZE: u64 = 8 * MIB;

/// The 4 KiB blocks of `[start, end)` that `set` does not cover for file `ino`.
fn missed_range(set: &DirtySet, ino: u64, start: u64, end: u64) -> Vec<u64> {
    missed(set, ino, &(start / 4096..end.div_ceil(4096)).collect())
}

/// A call on the file, its name, and the bytes it changes.
type Call = (&'static str, fn(&File) -> i32, (u64, u64));

fn punch(f: &File) -> i32 {
    let mode = libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE;
    // SAFETY: plain syscall on an open descriptor.
    unsafe { libc::fallocate(f.as_raw_fd(), mode, (2 * MIB + 4096) as i64, 64 << 10) }
}

fn grow(f: &File) -> i32 {
    // SAFETY: plain syscall on an open descriptor.
    unsafe { libc::ftruncate(f.as_raw_fd(), (SIZE + MIB + 7) as i64) }
}

fn run(fstype: &str) {
    let fs = LoopFs::new(fstype, 512).expect("loop fs");
    let mount = Mount::at(&fs.mnt).unwrap();
    let mut tracker = Tracker::start(&mount, Limits::for_volume_bytes(512 * MIB)).unwrap();
    let path = fs.path("f");
    let mut f = File::create(&path).unwrap();
    f.write_all(&Rng(7).bytes(SIZE as usize)).unwrap();
    f.sync_all().unwrap();
    let ino = std::os::unix::fs::MetadataExt::ino(&f.metadata().unwrap());
    drop(f);
    drain_frozen(&mut tracker, &fs.mnt);

    let calls: [Call; 2] = [
        (
            "punch",
            punch,
            (2 * MIB + 4096, 2 * MIB + 4096 + (64 << 10)),
        ),
        ("ftruncate growth", grow, (SIZE, SIZE + MIB + 7)),
    ];
    for (name, call, (start, end)) in calls {
        let f = OpenOptions::new().write(true).open(&path).unwrap();
        let before = tracker.stats().unwrap().range_calls;
        let frozen = Frozen::freeze(&fs.mnt).expect("freeze");
        let waiter = std::thread::spawn(move || call(&f));
        let t0 = Instant::now();
        while tracker.stats().unwrap().range_calls == before {
            assert!(
                t0.elapsed() < Duration::from_secs(10),
                "{fstype}/{name}: the call never entered"
            );
            std::thread::sleep(Duration::from_millis(10));
        }
        std::thread::sleep(Duration::from_millis(200));
        // The cut's drain while frozen: it takes the entry mark, before the change.
        let during = tracker.take().unwrap();
        assert!(
            !waiter.is_finished(),
            "{fstype}/{name}: the call did not wait for the frozen volume"
        );
        assert_eq!(
            missed_range(&during, ino, start, end),
            Vec::<u64>::new(),
            "{fstype}/{name}: no entry mark"
        );
        frozen.thaw().expect("thaw");
        assert_eq!(waiter.join().unwrap(), 0, "{fstype}/{name} failed");
        let after = drain_frozen(&mut tracker, &fs.mnt);
        assert_eq!(
            missed_range(&after, ino, start, end),
            Vec::<u64>::new(),
            "{fstype}/{name}: the change landed after the drain and no later epoch marks it"
        );
    }
    assert_eq!(tracker.stats().unwrap().lost, 0);
}

#[test]
fn a_range_call_that_waits_for_the_freeze_is_marked_when_it_lands() {
    if !can_run("range calls across a freeze") {
        return;
    }
    for fs in FILESYSTEMS {
        run(fs);
    }
}
