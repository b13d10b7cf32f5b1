//! An agent stopped cleanly and started again reads only what changed, not the volume: the
//! stop records the tracker's marks since the last height and every file's stat, the start
//! reads those marks and the files whose stat changed meanwhile. Without a clean stop (a
//! crash), the first cut reads everything, as the control shows. Every height replays exactly.
use std::{fs, os::unix::fs::FileExt, path::Path, time::Duration};

use btm_agent::{
    cut::{Cutter, losses::Losses, resume::RESUME_FILE},
    log::Log,
    tracker::{Limits, Tracker},
    volume::Mount,
};
use btm_tests::{Cutting, FILESYSTEMS, Rng, assert_replay_equals, can_run, cutting};

const MIB: u64 = 1 << 20;
const VOL_MB: u64 = 512;

fn restart(vol: &Path, logdir: &Path) -> Cutter {
    let mount = Mount::at(vol).unwrap();
    let tracker = Tracker::start(&mount, Limits::for_volume_bytes(VOL_MB * MIB)).unwrap();
    Cutter::new(mount, tracker, Log::open_append(logdir).unwrap()).unwrap()
}

fn write_at(path: &Path, at: u64, bytes: &[u8]) {
    fs::OpenOptions::new()
        .write(true)
        .open(path)
        .unwrap()
        .write_all_at(bytes, at)
        .unwrap();
}

fn run(fstype: &str) {
    let Cutting {
        mut cutter,
        vol,
        work,
        logdir,
    } = cutting(fstype, VOL_MB, "btm-resume-");
    let mut rng = Rng(0x7e57_a127);
    let state = vol.path("state.db");
    fs::write(&state, rng.bytes(64 * MIB as usize)).unwrap();
    fs::create_dir(vol.path("blocks")).unwrap();
    for i in 0..64 {
        fs::write(vol.path(&format!("blocks/{i:03}")), rng.bytes(256 << 10)).unwrap();
    }
    cutter.cut(1).unwrap();
    write_at(&state, 5 * MIB, &rng.bytes(4096));
    cutter.cut(2).unwrap();
    let old0 = cutter.tracker().stats().unwrap();

    // Tracked before the stop, then old enough not to be racy: only the marks are read.
    write_at(&state, 9 * MIB, &rng.bytes(3 * 4096));
    std::thread::sleep(Duration::from_millis(2500));
    let saved = cutter
        .suspend()
        .unwrap()
        .expect("a clean stop records its state");
    assert!(saved.ends_with(RESUME_FILE));
    let old1 = cutter.tracker().stats().unwrap();
    drop(cutter);

    // While no agent runs: a write, an append, a new file.
    write_at(&vol.path("blocks/005"), 4096, &rng.bytes(4096));
    let mut grown = fs::read(vol.path("blocks/006")).unwrap();
    grown.extend(rng.bytes(8192));
    fs::write(vol.path("blocks/006"), grown).unwrap();
    fs::write(vol.path("blocks/new"), rng.bytes(10_000)).unwrap();

    let mut cutter = restart(&vol.mnt, &logdir);
    assert!(!logdir.join(RESUME_FILE).exists(), "the state is used once");
    let new0 = cutter.tracker().stats().unwrap();
    let (r3, _) = cutter.cut(3).unwrap();
    let new1 = cutter.tracker().stats().unwrap();
    let read = r3.read_unfrozen + r3.read_frozen;
    // A write fault the tracker could not resolve, or a write into mapped pages it cannot
    // see (any process's: neither names a file), makes a cut read partially-marked folios
    // whole: the 12 KiB marked before the stop may then cost their folio (2 MiB at most).
    let rose = |a: &btm_agent::tracker::Stats, b: &btm_agent::tracker::Stats| {
        Losses::of(b).force_widen(&Losses::of(a))
    };
    let widened = rose(&old0, &old1) || rose(&new0, &new1);
    eprintln!(
        "{fstype}: first cut after a clean stop read {} KiB (widening forced: {widened})",
        read / 1024
    );
    assert!(
        !r3.full,
        "a clean stop's state makes the first cut incremental"
    );
    // Two changed 256 KiB files whole, the new file, the 12 KiB marked before the stop.
    let most = if widened { 4 * MIB } else { 2 * MIB };
    assert!(
        read < most,
        "the first cut after a clean stop read {read} bytes of an 80 MiB volume"
    );
    assert_replay_equals(&logdir, 3, &vol.mnt, work.path());

    // Control: a crash (no state) makes the first cut read everything.
    write_at(&state, 20 * MIB, &rng.bytes(4096));
    drop(cutter);
    let mut cutter = restart(&vol.mnt, &logdir);
    let (r4, _) = cutter.cut(4).unwrap();
    let read = r4.read_unfrozen + r4.read_frozen;
    assert!(r4.full && read >= 64 * MIB, "{r4:?}");
    assert_replay_equals(&logdir, 4, &vol.mnt, work.path());
    drop(cutter);
}

#[test]
fn a_clean_restart_reads_only_what_changed() {
    if !can_run("restart with a resume state") {
        return;
    }
    for fs in FILESYSTEMS {
        run(fs);
    }
}
