//! Retention in the log: 60 heights of random changes, fade retention (cap 10, itv 2) drops
//! most of them, compaction folds the dropped records into the next kept ones. Every kept height
//! must replay exactly as before, dropped heights are refused, the log shrinks and verifies, and
//! `kill -9` at any moment of a compaction leaves a log that opens, verifies and replays.

// The log model and tree checks live with the log crate's own tests.
#[path = "../../btm-log/tests/log_support.rs"]
mod support;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use btm_agent::log::{Log, LogOptions, ReplayOptions};
use btm_agent::retention::{Algo, Policy};
use support::{Model, Rng, assert_tree, is_root, skip, tree_digest};

const HEIGHTS: u64 = 60;

fn ropts() -> ReplayOptions {
    ReplayOptions {
        progress: false,
        sync: false,
        ..Default::default()
    }
}

fn lopts() -> LogOptions {
    LogOptions {
        segment_size: 256 << 10,
        ..Default::default()
    }
}

fn policy() -> Policy {
    Policy::new(2, 10, Algo::Fade).unwrap()
}

/// Builds the log; returns the model after each height.
fn build(dir: &Path) -> BTreeMap<u64, Model> {
    let mut log = Log::open_append_with(dir, lopts()).unwrap();
    let mut rng = Rng(4242);
    let mut m = Model::new();
    let mut out = BTreeMap::new();
    for h in 1..=HEIGHTS {
        m.random_changes(&mut rng);
        log.append(m.cut(h)).unwrap();
        out.insert(h, m.clone());
    }
    out
}

/// Bytes the directory's files occupy on disk (allocated blocks, so freed space shows).
fn disk_bytes(dir: &Path) -> u64 {
    use std::os::unix::fs::MetadataExt;
    std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().metadata().unwrap())
        .filter(|m| m.is_file())
        .map(|m| m.blocks() * 512)
        .sum()
}

fn replay_digest(log: &Log, h: u64, scratch: &Path) -> String {
    let into = scratch.join(format!("r{h}"));
    log.replay(h, &into, &ropts()).unwrap();
    let d = tree_digest(&into);
    support::remove_tree(&into);
    d
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        if e.file_type().unwrap().is_file() {
            std::fs::copy(e.path(), to.join(e.file_name())).unwrap();
        }
    }
}

#[test]
fn compaction_keeps_every_kept_height_exact() {
    if !is_root() {
        // Replay restores ownership, which the digests compare.
        return skip("log_compact needs root (replay restores ownership)");
    }
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("log");
    let models = build(&dir);
    let scratch = tmp.path().join("replays");
    let before: BTreeMap<u64, String> = {
        let log = Log::open_read_with(&dir, lopts()).unwrap();
        (1..=HEIGHTS)
            .map(|h| (h, replay_digest(&log, h, &scratch)))
            .collect()
    };

    // Retention as the agent applies it: after every cut, over the heights kept so far.
    let mut keep: Vec<u64> = Vec::new();
    for h in 1..=HEIGHTS {
        keep.push(h);
        let del = policy().to_delete(&keep);
        keep.retain(|k| !del.contains(k));
    }
    let drop: Vec<u64> = (1..=HEIGHTS).filter(|h| !keep.contains(h)).collect();
    assert!(
        keep.len() <= 10 && keep.len() > 3 && !drop.is_empty(),
        "{keep:?}"
    );

    let disk_before = disk_bytes(&dir);
    let mut log = Log::open_append_with(&dir, lopts()).unwrap();
    log.drop_heights(&drop).unwrap();
    // Dropped heights vanish at once, before any compaction.
    let listed: Vec<u64> = log.heights().iter().map(|h| h.height).collect();
    assert_eq!(listed, keep);
    // The crash test below starts from here: heights dropped, not yet compacted.
    let pristine = tmp.path().join("pristine");
    copy_dir(&dir, &pristine);
    let (log, rep) = log.compact().unwrap();
    drop_log(log);
    let disk_after = disk_bytes(&dir);
    println!("compaction: {rep:?}; on disk {disk_before} -> {disk_after} bytes; kept {keep:?}");
    assert!(rep.dropped_records > 0 && rep.merged_records > 1, "{rep:?}");
    assert!(rep.bytes_after < rep.bytes_before, "{rep:?}");
    assert!(disk_after < disk_before, "{disk_before} -> {disk_after}");

    let log = Log::open_read_with(&dir, lopts()).unwrap();
    let listed: Vec<u64> = log.heights().iter().map(|h| h.height).collect();
    assert_eq!(listed, keep);
    let v = log.verify().unwrap();
    assert_eq!(
        v.records as usize,
        keep.len() + trailing_dropped(&keep, &drop)
    );
    for &h in &keep {
        assert_eq!(replay_digest(&log, h, &scratch), before[&h], "height {h}");
        let into = scratch.join("model");
        log.replay(h, &into, &ropts()).unwrap();
        assert_tree(&into, &models[&h], &format!("kept height {h}"));
        support::remove_tree(&into);
    }
    for &h in &drop {
        let e = log.replay(h, &scratch.join("x"), &ropts()).unwrap_err();
        assert!(
            e.to_string().contains("removed by retention"),
            "height {h}: {e}"
        );
    }
    assert!(log.resolve(Some(drop[0]), true).is_err());
    drop_log(log);

    // Appending after compaction continues the chain.
    let mut log = Log::open_append_with(&dir, lopts()).unwrap();
    let mut m = models[&HEIGHTS].clone();
    m.random_changes(&mut Rng(7));
    log.append(m.cut(HEIGHTS + 2)).unwrap();
    log.verify().unwrap();
    drop_log(log);

    crash_anywhere(&pristine, tmp.path(), &before, &keep);
}

