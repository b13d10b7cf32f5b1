//! Offsite retention of its own and pins through the real agent (issue 18): `run --cap 3
//! --remote-cap 8` on a loop-mounted ext4 volume ships each height to a `file://` store; a
//! height pinned with `btm-agent pin` while the agent runs survives local retention and
//! compaction, heights the log dropped stay restorable offsite after a prune with no grace, and
//! a rollback over the pin is refused through the agent's socket.
mod offsite_support;

use std::path::Path;
use std::time::{Duration, Instant};

use btm_agent::treehash::hash_tree;
use btm_tests::{LoopFs, Rng, can_run, scratch, snapshot_via, start_agent};
use offsite_support::{Cli, mutate};

/// Heights in a `list --json` answer, and those marked pinned.
fn heights(v: &serde_json::Value) -> (Vec<u64>, Vec<u64>) {
    let all = v.as_array().unwrap();
    let h = |x: &serde_json::Value| x["height"].as_u64().unwrap();
    (
        all.iter().map(h).collect(),
        (all.iter())
            .filter(|x| x["pinned"] == true)
            .map(h)
            .collect(),
    )
}

#[test]
fn agent_keeps_dropped_heights_offsite_and_a_pinned_height_everywhere() {
    if !can_run("offsite_pins") {
        return;
    }
    let fs = LoopFs::new("ext4", 256).unwrap();
    let work = tempfile::Builder::new()
        .prefix("btm-offsite-pins-")
        .tempdir_in(scratch())
        .unwrap();
    let cli = Cli { env: vec![] };
    let remote = format!("file://{}", work.path().join("store").display());
    let log = work.path().join("log");
    let log_s = log.to_str().unwrap();
    let sock = work.path().join("s.sock");
    let mut agent = start_agent(
        &fs.mnt,
        &log,
        &sock,
        &[
            "--remote",
            &remote,
            "--remote-name",
            "node1",
            "--cap",
            "3",
            "--remote-cap",
            "8",
            "--compact-min-bytes",
            "0",
        ],
    );
    // The agent compacts after cuts; readers wait for it.
    let list = |args: &[&str]| -> serde_json::Value {
        loop {
            let mut a = vec!["list"];
            a.extend_from_slice(args);
            a.push("--json");
            match cli.run(&a) {
                Ok(o) => return serde_json::from_str(&o).unwrap(),
                Err(e) if e.contains("being compacted") => {
                    std::thread::sleep(Duration::from_millis(100))
                }
                Err(e) => panic!("list: {e}"),
            }
        }
    };
    // Each height is waited for offsite before the next, so every height reaches the remote.
    let shipped = |h: u64| {
        let t0 = Instant::now();
        while heights(&list(&["--remote", &remote])).0.last() != Some(&h) {
            assert!(
                t0.elapsed() < Duration::from_secs(60),
                "height {h} never shipped"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    };
    let mut rng = Rng(0x0ff5_17e5);
    let mut trees = std::collections::BTreeMap::new();
    for h in 1..=12u64 {
        mutate(&fs.mnt, h, &mut rng);
        trees.insert(h, hash_tree(&fs.mnt).unwrap());
        snapshot_via(&sock, h);
        shipped(h);
        if h == 4 {
            let out = cli.run(&["pin", "4", "--log", log_s]).unwrap();
            assert!(out.contains("pinned height 4"), "{out}");
        }
    }
    // A height local retention removed cannot be pinned; the error says so (exit 67).
    let e = cli.run(&["pin", "5", "--log", log_s]).unwrap_err();
    assert!(e.contains("removed from the log"), "{e}");

    let (local, local_pins) = heights(&list(&["--log", log_s]));
    assert_eq!(local, vec![4, 10, 11, 12], "cap 3 plus the pin");
    assert_eq!(local_pins, vec![4]);
    let (offsite, offsite_pins) = heights(&list(&["--remote", &remote]));
    assert_eq!(
        offsite,
        (4..=12).collect::<Vec<_>>(),
        "remote cap 8 plus the pin"
    );
    assert_eq!(offsite_pins, vec![4]);

    // A rollback over a pin is refused by the agent, and nothing changes.
    cli.run(&["pin", "11", "--log", log_s]).unwrap();
    // The pin reaches the remote without waiting for another height: the agent's shipping
    // thread notices the pins file changed.
    let shipped = (0..60).any(|_| {
        std::thread::sleep(std::time::Duration::from_millis(500));
        heights(&list(&["--remote", &remote])).1 == vec![4, 11]
    });
    assert!(shipped, "pin 11 did not reach the remote within 30 s");
    let e = cli
        .run(&[
            "rollback",
            "-p",
            fs.mnt.to_str().unwrap(),
            "--log",
            log_s,
            "--to",
            "10",
            "--socket",
            sock.to_str().unwrap(),
        ])
        .unwrap_err();
    assert!(
        e.contains("pinned height 11") && e.contains("btm-agent unpin 11"),
        "{e}"
    );
    let out = cli.run(&["unpin", "11", "--log", log_s]).unwrap();
    assert!(out.contains("unpinned height 11"), "{out}");
    assert_eq!(agent.terminate().code(), Some(0));
    assert_eq!(heights(&list(&["--log", log_s])).0, vec![4, 10, 11, 12]);

    // Heights 5 to 9 exist only offsite now, and restore exactly after a prune with no grace.
    cli.run(&["prune", "--remote", &remote, "--grace", "0"])
        .unwrap();
    for h in [4, 5, 7, 9, 12] {
        let into = work.path().join(format!("restored-{h}"));
        cli.replay(&remote, h, &into).unwrap();
        assert_eq!(hash_tree(&into).unwrap(), trees[&h], "height {h}");
    }
    assert!(Path::new(&log).join("pins").is_file());
}
