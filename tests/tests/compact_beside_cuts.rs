//! The agent compacts its log beside the cuts (issue 14): a compaction held open (by a test
//! gate, whatever the machine's speed) must not hold up heights, which keep being cut while
//! the agent's status reports it running; its commit then takes in the heights cut meanwhile,
//! and every kept height replays exactly.
use std::path::Path;
use std::process::Command;

use btm_tests::{LoopFs, agent_bin, can_run, snapshot_via, start_agent_env, workdir};

fn digest(dir: &Path) -> btm_agent::treehash::TreeHash {
    btm_agent::treehash::hash_tree(dir).unwrap()
}

/// One height of chain-like writes: a new 1 MiB block file and a rewritten 512 KiB state.
fn write_height(vol: &Path, h: u64) {
    let mut rng = btm_testkit::Rng(h * 7_777);
    std::fs::write(vol.join(format!("blk-{h:04}")), rng.bytes(1 << 20)).unwrap();
    std::fs::write(vol.join("state"), rng.bytes(512 << 10)).unwrap();
}

/// Every height of `kept` replays into `scratch` to the tree it had (`states`).
fn replays_exactly(
    log: &Path,
    scratch: &Path,
    kept: &[u64],
    states: &std::collections::BTreeMap<u64, btm_agent::treehash::TreeHash>,
) {
    let l = btm_agent::log::Log::open_read(log).unwrap();
    let opts = btm_agent::log::ReplayOptions {
        progress: false,
        sync: false,
        ..Default::default()
    };
    for k in kept {
        let into = scratch.join(format!("r{k}"));
        l.replay(*k, &into, &opts).unwrap();
        assert_eq!(digest(&into), states[k], "height {k}");
        std::fs::remove_dir_all(&into).unwrap();
    }
}

#[test]
fn heights_are_cut_while_the_log_compacts() {
    if !can_run("compact_beside_cuts") {
        return;
    }
    let fs = LoopFs::new("ext4", 256).unwrap();
    let vol = fs.mnt.clone();
    let work = workdir("btm-compact-beside-");
    let log = work.path().join("log");
    let sock = work.path().join("btm.sock");
    let gate = work.path().join("gate");
    let gate_s = gate.to_str().unwrap();
    let mut agent = start_agent_env(
        &vol,
        &log,
        &sock,
        &["--cap", "4", "--algo", "fair", "--compact-min-bytes", "0"],
        &[("BTM_TEST_COMPACT_GATE", gate_s)],
    );
    let mut states = std::collections::BTreeMap::new();
    let mut h = 0;
    // Cut until retention has dropped enough for a compaction to start.
    while btm_tests::agent_status(&sock)["compaction"].is_null() {
        h += 1;
        assert!(h <= 20, "no compaction started after {h} heights");
        write_height(&vol, h);
        states.insert(h, digest(&vol));
        snapshot_via(&sock, h);
    }
    let started_at = h;
    // Held open: heights go on being cut, each acknowledged while it is still running.
    for _ in 0..6 {
        h += 1;
        write_height(&vol, h);
        states.insert(h, digest(&vol));
        snapshot_via(&sock, h);
        let c = &btm_tests::agent_status(&sock)["compaction"];
        assert!(c.is_object(), "the compaction ended while held open: {c}");
    }
    let agent_log = std::fs::read_to_string(log.with_extension("agent.log")).unwrap();
    assert!(
        !agent_log.contains("compacted the log"),
        "committed while held open:\n{agent_log}"
    );
    // Released: it commits between requests, taking in the heights cut meanwhile.
    std::fs::write(&gate, b"").unwrap();
    let agent_log = btm_tests::wait_agent_log(&log, "compacted the log", 1);
    let line = agent_log
        .lines()
        .find(|l| l.contains("compacted the log"))
        .unwrap();
    println!("compaction started after height {started_at}: {line}");
    assert!(!line.contains("dropped_records=0"), "{line}");
    for _ in 0..2 {
        h += 1;
        write_height(&vol, h);
        states.insert(h, digest(&vol));
        snapshot_via(&sock, h);
    }
    btm_tests::wait_compaction_idle(&sock);
    // `status` says how it ended (the scale benchmark reads this to tell a failure apart).
    let last = &btm_tests::agent_status(&sock)["last_compaction"];
    assert_eq!(last["result"], "compacted", "{last}");
    assert!(
        last["bytes_after"].as_u64() < last["bytes_before"].as_u64(),
        "{last}"
    );
    agent.terminate();

    let kept = btm_tests::log_heights(&log);
    assert_eq!(kept.last(), Some(&h));
    assert!(kept.len() <= 4 + 1, "retention kept {kept:?}");
    let out = Command::new(agent_bin())
        .args(["verify", "--log"])
        .arg(&log)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    replays_exactly(&log, work.path(), &kept, &states);
}