/// Dropped records after the last kept one stay (nothing to fold them into).
fn trailing_dropped(keep: &[u64], drop: &[u64]) -> usize {
    let last = *keep.last().unwrap();
    drop.iter().filter(|&&h| h > last).count()
}

fn drop_log(_: Log) {}

/// `btm-agent compact` killed with SIGKILL after a growing delay: the log must always open,
/// verify and replay every height it lists exactly, and the next appender finishes or undoes
/// the compaction.
fn crash_anywhere(pristine: &Path, tmp: &Path, before: &BTreeMap<u64, String>, keep: &[u64]) {
    let bin = PathBuf::from(env!("CARGO_BIN_EXE_btm-agent"));
    let scratch = tmp.join("crash-replays");
    let mut outcomes = BTreeMap::new();
    // The helper sleeps 30 ms after each record written and each step of the swap, so the
    // kills land in every stage: before, while writing aside, after the commit point, done.
    for (i, delay_ms) in (0..=800u64).step_by(20).enumerate() {
        let dir = tmp.join(format!("crash{i}"));
        copy_dir(pristine, &dir);
        let mut child = Command::new(&bin)
            .args(["compact", "--log"])
            .arg(&dir)
            .env("BTM_TEST_COMPACT_DELAY_MS", "30")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        std::thread::sleep(Duration::from_millis(delay_ms));
        let _ = child.kill();
        let status = child.wait().unwrap();
        let stage = if dir.join("compact.ready").exists() {
            "committed"
        } else if dir.join("compact.new").exists() {
            "writing"
        } else if status.success() {
            "done"
        } else {
            "before"
        };
        *outcomes.entry(stage).or_insert(0) += 1;

        // A reader sees a whole log (old or new) without repairing anything.
        let log = Log::open_read_with(&dir, lopts()).unwrap();
        log.verify().unwrap();
        let listed: Vec<u64> = log.heights().iter().map(|h| h.height).collect();
        for &h in &listed {
            assert_eq!(
                replay_digest(&log, h, &scratch),
                before[&h],
                "crash {i}, height {h}"
            );
        }
        drop_log(log);
        // The appender finishes (or discards) the interrupted compaction; compacting again
        // reaches the same kept set.
        let log = Log::open_append_with(&dir, lopts()).unwrap();
        assert!(!dir.join("compact.new").exists() && !dir.join("compact.ready").exists());
        log.verify().unwrap();
        let (log, _) = log.compact().unwrap();
        let hs: Vec<u64> = log.heights().iter().map(|h| h.height).collect();
        assert_eq!(hs, keep, "crash {i}");
        for &h in keep {
            assert_eq!(
                replay_digest(&log, h, &scratch),
                before[&h],
                "crash {i}, height {h}"
            );
        }
        log.verify().unwrap();
    }
    println!("kill -9 outcomes: {outcomes:?}");
    for stage in ["writing", "committed", "done"] {
        assert!(
            outcomes.contains_key(stage),
            "no kill landed in {stage}: {outcomes:?}"
        );
    }
}

