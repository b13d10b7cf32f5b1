//! An agent stopped cleanly and started again reads only what changed, not the volume: the
//! stop records the tracker's marks since the last height and every file's stat, and leaves
//! the tracker running (pinned in bpffs); the start takes it over and reads those marks and
//! what was marked meanwhile, so a large file written while no agent ran costs its changed
//! blocks, not its size. After a crash, the stat index cuts leave makes the first cut read
//! only the files whose stat changed; without it, everything, as the control shows. Every
//! height replays exactly.
use std::{fs, os::unix::fs::MetadataExt, path::Path, time::Duration};

use btm_agent::{
    cut::{Cutter, crash_index::INDEX_FILE, losses::Losses, resume::RESUME_FILE},
    volume::Mount,
};
use btm_tests::{
    Cutting, FILESYSTEMS, Rng, assert_replay_equals, can_run, cutting, restart_cutter, write_at,
};

const MIB: u64 = 1 << 20;
const VOL_MB: u64 = 512;

fn restart(vol: &Path, logdir: &Path) -> Cutter {
    restart_cutter(vol, logdir, VOL_MB)
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
    assert!(saved.path.ends_with(RESUME_FILE));
    // The stop starts from the namespace the cuts kept: it re-reads the one file written
    // since the height, not the 66 files of the tree.
    assert!(
        !saved.walked && (1..=4).contains(&saved.reread),
        "{fstype}: a clean stop re-reads what changed, not the tree: {saved:?}"
    );
    assert_eq!(
        saved.files, 65,
        "{fstype}: every file of the height recorded"
    );
    drop(cutter);

    // The stop left its programs attached: their links are pinned under the volume's device.
    let m = Mount::at(&vol.mnt).unwrap();
    let pins = btm_agent::tracker::handover::volume_dir(&m);
    let links: Vec<_> = fs::read_dir(&pins)
        .expect("a clean stop pins its tracker")
        .flatten()
        .flat_map(|d| fs::read_dir(d.path().join("links")).unwrap().flatten())
        .collect();
    assert!(
        links.len() >= 10,
        "{fstype}: the stop pinned the links of its programs ({} found)",
        links.len()
    );

    // While no agent runs: a write into the large file (its stat changes, so only the tracker
    // left running can say what to read of it), a write, an append, a new file.
    let mtime = fs::metadata(&state).unwrap().mtime_nsec();
    std::thread::sleep(Duration::from_millis(20));
    write_at(&state, 30 * MIB, &rng.bytes(4096));
    let md = fs::metadata(&state).unwrap();
    assert_ne!(
        md.mtime_nsec(),
        mtime,
        "{fstype}: the write changed the stat"
    );
    let mapper = store_through_mapping(&state, 40 * MIB);
    write_at(&vol.path("blocks/005"), 4096, &rng.bytes(4096));
    let mut grown = fs::read(vol.path("blocks/006")).unwrap();
    grown.extend(rng.bytes(8192));
    fs::write(vol.path("blocks/006"), grown).unwrap();
    fs::write(vol.path("blocks/new"), rng.bytes(10_000)).unwrap();

    let mut cutter = restart(&vol.mnt, &logdir);
    assert!(!logdir.join(RESUME_FILE).exists(), "the state is used once");
    assert!(
        cutter.tracker().adopted().is_some(),
        "{fstype}: the start took over the tracker the stop left running"
    );
    assert!(
        fs::read_dir(&pins).map_or(true, |mut d| d.next().is_none()),
        "{fstype}: taken over, the pins are gone"
    );
    // The programs left running saw the process map the volume; it is gone now, and the
    // start keeps only processes that map the volume (a stale one, this process included
    // when a mapper started it, widened every cut).
    assert!(
        !cutter.tracker().is_mapper(mapper),
        "{fstype}: an exited mapper was dropped from MAPPERS"
    );

    // Old enough, at the cut, for the stat index it leaves to trust them (not racy).
    std::thread::sleep(Duration::from_millis(2100));
    let (r3, _) = cutter.cut(3).unwrap();
    let new1 = cutter.tracker().stats().unwrap();
    let read = r3.read_unfrozen + r3.read_frozen;
    // A write fault the tracker could not resolve, or a write into mapped pages it cannot
    // see (any process's: neither names a file), makes a cut read partially-marked folios
    // whole: the 12 KiB marked before the stop may then cost their folio (2 MiB at most).
    let rose = |a: &btm_agent::tracker::Stats, b: &btm_agent::tracker::Stats| {
        Losses::of(b).force_widen(&Losses::of(a))
    };
    // The counters go on across the handover (pinned), so one comparison covers the stop,
    // the time no agent ran and the first cut.
    let widened = rose(&old0, &new1);
    eprintln!(
        "{fstype}: first cut after a clean stop read {} KiB (widening forced: {widened})",
        read / 1024
    );
    assert!(
        !r3.full,
        "a clean stop's state makes the first cut incremental"
    );
    // Two changed 256 KiB files whole, the new file, the 12 KiB marked before the stop, the
    // 4 KiB written into the 64 MiB file meanwhile, the store through a mapping (a first
    // touch: its folio, up to 2 MiB); each may cost its folio when widened.
    let most = if widened { 8 * MIB } else { 4 * MIB };
    assert!(
        read < most,
        "the first cut after a clean stop read {read} bytes of an 80 MiB volume"
    );
    assert_replay_equals(&logdir, 3, &vol.mnt, work.path());

    // A crash (no clean stop): the stat index the agent writes between requests makes the
    // first cut read only the files whose stat changed since, here one block file written
    // while no agent ran, not the 64 MiB state file nor the other block files.
    cutter.maintain_index();
    cutter.finish_index(); // a thread writes it
    assert!(
        logdir.join(INDEX_FILE).exists(),
        "{fstype}: the index was written"
    );
    drop(cutter);
    std::thread::sleep(Duration::from_millis(20));
    write_at(&vol.path("blocks/007"), 8192, &rng.bytes(4096));
    let mut cutter = restart(&vol.mnt, &logdir);
    let (r4, _) = cutter.cut(4).unwrap();
    let read = r4.read_unfrozen + r4.read_frozen;
    eprintln!("{fstype}: first cut after a crash, with the stat index: read {read} bytes");
    assert!(!r4.full, "{fstype}: {r4:?}");
    assert!(
        (256 << 10..4 * MIB).contains(&read),
        "{fstype}: the first cut after a crash read {read} bytes: {r4:?}"
    );
    assert_replay_equals(&logdir, 4, &vol.mnt, work.path());

    // Control: a crash without the index makes the first cut read everything.
    write_at(&state, 20 * MIB, &rng.bytes(4096));
    drop(cutter);
    fs::remove_file(logdir.join(INDEX_FILE)).unwrap();
    let mut cutter = restart(&vol.mnt, &logdir);
    let (r5, _) = cutter.cut(5).unwrap();
    let read = r5.read_unfrozen + r5.read_frozen;
    assert!(r5.full && read >= 64 * MIB, "{r5:?}");
    assert_replay_equals(&logdir, 5, &vol.mnt, work.path());

    // A clean stop that leaves no tracker running (as after a reboot): the next start trusts
    // the recorded stats. Without a walk, the file written since the height gets a fresh stat
    // and its marks; the others keep the stat their last cut took.
    write_at(&state, 22 * MIB, &rng.bytes(4096));
    cutter.cut(6).unwrap();
    write_at(&state, 11 * MIB, &rng.bytes(2 * 4096));
    std::thread::sleep(Duration::from_millis(2500));
    cutter.leave_running = false;
    let saved = cutter.suspend().unwrap().expect("a clean stop records");
    assert!(
        !saved.walked && (1..=4).contains(&saved.reread),
        "{fstype}: {saved:?}"
    );
    drop(cutter);
    assert!(
        fs::read_dir(&pins).map_or(true, |mut d| d.next().is_none()),
        "{fstype}: nothing left running"
    );
    std::thread::sleep(Duration::from_millis(20));
    write_at(&vol.path("blocks/008"), 0, &rng.bytes(4096));
    let mut cutter = restart(&vol.mnt, &logdir);
    assert!(
        cutter.tracker().adopted().is_none(),
        "{fstype}: a new tracker"
    );
    let (r7, _) = cutter.cut(7).unwrap();
    let read = r7.read_unfrozen + r7.read_frozen;
    eprintln!("{fstype}: first cut after a clean stop without a tracker: read {read} bytes");
    // The block file written while no agent ran whole, the 8 KiB marked before the stop (its
    // folio at most): not the 64 MiB state file, whose stat the stop took again.
    assert!(
        !r7.full && (256 << 10..4 * MIB).contains(&read),
        "{fstype}: the first cut after a clean stop read {read} bytes: {r7:?}"
    );
    assert_replay_equals(&logdir, 7, &vol.mnt, work.path());
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

/// Forks a process that maps `path` shared, stores one byte at `at` through the mapping and
/// exits; returns its pid once it has.
fn store_through_mapping(path: &Path, at: u64) -> u32 {
    use std::os::unix::ffi::OsStrExt;
    let c = std::ffi::CString::new(path.as_os_str().as_bytes()).unwrap();
    // SAFETY: the child makes only raw system calls (async-signal-safe after fork in a
    // multithreaded process) and exits without unwinding.
    let pid = unsafe { libc::fork() };
    if pid == 0 {
        unsafe {
            let fd = libc::open(c.as_ptr(), libc::O_RDWR);
            let p = libc::mmap(
                std::ptr::null_mut(),
                4096,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED,
                fd,
                at as libc::off_t,
            );
            if fd < 0 || p == libc::MAP_FAILED {
                libc::_exit(1);
            }
            *(p as *mut u8) ^= 0x5a;
            libc::msync(p, 4096, libc::MS_SYNC);
            libc::_exit(0);
        }
    }
    assert!(pid > 0, "fork");
    let mut status = 0;
    // SAFETY: waits for the child just forked.
    unsafe { libc::waitpid(pid, &mut status, 0) };
    assert!(
        libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0,
        "the mapping child failed: {status}"
    );
    pid as u32
}
