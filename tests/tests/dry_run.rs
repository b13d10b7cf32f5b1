//! `rollback --dry-run`, `compact --dry-run` and `push --dry-run` through the real binary: they
//! say what would be done (target, heights removed, bytes) and leave every file of the log (and
//! of the remote) byte-identical; the real compaction and push then do what the dry run said.
//! And BTM's `-K N`, which keeps the newest N heights.
use std::{path::Path, process::Command};

use btm_agent::log::{CutRecord, Entry, ExtentBytes, ExtentData, Log, NsOp};
use btm_tests::{agent_bin, tree_digest};

fn agent(args: &[&str]) -> std::process::Output {
    Command::new(agent_bin())
        .env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .args(args)
        .output()
        .unwrap()
}

fn ok(args: &[&str]) -> String {
    let o = agent(args);
    let (out, err) = (
        String::from_utf8_lossy(&o.stdout).into_owned(),
        String::from_utf8_lossy(&o.stderr),
    );
    assert!(o.status.success(), "{args:?}: {out}{err}");
    out
}

fn json(args: &[&str]) -> serde_json::Value {
    serde_json::from_str(&ok(args)).unwrap()
}

fn u64s(v: &serde_json::Value) -> Vec<u64> {
    v.as_array()
        .unwrap_or_else(|| panic!("not a list: {v}"))
        .iter()
        .map(|x| x.as_u64().unwrap())
        .collect()
}

/// [`build_log_with_a_dropped_height`] in a child process: this process never holds the
/// log's lock, which compaction and -K take (see `btm_tests::run_in_child`).
fn log_with_a_dropped_height(dir: &Path) {
    btm_tests::run_in_child(
        "fixture_log_with_a_dropped_height",
        &[("BTM_FIXTURE_LOG", dir)],
    );
}

#[test]
#[ignore = "a fixture: log_with_a_dropped_height runs it in a child process"]
fn fixture_log_with_a_dropped_height() {
    if let Some(dir) = std::env::var_os("BTM_FIXTURE_LOG") {
        build_log_with_a_dropped_height(Path::new(&dir));
    }
}

/// Heights 1..=6, each rewriting a file with its own 64 KiB; height 2 removed by retention.
fn build_log_with_a_dropped_height(dir: &Path) {
    let mut log = Log::open_append(dir).unwrap();
    for h in 1..=6u64 {
        log.append(CutRecord {
            height: h,
            time_unix_ms: h,
            ops: vec![
                NsOp::Put {
                    path: format!("f{}", h % 2).into_bytes(),
                    entry: Entry::File {
                        id: h % 2 + 1,
                        mode: 0o644,
                        uid: 0,
                        gid: 0,
                    },
                },
                NsOp::SetSize {
                    id: h % 2 + 1,
                    size: 65536,
                },
            ],
            extents: vec![ExtentData {
                id: h % 2 + 1,
                offset: 0,
                bytes: ExtentBytes::Data(
                    (0..65536u32).map(|i| (i * h as u32 % 251) as u8).collect(),
                ),
            }],
        })
        .unwrap();
    }
    log.drop_heights(&[2]).unwrap();
}