/// Many seeds and policies, compacting in rounds while heights keep arriving (a compacted log is
/// compacted again): after each round every kept height replays to its model tree, the chain
/// verifies, and nothing but dropped heights disappeared.
#[test]
fn compaction_rounds_random_policies() {
    if !is_root() {
        return skip("log_compact needs root (replay restores ownership)");
    }
    for seed in 1..=6u64 {
        let mut rng = Rng(seed * 7919);
        let algo = if seed % 2 == 0 {
            Algo::Fair
        } else {
            Algo::Fade
        };
        let policy = Policy::new(1 + rng.below(3), 3 + rng.below(10) as usize, algo).unwrap();
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("log");
        let opts = LogOptions {
            segment_size: 64 << 10,
            ..Default::default()
        };
        let mut log = Log::open_append_with(&dir, opts.clone()).unwrap();
        let mut m = Model::new();
        let mut models = BTreeMap::new();
        let mut kept: Vec<u64> = Vec::new();
        for round in 0..3 {
            for h in round * 15 + 1..=round * 15 + 15 {
                m.random_changes(&mut rng);
                log.append(m.cut(h)).unwrap();
                models.insert(h, m.clone());
                kept.push(h);
                let del = policy.to_delete(&kept);
                log.drop_heights(&del).unwrap();
                kept.retain(|k| !del.contains(k));
            }
            let (l, rep) = log.compact().unwrap();
            log = l;
            let listed: Vec<u64> = log.heights().iter().map(|h| h.height).collect();
            assert_eq!(listed, kept, "seed {seed} round {round} {policy:?}");
            log.verify()
                .unwrap_or_else(|e| panic!("seed {seed} round {round}: {e}"));
            for &h in &kept {
                let into = tmp.path().join(format!("r{round}-{h}"));
                log.replay(h, &into, &ropts()).unwrap();
                assert_tree(
                    &into,
                    &models[&h],
                    &format!("seed {seed} round {round} height {h}"),
                );
                support::remove_tree(&into);
            }
            println!("seed {seed} round {round} {policy:?}: kept {kept:?}, {rep:?}");
        }
    }
}

/// Dropping a run in the middle rewrites only from the segment holding it: earlier segments
/// keep their bytes (and the payloads later records borrow from them keep their locations).
#[test]
fn compaction_leaves_earlier_segments_alone() {
    if !is_root() {
        return skip("log_compact needs root (replay restores ownership)");
    }
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("log");
    let opts = LogOptions {
        segment_size: 64 << 10,
        ..Default::default()
    };
    let mut log = Log::open_append_with(&dir, opts.clone()).unwrap();
    let mut rng = Rng(31337);
    let mut m = Model::new();
    let mut models = BTreeMap::new();
    for h in 1..=40 {
        m.random_changes(&mut rng);
        log.append(m.cut(h)).unwrap();
        models.insert(h, m.clone());
    }
    let segs_before = log.segment_paths();
    let drop: Vec<u64> = (26..=31).chain([35, 36]).collect();
    log.drop_heights(&drop).unwrap();
    let (log, rep) = log.compact().unwrap();
    let f = rep.from_segment.unwrap();
    assert!(f > 1, "{rep:?}");
    let old = segs_before[..(f - 1) as usize]
        .iter()
        .map(|p| std::fs::read(p).unwrap())
        .collect::<Vec<_>>();
    let new = log.segment_paths()[..(f - 1) as usize]
        .iter()
        .map(|p| std::fs::read(p).unwrap())
        .collect::<Vec<_>>();
    assert!(old == new, "segments before {f} changed");
    assert!(rep.bytes_after < rep.bytes_before, "{rep:?}");
    log.verify().unwrap();
    for h in (1..=40).filter(|h| !drop.contains(h)) {
        let into = tmp.path().join(format!("r{h}"));
        log.replay(h, &into, &ropts()).unwrap();
        assert_tree(&into, &models[&h], &format!("height {h}"));
        support::remove_tree(&into);
    }
    println!("middle run: {rep:?}");
}
