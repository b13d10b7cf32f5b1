//! A log written by format version 1, committed, that every later version must read and
//! replay exactly: a format change that breaks old logs fails here, not on a user's node.
//!
//! The fixture (tests/fixtures/log-v1) was written once by `BTM_WRITE_GOLDEN=1 cargo test -p
//! btm-agent --test log_golden`; `expected.txt` holds, per height, the record hash and the
//! digest of the replayed tree. Regenerate only for a deliberate new fixture, never to make
//! this test pass.

#[path = "log_support.rs"]
mod support;

use std::path::{Path, PathBuf};

use btm_log::{Log, LogOptions, ReplayOptions};
use support::{Model, Rng, tree_digest};

fn fixture() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/log-v1")
}

fn opts() -> ReplayOptions {
    ReplayOptions {
        progress: false,
        sync: false,
        ..Default::default()
    }
}

/// A copy of the fixture (opening a log takes lock files in its directory).
fn copy_fixture(into: &Path) {
    std::fs::create_dir_all(into).unwrap();
    for e in std::fs::read_dir(fixture()).unwrap() {
        let e = e.unwrap();
        let name = e.file_name();
        if name.to_string_lossy().starts_with("seg-") {
            std::fs::copy(e.path(), into.join(&name)).unwrap();
        }
    }
}

fn expected() -> Vec<(u64, String, String)> {
    std::fs::read_to_string(fixture().join("expected.txt"))
        .expect("the golden fixture is committed")
        .lines()
        .filter(|l| !l.starts_with('#'))
        .map(|l| {
            let v: Vec<&str> = l.split_whitespace().collect();
            (v[0].parse().unwrap(), v[1].to_string(), v[2].to_string())
        })
        .collect()
}

#[test]
fn the_v1_fixture_reads_verifies_and_replays_exactly() {
    if std::env::var_os("BTM_WRITE_GOLDEN").is_some() {
        return write_fixture();
    }
    if !support::is_root() {
        return support::skip("replaying owners and modes needs root");
    }
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("log");
    copy_fixture(&dir);
    let want = expected();
    assert!(want.len() >= 6, "the fixture holds several heights");
    let log = Log::open_read(&dir).unwrap();
    assert!(log.segment_paths().len() >= 2, "the fixture spans segments");
    let got: Vec<(u64, String)> = log
        .heights()
        .iter()
        .map(|h| (h.height, blake3::Hash::from(h.hash).to_hex().to_string()))
        .collect();
    let want_heights: Vec<(u64, String)> = want.iter().map(|(h, r, _)| (*h, r.clone())).collect();
    assert_eq!(got, want_heights, "heights and record hashes");
    log.verify().expect("the fixture verifies");
    for (h, _, digest) in &want {
        let into = tmp.path().join(format!("at-{h}"));
        log.replay(*h, &into, &opts()).unwrap();
        assert_eq!(&tree_digest(&into), digest, "tree at height {h}");
    }
    // The current writer appends to it, and the mixed log still replays every height.
    drop(log);
    let mut log = Log::open_append(&dir).unwrap();
    let last = want.last().unwrap().0;
    let mut model = Model::new();
    model.mkdir(b"appended".to_vec(), 0o755);
    model.new_file(b"appended/f".to_vec(), 0o644, 0, 0);
    // Ids must not collide with the fixture's: the model starts at 1, so put it far above.
    let mut rec = model.cut(last + 1);
    for op in &mut rec.ops {
        if let btm_log::NsOp::Put {
            entry: btm_log::Entry::File { id, .. },
            ..
        } = op
        {
            *id += 1_000_000;
        }
    }
    log.append(rec).unwrap();
    drop(log);
    let log = Log::open_read(&dir).unwrap();
    log.verify().expect("the mixed log verifies");
    for (h, _, digest) in &want {
        let into = tmp.path().join(format!("again-{h}"));
        log.replay(*h, &into, &opts()).unwrap();
        assert_eq!(
            &tree_digest(&into),
            digest,
            "tree at height {h} after an append"
        );
    }
    let into = tmp.path().join("appended");
    log.replay(last + 1, &into, &opts()).unwrap();
    assert!(into.join("appended/f").is_file());
}

/// Writes the fixture with today's writer (deliberately, see the module doc).
fn write_fixture() {
    let dir = fixture();
    assert!(
        !dir.join("expected.txt").exists(),
        "{} exists: remove it first to write a new fixture on purpose",
        dir.display()
    );
    std::fs::create_dir_all(&dir).unwrap();
    let small = LogOptions {
        segment_size: 48 << 10,
        chunk_size: 16 << 10,
        ..Default::default()
    };
    let mut log = Log::open_append_with(&dir, small).unwrap();
    let mut rng = Rng(0x0901_de11);
    let mut model = Model::new();
    let mut lines = vec!["# height record-hash tree-digest".to_string()];
    let tmp = tempfile::tempdir().unwrap();
    for (i, height) in (10..).step_by(3).take(8).enumerate() {
        let rounds = if i == 0 { 4 } else { 1 };
        for _ in 0..rounds {
            model.random_changes(&mut rng);
        }
        let info = log.append(model.cut(height)).unwrap();
        let into = tmp.path().join(format!("at-{height}"));
        log.replay(height, &into, &opts()).unwrap();
        lines.push(format!(
            "{height} {} {}",
            blake3::Hash::from(info.hash).to_hex(),
            tree_digest(&into)
        ));
    }
    drop(log);
    for e in std::fs::read_dir(&dir).unwrap() {
        let e = e.unwrap();
        if !e.file_name().to_string_lossy().starts_with("seg-") {
            std::fs::remove_file(e.path()).unwrap();
        }
    }
    std::fs::write(dir.join("expected.txt"), lines.join("\n") + "\n").unwrap();
}
