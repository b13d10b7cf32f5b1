//! A start that stops again before it cut a height hands on what the stop before it recorded.
//! A clean stop records, for the next start, the ranges the tracker marked since the last
//! height and every file's stat; the next start reads those ranges, and whole only the files
//! whose stat changed (when no tracker was left running). The stop of a start that cut
//! nothing used to record only its own marks and the stat it found: the start after it took
//! a file written before the first stop, or while no agent ran, as unchanged, and the next
//! height missed that change. Each run writes one block before the first stop and one while
//! no agent runs, starts and stops again without a height, starts, cuts, and replays.
use std::{fs, time::Duration};

use btm_tests::{Cutting, Rng, assert_replay_equals, can_run, cutting, restart_cutter, write_at};

const MIB: u64 = 1 << 20;
const VOL_MB: u64 = 320;

fn run(fstype: &str, leave_running: bool) {
    let what = format!("{fstype}, tracker left running: {leave_running}");
    let Cutting {
        mut cutter,
        vol,
        work,
        logdir,
    } = cutting(fstype, VOL_MB, "btm-restart2-");
    let mut rng = Rng(0x02e5_7a27);
    let state = vol.path("state.db");
    fs::write(&state, rng.bytes(16 * MIB as usize)).unwrap();
    fs::write(vol.path("small"), rng.bytes(64 << 10)).unwrap();
    cutter.cut(1).unwrap();

    // Marked before the first stop, and old enough at it not to be racy.
    write_at(&state, MIB, &rng.bytes(4096));
    std::thread::sleep(Duration::from_millis(2500));
    cutter.leave_running = leave_running;
    cutter.suspend().unwrap().expect("the first stop records");
    drop(cutter);
    // While no agent runs: its stat changes, and only a tracker left running marks it.
    std::thread::sleep(Duration::from_millis(20));
    write_at(&vol.path("small"), 4096, &rng.bytes(4096));

    // A start that stops again before any height, long enough after that write for its stat
    // not to be racy at this stop (else the next start would read the file whole anyway).
    let mut cutter = restart_cutter(&vol.mnt, &logdir, VOL_MB);
    assert_eq!(
        cutter.tracker().adopted().is_some(),
        leave_running,
        "{what}: the start took over the tracker the stop left, if any"
    );
    std::thread::sleep(Duration::from_millis(2500));
    cutter.leave_running = leave_running;
    let second = cutter.suspend().unwrap().expect("the second stop records");
    assert_eq!(second.files, 2, "{what}: {second:?}");
    drop(cutter);

    let mut cutter = restart_cutter(&vol.mnt, &logdir, VOL_MB);
    let (r, _) = cutter.cut(2).unwrap();
    let read = r.read_unfrozen + r.read_frozen;
    eprintln!("{what}: the first cut after two stops read {read} bytes: {r:?}");
    // The case: the height is cut from the second stop's state, not by reading everything.
    assert!(!r.full, "{what}: {r:?}");
    assert!(read < 4 * MIB, "{what}: read {read} bytes of 16 MiB: {r:?}");
    assert_replay_equals(&logdir, 2, &vol.mnt, work.path());
}

#[test]
fn a_second_stop_before_any_height_keeps_what_the_first_recorded() {
    if !can_run("two clean stops without a height between them") {
        return;
    }
    for fstype in ["ext4", "xfs"] {
        for leave_running in [true, false] {
            run(fstype, leave_running);
        }
    }
}
