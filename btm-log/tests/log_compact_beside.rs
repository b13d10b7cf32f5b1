//! Compaction prepared on another thread from a view of the log while the log keeps
//! appending (what the agent does: heights keep being cut while it compacts). Every kept
//! height must replay exactly after the commit, heights dropped meanwhile must still be folded
//! by the next compaction, and a rollback or a stop in between must leave the log as it was.

#[path = "log_support.rs"]
mod support;

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::atomic::AtomicBool;

use btm_log::{ExtentBytes, Log, LogError, LogOptions, ReplayOptions};
use support::{Model, Rng, assert_tree, is_root, skip};

fn ropts() -> ReplayOptions {
    ReplayOptions {
        progress: false,
        sync: false,
        ..Default::default()
    }
}

fn lopts() -> LogOptions {
    LogOptions {
        segment_size: 64 << 10,
        ..Default::default()
    }
}

/// Replays every kept height and compares it with its model; the chain must verify.
fn assert_kept(log: &Log, models: &BTreeMap<u64, Model>, kept: &[u64], scratch: &Path, what: &str) {
    let listed: Vec<u64> = log.heights().iter().map(|h| h.height).collect();
    assert_eq!(listed, kept, "{what}");
    log.verify().unwrap_or_else(|e| panic!("{what}: {e}"));
    for &h in kept {
        let into = scratch.join(format!("r-{h}"));
        log.replay(h, &into, &ropts()).unwrap();
        assert_tree(&into, &models[&h], &format!("{what}, height {h}"));
        support::remove_tree(&into);
    }
}

fn put_file(m: &mut Model, path: &[u8], data: &[u8]) {
    let id = m.new_file(path.to_vec(), 0o644, 0, 0);
    m.set_size(id, data.len() as u64);
    m.write(id, 0, ExtentBytes::Data(data.to_vec()));
}

/// 30 heights, most of the first 24 dropped; the compaction is prepared on a thread while
/// 12 more heights are appended (some dropped too, one storing again the bytes that only a
/// dropped record held, so the live log dedups against a payload the compaction frees).
#[test]
fn compaction_prepared_while_heights_are_appended() {
    if !is_root() {
        return skip("log_compact_beside needs root (replay restores ownership)");
    }
    for seed in 1..=4u64 {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("log");
        let mut log = Log::open_append_with(&dir, lopts()).unwrap();
        let mut rng = Rng(seed * 104_729);
        let mut m = Model::new();
        let mut models = BTreeMap::new();
        let mut kept = Vec::new();
        let payload = Rng(seed).bytes(20_000);
        for h in 1..=30 {
            m.random_changes(&mut rng);
            if h == 5 {
                put_file(&mut m, b"special-5", &payload);
            } else if h == 6 && m.nodes.contains_key(&b"special-5"[..]) {
                m.remove(b"special-5");
            }
            log.append(m.cut(h)).unwrap();
            models.insert(h, m.clone());
            kept.push(h);
        }
        let drop: Vec<u64> = (1..=24).filter(|h| h % 4 != 0).collect();
        log.drop_heights(&drop).unwrap();
        kept.retain(|h| !drop.contains(h));

        let view = log.view().unwrap();
        let prep = std::thread::spawn(move || {
            view.prepare_compaction(0, &AtomicBool::new(false))
                .map(|p| p.expect("something to fold"))
        });
        for h in 31..=42 {
            m.random_changes(&mut rng);
            if h == 33 {
                // Height 5's bytes again: the appender finds them in a dropped record.
                put_file(&mut m, b"special-33", &payload);
            }
            log.append(m.cut(h)).unwrap();
            models.insert(h, m.clone());
            kept.push(h);
            if h % 3 == 0 {
                log.drop_heights(&[h - 1]).unwrap();
                kept.retain(|&k| k != h - 1);
            }
        }
        // The condition under test: height 33 stores no copy of its bytes, it borrows the
        // payload of dropped height 5, which the prepared compaction does not keep.
        let h33 = log.record_view(32).unwrap();
        assert_eq!(h33.height, 33);
        let hash = *blake3::hash(&payload).as_bytes();
        assert!(
            !h33.own.iter().any(|p| p.hash == hash),
            "seed {seed}: 33 stored its bytes"
        );
        let p = prep.join().unwrap().unwrap();
        let (log, rep) = log.finish_compaction(p).unwrap();
        assert_eq!(rep.dropped_records, drop.len(), "seed {seed}: {rep:?}");
        assert!(rep.bytes_after < rep.bytes_before, "seed {seed}: {rep:?}");
        assert_kept(&log, &models, &kept, tmp.path(), &format!("seed {seed}"));
        assert!(!dir.join("compact.new").exists() && !dir.join("compact.ready").exists());

        // The heights dropped meanwhile are folded by the next compaction.
        let (log, rep) = log.compact().unwrap();
        assert!(rep.dropped_records >= 3, "seed {seed}: {rep:?}");
        assert_kept(
            &log,
            &models,
            &kept,
            tmp.path(),
            &format!("seed {seed}, again"),
        );
        println!("seed {seed}: {rep:?}");
    }
}

