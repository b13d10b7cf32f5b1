//! Retention in eBPF mode, end to end through the CLI: `run --mode ebpf --cap 3` drops old
//! heights after each cut (gone from `list`, refused by `replay`, rollback still exact), and
//! `compact` folds them out of the log: smaller, verified, every kept height still exact.
use std::{path::Path, process::Command};

use btm_tests::{LoopFs, agent_bin, can_run, scratch, start_agent};

fn cli(args: &[&str]) -> Result<String, String> {
    let out = Command::new(agent_bin())
        .args(args)
        .env_remove("BTM_LOG_DIR")
        .output()
        .unwrap();
    btm_tests::outcome(out)
}

/// The tree as the oracle sees it: paths, kinds, modes, sizes, contents.
fn digest(dir: &Path) -> btm_agent::treehash::TreeHash {
    btm_agent::treehash::hash_tree(dir).unwrap()
}

fn heights(log: &str) -> Vec<u64> {
    let out = cli(&["list", "--log", log, "--json"]).unwrap();
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    v.as_array()
        .unwrap()
        .iter()
        .map(|e| e["height"].as_u64().unwrap())
        .collect()
}

/// Each `(height, digest)` replays from `log` (into `base/<prefix><height>`) to that digest.
fn replays_match(
    log: &str,
    states: &[(u64, btm_agent::treehash::TreeHash)],
    base: &Path,
    prefix: &str,
    when: &str,
) {
    for (h, d) in states {
        let into = base.join(format!("{prefix}{h}"));
        let to = h.to_string();
        cli(&[
            "replay",
            "--log",
            log,
            "--to",
            &to,
            "--exact",
            "--into",
            into.to_str().unwrap(),
        ])
        .unwrap();
        assert_eq!(&digest(&into), d, "height {h} {when}");
    }
}

#[test]
fn ebpf_retention_and_compaction() {
    if !can_run("modes_ebpf") {
        return;
    }
    let fs = LoopFs::new("ext4", 256).unwrap();
    let vol = fs.mnt.clone();
    let logdir = tempfile::Builder::new()
        .prefix("btm-log-")
        .tempdir_in(scratch())
        .unwrap();
    let log = logdir.path().join("log");
    let log_s = log.to_str().unwrap();
    let socket = logdir.path().join("btm.sock");
    let sock_s = socket.to_str().unwrap();
    let agent = start_agent(&vol, &log, &socket, &["--cap", "3", "--algo", "fair"]);
    let mut states = Vec::new();
    for h in 1..=6u64 {
        // Big, changing content so that dropped heights hold real bytes.
        let big: Vec<u8> = (0..(2u64 << 20))
            .map(|i| (i.wrapping_mul(h * 2654435761) >> 7) as u8)
            .collect();
        std::fs::write(vol.join("state"), &big).unwrap();
        std::fs::write(vol.join(format!("block-{h}")), h.to_le_bytes()).unwrap();
        states.push((h, digest(&vol)));
        cli(&["snapshot", "--height", &h.to_string(), "--socket", sock_s]).unwrap();
    }
    assert_eq!(heights(log_s), vec![4, 5, 6], "fair cap 3");
    let into = logdir.path().join("replay");
    let e = cli(&[
        "replay",
        "--log",
        log_s,
        "--to",
        "2",
        "--exact",
        "--into",
        into.to_str().unwrap(),
    ])
    .unwrap_err();
    assert!(e.contains("removed by retention"), "{e}");
    // Rollback through the agent to a kept height.
    cli(&[
        "rollback",
        "-p",
        vol.to_str().unwrap(),
        "--log",
        log_s,
        "--to",
        "5",
        "--exact",
        "--socket",
        sock_s,
    ])
    .unwrap();
    assert_eq!(digest(&vol), states[4].1, "rollback to 5");
    // `verify --volume` agrees, reading only; a changed byte is named, and nothing written.
    let vol_s = vol.to_str().unwrap();
    let out = cli(&["verify", "--log", log_s, "--volume", vol_s, "--to", "5"]).unwrap();
    assert!(
        out.contains("against height 5") && out.contains("; 0 differences"),
        "{out}"
    );
    let state = std::fs::read(vol.join("state")).unwrap();
    let mut changed = state.clone();
    changed[10] ^= 1;
    std::fs::write(vol.join("state"), &changed).unwrap();
    let e = cli(&["verify", "--log", log_s, "--volume", vol_s, "--to", "5"]).unwrap_err();
    assert!(
        e.contains("in 1 place (first: state: bytes differ at offset 10)"),
        "{e}"
    );
    assert_eq!(std::fs::read(vol.join("state")).unwrap(), changed);
    std::fs::write(vol.join("state"), &state).unwrap();
    // Like `zfs rollback -r`: height 6 left the log so the chain can re-reach it.
    assert_eq!(heights(log_s), vec![4, 5]);
    drop(agent);

    let before = cli(&["verify", "--log", log_s]).unwrap();
    let out = cli(&["compact", "--log", log_s]).unwrap();
    println!("{out}");
    let nums: Vec<u64> = out
        .split(|c: char| !c.is_ascii_digit())
        .filter_map(|w| w.parse().ok())
        .collect();
    // "... N dropped records folded into M, BEFORE -> AFTER bytes (K heights kept)"
    let (b, a) = (nums[nums.len() - 3], nums[nums.len() - 2]);
    assert!(a < b, "compaction did not shrink the log: {out}");
    assert_eq!(heights(log_s), vec![4, 5]);
    cli(&["verify", "--log", log_s]).unwrap();
    replays_match(log_s, &states[3..5], logdir.path(), "r", "after compaction");
    println!("verify before compaction: {before}");

    // Phase 2: the agent compacts by itself (threshold lowered), restarting its tracker; the
    // cuts after that must still be exact.
    let agent = start_agent(
        &vol,
        &log,
        &socket,
        &["--cap", "3", "--algo", "fair", "--compact-min-bytes", "1"],
    );
    let mut states = Vec::new();
    for h in 7..=10u64 {
        std::fs::write(
            vol.join("state"),
            format!("height {h}\n").repeat(1000 * h as usize),
        )
        .unwrap();
        std::fs::write(vol.join(format!("block-{h}")), h.to_le_bytes()).unwrap();
        states.push((h, digest(&vol)));
        cli(&["snapshot", "--height", &h.to_string(), "--socket", sock_s]).unwrap();
    }
    // Compaction is prepared beside the cuts and committed between requests.
    cli(&["snapshot", "--height", "11", "--socket", sock_s]).ok();
    btm_tests::wait_compaction_idle(&socket);
    drop(agent);
    assert_eq!(heights(log_s), vec![9, 10, 11]);
    let v = cli(&["verify", "--log", log_s]).unwrap();
    println!("after in-agent compaction: {v}");
    // Without compaction the log would hold 7 records (4, 5 and 7..=11). A height dropped
    // while a compaction is prepared in the background waits for the next one, which starts
    // only once dropped records weigh enough again: 3 or 4 records remain.
    let records: u64 = v
        .strip_prefix("ok: ")
        .and_then(|r| r.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("unexpected verify output: {v}"));
    assert!(
        (3..=4).contains(&records),
        "dropped records were not compacted: {v}"
    );
    let agent_log = std::fs::read_to_string(log.with_extension("agent.log")).unwrap();
    assert!(agent_log.contains("compacted the log"), "{agent_log}");
    replays_match(
        log_s,
        &states[2..],
        logdir.path(),
        "p2-",
        "after in-agent compaction",
    );
}