#[test]
fn dry_runs_change_nothing_and_compact_does_what_it_said() {
    let dir = tempfile::tempdir().unwrap();
    let logdir = dir.path().join("log");
    log_with_a_dropped_height(&logdir);
    let l = logdir.to_str().unwrap();
    let vol = dir.path().join("volume");
    std::fs::create_dir(&vol).unwrap();
    let v = vol.to_str().unwrap();
    // A reader first (it creates the readers' lock file, as any list or verify does).
    ok(&["verify", "--log", l]);
    let listed = json(&["list", "--log", l, "--json"]);
    let stored = |h: u64| {
        listed
            .as_array()
            .unwrap()
            .iter()
            .find(|i| i["height"] == h)
            .unwrap()["stored_bytes"]
            .as_u64()
            .unwrap()
    };
    let before = tree_digest(&logdir);
    let segments_bytes = |d: &Path| -> u64 {
        std::fs::read_dir(d)
            .unwrap()
            .map(|e| e.unwrap())
            .filter(|e| e.file_name().to_string_lossy().starts_with("seg-"))
            .map(|e| e.metadata().unwrap().len())
            .sum()
    };
    let seg_before = segments_bytes(&logdir);

    let p = json(&[
        "rollback",
        "--dry-run",
        "--json",
        "--volume",
        v,
        "--log",
        l,
        "--to",
        "3",
    ]);
    assert_eq!(
        (p["v"].as_u64(), p["dry_run"].as_bool()),
        (Some(1), Some(true)),
        "{p}"
    );
    assert_eq!(p["height"], 3, "{p}");
    assert_eq!(u64s(&p["removed"]), [4, 5, 6], "{p}");
    assert_eq!(p["removed_bytes"], stored(4) + stored(5) + stored(6), "{p}");
    assert!(p.get("removed_dropped").is_none(), "{p}");
    // Below the dropped height: its record goes too, and is said.
    let p = json(&[
        "rollback",
        "--dry-run",
        "--json",
        "--volume",
        v,
        "--log",
        l,
        "--to",
        "2",
    ]);
    assert_eq!(p["height"], 1, "newest at or below 2 (2 was removed): {p}");
    assert_eq!(u64s(&p["removed"]), [3, 4, 5, 6], "{p}");
    assert_eq!(u64s(&p["removed_dropped"]), [2], "{p}");
    assert!(p.get("preserve").is_none(), "{p}");
    // The bytes are every record above height 1, the dropped height's too: the whole segment
    // but its 32-byte header and record 1.
    assert_eq!(
        std::fs::read_dir(&logdir)
            .unwrap()
            .filter(|e| e
                .as_ref()
                .unwrap()
                .file_name()
                .to_string_lossy()
                .starts_with("seg-"))
            .count(),
        1
    );
    assert_eq!(p["removed_bytes"], seg_before - 32 - stored(1), "{p}");
    let text = ok(&[
        "rollback",
        "--dry-run",
        "--volume",
        v,
        "--log",
        l,
        "--to",
        "3",
        "--preserve-preset",
        "cometbft",
    ]);
    assert!(
        text.contains("data/priv_validator_state.json") && text.contains("left as they are"),
        "{text}"
    );
    assert!(
        text.contains("would roll")
            && text.contains("would remove 3 newer heights")
            && text.contains("nothing changed"),
        "{text}"
    );
    // An exact height that is not there fails as a real rollback would (67).
    let o = agent(&[
        "rollback",
        "--dry-run",
        "--volume",
        v,
        "--log",
        l,
        "--to",
        "2",
        "--exact",
    ]);
    assert_eq!(o.status.code(), Some(67));

    let c = json(&["compact", "--dry-run", "--json", "--log", l, "--cap", "3"]);
    assert_eq!(c["dry_run"], true, "{c}");
    let by_cap = u64s(&c["removed_by_cap"]);
    assert_eq!(by_cap.len(), 2, "5 kept heights, cap 3: {c}");
    let folded = u64s(&c["folded"]);
    assert!(
        folded.contains(&2) && by_cap.iter().all(|h| folded.contains(h)),
        "{c}"
    );
    assert_eq!(c["kept"], 3, "{c}");
    assert_eq!(c["bytes_before"], seg_before, "{c}");
    let at_most = c["bytes_freed_at_most"].as_u64().unwrap();
    assert!(
        at_most >= by_cap.iter().map(|&h| stored(h)).sum::<u64>(),
        "{c}"
    );
    let text = ok(&["compact", "--dry-run", "--log", l]);
    assert!(
        text.contains("would fold 1 removed heights") && text.contains("nothing changed"),
        "{text}"
    );
    // --json is for the dry run only.
    assert_eq!(
        agent(&["compact", "--json", "--log", l]).status.code(),
        Some(2)
    );

    assert_eq!(tree_digest(&logdir), before, "a dry run changed the log");

    // The real compaction keeps exactly the heights the dry run said, and returns no more
    // than it said.
    ok(&["compact", "--log", l, "--cap", "3"]);
    let kept: Vec<u64> = json(&["list", "--log", l, "--json"])
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["height"].as_u64().unwrap())
        .collect();
    let expect: Vec<u64> = (1..=6).filter(|h| !folded.contains(h)).collect();
    assert_eq!(kept, expect);
    let after = segments_bytes(&logdir);
    assert!(after < seg_before, "compaction freed nothing");
    assert!(
        seg_before - after <= at_most,
        "freed {} > {at_most}",
        seg_before - after
    );
}

