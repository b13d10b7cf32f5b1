//! In-place rollback scoped to what changed: a target at the last height, changed further by
//! a height no record holds yet, rolled back to random heights by comparing only what the
//! records after the height and those further changes name, must equal the height exactly,
//! and must compare far fewer bytes than a whole-tree replay.

#[path = "log_support.rs"]
mod support;

use btm_log::{CutRecord, ExtentBytes, Log, LogOptions, NsOp, SinceLast, TreeState};
use support::{MNode, Model, Rng, assert_tree, quiet};

/// What the tracker would report for `rec` applied over `last`: paths whose entry changed,
/// and the files written or changed, by id (`after` is the model with it).
fn since_of(rec: &CutRecord, last: &TreeState, after: &Model) -> SinceLast {
    let mut since = SinceLast::default();
    for op in &rec.ops {
        match op {
            NsOp::Put { path, .. } | NsOp::Remove { path } => {
                match (last.nodes.get(path), after.nodes.get(path)) {
                    (Some(btm_log::Node::File(a)), Some(MNode::File(b))) if a == b => {}
                    _ => {
                        since.paths.insert(path.clone());
                    }
                }
                if let Some(MNode::File(id)) = after.nodes.get(path) {
                    since.files.push((*id, Vec::new()));
                }
            }
            NsOp::SetSize { id, size } => since.files.push((*id, vec![(*size, u64::MAX)])),
        }
    }
    for e in &rec.extents {
        since
            .files
            .push((e.id, vec![(e.offset, e.offset + e.bytes.len())]));
    }
    since
}

#[test]
fn scoped_rollback_equals_the_height() {
    let tmp = tempfile::tempdir().unwrap();
    let logdir = tmp.path().join("log");
    let lo = LogOptions {
        segment_size: 256 << 10,
        chunk_size: 64 << 10,
        ..Default::default()
    };
    let mut log = Log::open_append_with(&logdir, lo).unwrap();
    // BTM_TEST_SEED runs another workload (the default one is the regression).
    let seed = std::env::var("BTM_TEST_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(0x0b5e_55ed);
    let mut rng = Rng(seed);
    let mut model = Model::new();
    // A large file: a whole-tree replay compares it every time, a scoped one only when a
    // height after the target or the changes since wrote it.
    let big = model.new_file(b"big".to_vec(), 0o644, 0, 0);
    model.set_size(big, 8 << 20);
    model.write(big, 0, ExtentBytes::Data(rng.data(8 << 20)));
    for _ in 0..30 {
        model.random_changes(&mut rng);
    }
    let mut snapshots = Vec::new();
    for h in 1..=30u64 {
        if h > 1 {
            model.random_changes(&mut rng);
        }
        log.append(model.cut(h)).unwrap();
        snapshots.push((h, model.clone()));
    }
    drop(log);
    let log = Log::open_read(&logdir).unwrap();
    let last = log.state_at(30).unwrap();
    let (mut scoped_cmp, mut whole_cmp) = (0u64, 0u64);
    for round in 0..25 {
        // The target: height 30, then changes of a height no record holds yet, put there by
        // a replay from a copy of the log that has them.
        let copy = tmp.path().join(format!("copy-{round}"));
        let cp = std::process::Command::new("cp")
            .arg("-a")
            .arg(&logdir)
            .arg(&copy)
            .status()
            .unwrap();
        assert!(cp.success());
        let mut after = model.clone();
        after.random_changes(&mut rng);
        let rec = after.cut(31);
        let since = since_of(&rec, &last, &after);
        let mut with = Log::open_append(&copy).unwrap();
        with.append(rec).unwrap();
        let target = tmp.path().join("target");
        with.replay(31, &target, &quiet()).unwrap();
        assert_tree(&target, &after, "the target before the rollback");
        drop(with);
        support::remove_tree(&copy);

        let (h, m) = &snapshots[rng.below(30) as usize];
        let st = log.rollback_in_place(*h, &target, &quiet(), since).unwrap();
        assert!(st.scoped.is_some(), "{st:?}");
        assert_tree(
            &target,
            m,
            &format!("round {round}: scoped rollback to {h}"),
        );
        // The same rollback over the whole tree, for the bytes it compares.
        let whole = log.replay(*h, &target, &quiet()).unwrap();
        assert_eq!(
            whole.bytes_written, 0,
            "after the scoped rollback to {h}: {whole:?}"
        );
        assert_eq!(whole.entries_removed, 0, "{whole:?}");
        scoped_cmp += st.bytes_compared;
        whole_cmp += whole.bytes_compared;
    }
    eprintln!("compared: scoped {scoped_cmp} bytes, whole tree {whole_cmp} bytes");
    assert!(scoped_cmp * 2 < whole_cmp, "{scoped_cmp} vs {whole_cmp}");
}

/// Truncating keeps the appender's lock: another thread's fork (whose child shares the lock
/// until it execs or exits) must not make the reopen fail as if another agent held the log.
#[test]
fn truncate_keeps_the_lock_while_a_child_shares_it() {
    let tmp = tempfile::tempdir().unwrap();
    let mut log = Log::open_append(tmp.path()).unwrap();
    let mut model = Model::new();
    let mut rng = Rng(5);
    for h in 1..=3 {
        model.random_changes(&mut rng);
        log.append(model.cut(h)).unwrap();
    }
    // SAFETY: the child only sleeps and exits, without touching the parent's state.
    let pid = unsafe { libc::fork() };
    if pid == 0 {
        unsafe {
            libc::sleep(2);
            libc::_exit(0);
        }
    }
    assert!(pid > 0, "fork");
    let log = log.truncate_after(2);
    let mut status = 0;
    // SAFETY: waits for the child just forked.
    unsafe { libc::waitpid(pid, &mut status, 0) };
    let log = log.unwrap_or_else(|e| panic!("truncate with a child sharing the lock: {e}"));
    assert_eq!(log.last_height(), Some(2));
    // The lock is still held: a second appender is refused.
    assert!(Log::open_append(tmp.path()).is_err());
}
