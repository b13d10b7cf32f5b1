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
    for k in kept {
        let into = work.path().join(format!("r{k}"));
        let l = btm_agent::log::Log::open_read(&log).unwrap();
        let opts = btm_agent::log::ReplayOptions {
            progress: false,
            sync: false,
            ..Default::default()
        };
        l.replay(k, &into, &opts).unwrap();
        assert_eq!(digest(&into), states[&k], "height {k}");
        std::fs::remove_dir_all(&into).unwrap();
    }
}