/// `push --dry-run` writes nothing, offsite or in the log (not even the log's offsite
/// identity), and predicts exactly what the real push then does.
#[test]
fn push_dry_run_predicts_the_push() {
    let dir = tempfile::tempdir().unwrap();
    let logdir = dir.path().join("log");
    log_with_a_dropped_height(&logdir);
    let l = logdir.to_str().unwrap();
    let store = dir.path().join("remote");
    std::fs::create_dir(&store).unwrap();
    let remote = format!("file://{}", store.display());
    ok(&["verify", "--log", l]);
    let before = tree_digest(&logdir);
    let empty = tree_digest(&store);

    let push_plan = || {
        json(&[
            "push",
            "--dry-run",
            "--json",
            "--log",
            l,
            "--remote",
            &remote,
        ])
    };
    let plan = push_plan();
    assert_eq!(plan["dry_run"], true, "{plan}");
    assert_eq!(plan["records_uploaded"], 6, "{plan}");
    assert_eq!(plan["records_present"], 0, "{plan}");
    assert_eq!(plan["pointers_written"], 5, "heights 1, 3..=6: {plan}");
    assert!(plan["objects_uploaded"].as_u64().unwrap() > 0, "{plan}");
    let text = ok(&["push", "--dry-run", "--log", l, "--remote", &remote]);
    assert!(
        text.contains("would upload 6 records") && text.contains("nothing changed"),
        "{text}"
    );
    assert_eq!(tree_digest(&store), empty, "a dry run wrote offsite");
    assert_eq!(tree_digest(&logdir), before, "a dry run changed the log");
    assert!(!logdir.join("remote-id").exists());

    // The push does what its dry run said, for each of `keys`. Bytes: a new store is layout 4,
    // whose record objects are compressed with pack names the dry run cannot know (hashes of
    // the packs), and a payload two records share is packed once: within a few bytes a record
    // (8 bytes over 6 records here; exact in layout 3).
    let push_as_planned = |plan: &serde_json::Value, keys: &[&str]| {
        let done = json(&["push", "--json", "--log", l, "--remote", &remote]);
        for k in keys {
            if *k == "bytes_uploaded" {
                let (p, d) = (plan[k].as_u64().unwrap(), done[k].as_u64().unwrap());
                let slack = 16 * done["records_uploaded"].as_u64().unwrap() + 16;
                assert!(p.abs_diff(d) <= slack, "{k}: planned {plan}, done {done}");
                continue;
            }
            assert_eq!(plan[k], done[k], "{k}: planned {plan}, done {done}");
        }
    };
    push_as_planned(
        &plan,
        &[
            "records_uploaded",
            "records_present",
            "objects_uploaded",
            "objects_present",
            "bytes_uploaded",
            "pointers_written",
            "pointers_removed",
            "newest_height",
        ],
    );
    // Once pushed, nothing is left to do.
    let again = push_plan();
    assert_eq!(
        (
            again["records_uploaded"].as_u64(),
            again["objects_uploaded"].as_u64()
        ),
        (Some(0), Some(0)),
        "{again}"
    );
    assert_eq!(again["records_present"], 6, "{again}");
    assert_eq!(again["pointers_written"], 0, "{again}");

    // After a compaction the rewritten records' payloads are in the remote's packs already:
    // the dry run finds them there as the push does, and still predicts it exactly.
    ok(&["--log", l, "-K", "3"]);
    let plan = push_plan();
    assert!(plan["records_uploaded"].as_u64().unwrap() > 0, "{plan}");
    assert!(plan["objects_present"].as_u64().unwrap() > 0, "{plan}");
    push_as_planned(
        &plan,
        &[
            "records_uploaded",
            "records_present",
            "objects_uploaded",
            "objects_present",
            "packs_uploaded",
            "bytes_uploaded",
            "pointers_written",
            "pointers_removed",
        ],
    );
}