/// A log whose filesystem has no room for a compaction's new segments: the agent refuses to
/// start it, says so in `status` (not as a compaction done), keeps cutting, and loses nothing.
#[test]
fn a_compaction_without_room_is_refused_and_reported() {
    if !can_run("compact_beside_cuts") {
        return;
    }
    let fs = LoopFs::new("ext4", 256).unwrap();
    let logfs = LoopFs::new("ext4", 48).unwrap();
    let vol = fs.mnt.clone();
    let work = workdir("btm-compact-full-");
    let log = logfs.mnt.join("log");
    let sock = work.path().join("btm.sock");
    const HEIGHT: u64 = 2 << 20;
    // Chosen from the free space measured: the compaction must be wanted when about 16 MiB
    // are left, less than the 16 MiB margin plus the two kept heights it would rewrite.
    let st = nix::sys::statvfs::statvfs(&logfs.mnt).unwrap();
    let free0 = st.blocks_available() as u64 * st.fragment_size() as u64;
    let min_dropped = free0.saturating_sub((16 << 20) + 2 * HEIGHT);
    assert!(
        min_dropped > 4 * HEIGHT,
        "the log filesystem has {free0} B free"
    );
    let min_s = min_dropped.to_string();
    let mut agent = start_agent_env(
        &vol,
        &log,
        &sock,
        &["--cap", "2", "--compact-min-bytes", &min_s],
        &[],
    );
    let mut states = std::collections::BTreeMap::new();
    let write = |h: u64| {
        let mut rng = btm_testkit::Rng(h * 31);
        std::fs::write(vol.join("state"), rng.bytes(HEIGHT as usize)).unwrap();
    };
    let mut h = 0;
    let last = loop {
        h += 1;
        assert!(
            h * HEIGHT < free0,
            "no compaction tried after {h} heights: {}",
            btm_tests::agent_status(&sock)
        );
        write(h);
        states.insert(h, digest(&vol));
        snapshot_via(&sock, h);
        let t0 = std::time::Instant::now();
        while !btm_tests::agent_status(&sock)["compaction"].is_null() && t0.elapsed().as_secs() < 30
        {
            std::thread::sleep(std::time::Duration::from_millis(100));
        }
        let v = btm_tests::agent_status(&sock)["last_compaction"].clone();
        if !v.is_null() {
            break v;
        }
    };
    println!("after height {h}: {last}");
    assert_eq!(last["result"], "failed", "{last}");
    let err = last["error"].as_str().unwrap();
    assert!(err.contains("free space there"), "{err}");
    assert!(
        !log.join("compact.new").exists(),
        "its new segments were left"
    );
    // Cuts go on after the refusal, in the room that is left.
    for _ in 0..2 {
        h += 1;
        write(h);
        states.insert(h, digest(&vol));
        snapshot_via(&sock, h);
    }
    agent.terminate();
    let kept = btm_tests::log_heights(&log);
    assert_eq!(kept.last(), Some(&h));
    replays_exactly(&log, work.path(), &kept, &states);
}