/// A rollback while a compaction is prepared: finishing it is refused and changes nothing;
/// a cancelled preparation stops and leaves nothing behind.
#[test]
fn compaction_abandoned_after_a_rollback_or_a_stop() {
    if !is_root() {
        return skip("log_compact_beside needs root (replay restores ownership)");
    }
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("log");
    let mut log = Log::open_append_with(&dir, lopts()).unwrap();
    let mut rng = Rng(7);
    let mut m = Model::new();
    let mut models = BTreeMap::new();
    for h in 1..=20 {
        m.random_changes(&mut rng);
        log.append(m.cut(h)).unwrap();
        models.insert(h, m.clone());
    }
    log.drop_heights(&[3, 4, 5, 9]).unwrap();
    let p = log
        .view()
        .unwrap()
        .prepare_compaction(0, &AtomicBool::new(false))
        .unwrap()
        .unwrap();
    assert!(dir.join("compact.new").exists());
    let log = log.truncate_after(15).unwrap();
    let e = log
        .finish_compaction(p)
        .err()
        .expect("refused after a rollback");
    assert!(matches!(e, LogError::Abandoned { .. }), "{e}");
    assert!(
        !dir.join("compact.new").exists(),
        "its segments are thrown away"
    );
    let log = Log::open_append_with(&dir, lopts()).unwrap();
    let kept: Vec<u64> = (1..=15).filter(|h| ![3, 4, 5, 9].contains(h)).collect();
    assert_kept(&log, &models, &kept, tmp.path(), "after the rollback");

    let e = log
        .view()
        .unwrap()
        .prepare_compaction(0, &AtomicBool::new(true))
        .err()
        .expect("cancelled");
    assert!(matches!(e, LogError::Abandoned { .. }), "{e}");
    assert!(!dir.join("compact.new").exists());
    assert_kept(
        &log,
        &models,
        &kept,
        tmp.path(),
        "after a cancelled compaction",
    );
}

/// A filesystem without room for the new segments: the compaction is refused before it
/// writes anything, with a message that says how much it needs, and the log is unchanged.
#[test]
fn compaction_refused_without_free_space() {
    if !is_root() {
        return skip("log_compact_beside needs root (tmpfs mount)");
    }
    let tmp = tempfile::tempdir().unwrap();
    let mnt = tmp.path().join("small");
    std::fs::create_dir(&mnt).unwrap();
    let ok = std::process::Command::new("mount")
        .args(["-t", "tmpfs", "-o", "size=12m", "tmpfs"])
        .arg(&mnt)
        .status()
        .is_ok_and(|s| s.success());
    if !ok {
        return skip("cannot mount a tmpfs");
    }
    struct Unmount<'a>(&'a Path);
    impl Drop for Unmount<'_> {
        fn drop(&mut self) {
            let _ = std::process::Command::new("umount").arg(self.0).status();
        }
    }
    let _u = Unmount(&mnt);
    let dir = mnt.join("log");
    let mut log = Log::open_append_with(&dir, lopts()).unwrap();
    let mut rng = Rng(99);
    let mut m = Model::new();
    let mut models = BTreeMap::new();
    for h in 1..=6 {
        put_file(&mut m, format!("big-{h}").as_bytes(), &rng.bytes(1 << 20));
        log.append(m.cut(h)).unwrap();
        models.insert(h, m.clone());
    }
    log.drop_heights(&[2, 3]).unwrap();
    let before: Vec<_> = log.heights().iter().map(|h| h.hash).collect();
    let e = log.compact().err().expect("no room for the new segments");
    assert!(matches!(e, LogError::NoSpace { .. }), "{e}");
    let msg = e.to_string();
    assert!(msg.contains("needs about") && msg.contains("free"), "{msg}");
    assert!(!dir.join("compact.new").exists());
    let log = Log::open_append_with(&dir, lopts()).unwrap();
    assert_eq!(
        log.heights().iter().map(|h| h.hash).collect::<Vec<_>>(),
        before
    );
    assert_kept(
        &log,
        &models,
        &[1, 4, 5, 6],
        tmp.path(),
        "after the refusal",
    );
}