/// BTM's `-K N` keeps the newest N heights of a log and returns the others' space at once;
/// `compact --dry-run --cap N` said beforehand what would go.
#[test]
fn btm_k_keeps_the_newest_heights() {
    let dir = tempfile::tempdir().unwrap();
    let logdir = dir.path().join("log");
    log_with_a_dropped_height(&logdir);
    let l = logdir.to_str().unwrap();
    let plan = json(&["compact", "--dry-run", "--json", "--log", l, "--cap", "2"]);
    assert_eq!(u64s(&plan["removed_by_cap"]), [1, 3, 4], "{plan}");
    let o = agent(&["--log", l, "-K", "0"]);
    assert_eq!(o.status.code(), Some(2), "-K 0 is -C's job");
    let text = ok(&["--log", l, "-K", "2"]);
    assert!(text.contains("compacted"), "{text}");
    let left: Vec<u64> = json(&["list", "--log", l, "--json"])
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["height"].as_u64().unwrap())
        .collect();
    assert_eq!(left, [5, 6]);
    ok(&["verify", "--log", l]);
    // Compacted already: nothing is left to fold.
    let again = json(&["compact", "--dry-run", "--json", "--log", l]);
    assert_eq!(again["folded"], serde_json::json!([]), "{again}");
}

/// In native mode (btrfs snapshots kept by a `run --mode btrfs` agent): `rollback --dry-run`
/// names the target and the snapshots that would go, touching neither the volume nor them;
/// `-K 1` then deletes all but the newest.
#[test]
fn native_dry_run_and_k() {
    use btm_tests::{LoopFs, Running, can_run, have_tool, sh, skip, snapshot_via, wait_listening};
    if !can_run("native rollback --dry-run and -K") {
        return;
    }
    if !have_tool("btrfs") {
        skip(
            "native rollback --dry-run and -K",
            "btrfs-progs is not installed",
        );
        return;
    }
    let fs = LoopFs::new("btrfs", 300).unwrap();
    let vol = fs.path("chain");
    sh("btrfs", &["subvolume", "create", vol.to_str().unwrap()]).unwrap();
    let sock = fs.dir.path().join("btm.sock");
    let (v, s) = (vol.to_str().unwrap(), sock.to_str().unwrap());
    let mut a = Running::new(
        Command::new(agent_bin())
            .env_clear()
            .env("PATH", std::env::var_os("PATH").unwrap_or_default())
            .args(["run", "--mode", "btrfs", "--volume", v, "--socket", s])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap(),
    );
    wait_listening(&mut a, &sock, String::new);
    for (h, content) in [(1, "one"), (2, "two"), (3, "three")] {
        std::fs::write(vol.join("f"), content).unwrap();
        snapshot_via(&sock, h);
    }
    a.terminate();
    let heights = || -> Vec<u64> {
        json(&["list", "-p", v, "--json"])
            .as_array()
            .unwrap()
            .iter()
            .map(|i| i["height"].as_u64().unwrap())
            .collect()
    };
    assert_eq!(heights(), [1, 2, 3]);

    let p = json(&[
        "rollback",
        "--dry-run",
        "--json",
        "--mode",
        "btrfs",
        "-p",
        v,
        "--to",
        "1",
        "--socket",
        s,
    ]);
    assert_eq!(p["height"], 1, "{p}");
    assert_eq!(p["mode"], "btrfs", "{p}");
    assert_eq!(u64s(&p["removed"]), [2, 3], "{p}");
    assert!(
        p.get("log").is_none() && p.get("removed_bytes").is_none(),
        "{p}"
    );
    assert_eq!(std::fs::read_to_string(vol.join("f")).unwrap(), "three");
    assert_eq!(heights(), [1, 2, 3], "a dry run removed snapshots");

    let text = ok(&["-p", v, "-K", "1"]);
    assert!(text.contains("removed 2 snapshots"), "{text}");
    assert_eq!(heights(), [3]);
    assert_eq!(std::fs::read_to_string(vol.join("f")).unwrap(), "three");
}
