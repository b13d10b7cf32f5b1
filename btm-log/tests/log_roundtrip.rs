//! Round trips: random heights on a model tree, replayed into fresh and stale directories.

#[path = "log_support.rs"]
mod support;

use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::MetadataExt;

use btm_log::{
    CutRecord, Entry, ExtentBytes, ExtentData, Log, LogOptions, NsOp, ReplayOptions, resolve_height,
};
use support::{Model, Rng, assert_tree, tree_digest};

fn opts() -> ReplayOptions {
    ReplayOptions {
        progress: false,
        sync: false,
        ..Default::default()
    }
}

fn small_segments() -> LogOptions {
    LogOptions {
        segment_size: 256 << 10,
        chunk_size: 64 << 10,
        ..Default::default()
    }
}

#[test]
fn random_heights_replay_fresh_and_stale() {
    let tmp = tempfile::tempdir().unwrap();
    let logdir = tmp.path().join("log");
    let mut log = Log::open_append_with(&logdir, small_segments()).unwrap();
    let mut rng = Rng(0x5eed_1234);
    let mut model = Model::new();
    let mut snapshots = Vec::new();
    let mut height = 100;
    for i in 0..50 {
        if i == 0 {
            // A baseline with some of everything.
            for _ in 0..30 {
                model.random_changes(&mut rng);
            }
        } else {
            model.random_changes(&mut rng);
        }
        height += 1 + rng.below(3);
        let rec = model.cut(height);
        let info = log.append(rec).unwrap();
        assert_eq!(info.height, height);
        snapshots.push((height, model.clone()));
    }
    assert!(
        log.segment_paths().len() > 1,
        "the test should span several segments"
    );
    assert_eq!(
        log.max_file_id(),
        Some(model.next_id - 1).filter(|&x| x > 0)
    );
    let rep = log.verify().unwrap();
    assert_eq!(rep.records, 50);
    drop(log);

    let log = Log::open_read(&logdir).unwrap();
    assert_eq!(log.heights().len(), 50);
    assert!(log.heights().windows(2).all(|w| w[0].height < w[1].height));
    for (h, m) in &snapshots {
        let into = tmp.path().join(format!("fresh-{h}"));
        let st = log.replay(*h, &into, &opts()).unwrap();
        assert_eq!(st.height, *h);
        assert_tree(&into, m, &format!("fresh replay of {h}"));
        support::remove_tree(&into);
    }
    // One stale directory, replayed to heights in a shuffled order.
    let stale = tmp.path().join("stale");
    let mut order: Vec<usize> = (0..snapshots.len()).collect();
    for i in (1..order.len()).rev() {
        let j = rng.below(i as u64 + 1) as usize;
        order.swap(i, j);
    }
    for i in order {
        let (h, m) = &snapshots[i];
        log.replay(*h, &stale, &opts()).unwrap();
        assert_tree(&stale, m, &format!("stale replay of {h}"));
        // Replaying the same height again changes nothing. (It reads payloads only for pieces
        // that later writes cut out of a payload: those cannot be compared by the payload hash.)
        let again = log.replay(*h, &stale, &opts()).unwrap();
        assert_eq!(
            again.bytes_written, 0,
            "second replay of {h} wrote: {again:?}"
        );
        assert_eq!(
            again.files_touched, 0,
            "second replay of {h} touched: {again:?}"
        );
        assert_eq!(again.entries_removed, 0);
        assert_eq!(again.holes_punched, 0, "second replay of {h}: {again:?}");
        let st = log.state_at(*h).unwrap();
        let partial: u64 = st
            .files
            .values()
            .flat_map(|f| f.pieces.values())
            .filter(|p| !p.is_whole())
            .map(|p| p.payload.stored_len)
            .sum();
        assert!(
            again.log_bytes_read <= partial,
            "second replay of {h} read: {again:?}"
        );
    }
}

#[test]
fn rollback_resolution() {
    let hs = [10, 20, 30];
    assert_eq!(resolve_height(&hs, None, false).unwrap(), 30);
    assert_eq!(resolve_height(&hs, Some(25), false).unwrap(), 20);
    assert_eq!(resolve_height(&hs, Some(20), true).unwrap(), 20);
    assert_eq!(resolve_height(&hs, Some(1000), false).unwrap(), 30);
    let e = resolve_height(&hs, Some(25), true).unwrap_err();
    assert!(e.to_string().contains("25"), "{e}");
    let e = resolve_height(&hs, Some(5), false).unwrap_err();
    assert!(
        e.to_string().contains("oldest recorded height is 10"),
        "{e}"
    );
    assert!(resolve_height(&[], None, false).is_err());
}

#[test]
fn heights_must_increase_and_list_json() {
    let tmp = tempfile::tempdir().unwrap();
    let mut log = Log::open_append(tmp.path()).unwrap();
    let mut m = Model::new();
    m.mkdir(b"d".to_vec(), 0o755);
    log.append(m.cut(100)).unwrap();
    let e = log
        .append(CutRecord {
            height: 90,
            ..Default::default()
        })
        .unwrap_err();
    assert_eq!(
        e.to_string(),
        "height 90 is not above the last recorded height 100: heights must increase"
    );
    assert!(
        log.append(CutRecord {
            height: 100,
            ..Default::default()
        })
        .is_err()
    );
    // An empty record is fine.
    log.append(CutRecord {
        height: 101,
        ..Default::default()
    })
    .unwrap();
    let json = serde_json::to_value(log.heights()).unwrap();
    assert_eq!(json[1]["height"], 101);
    assert_eq!(json[0]["hash"].as_str().unwrap().len(), 64);
    // The log is locked against a second appender, with a message naming the lock.
    let e = Log::open_append(tmp.path()).err().unwrap();
    assert!(
        e.to_string()
            .contains(&tmp.path().join("lock").display().to_string()),
        "{e}"
    );
    // Readers may read while the appender runs.
    let r = Log::open_read(tmp.path()).unwrap();
    assert_eq!(r.last_height(), Some(101));
    assert!(r.state_at(100).unwrap().entry(b"d").is_some());
    assert!(r.state_at(99).is_err());
}

/// Replay to H reads about the size of the tree at H, not the size of the log.
#[test]
fn replay_reads_only_needed_payloads() {
    let tmp = tempfile::tempdir().unwrap();
    let logdir = tmp.path().join("log");
    let mut log = Log::open_append(&logdir).unwrap();
    let mut rng = Rng(7);
    let mut m = Model::new();
    const SIZE: u64 = 8 << 20;
    let id = m.new_file(b"big".to_vec(), 0o644, 0, 0);
    m.set_size(id, SIZE);
    m.write(id, 0, ExtentBytes::Data(rng.data(SIZE as usize)));
    let small = m.new_file(b"small".to_vec(), 0o644, 0, 0);
    m.set_size(small, 1000);
    m.write(small, 0, ExtentBytes::Data(vec![1; 1000]));
    log.append(m.cut(1)).unwrap();
    let mut snaps = vec![m.clone()];
    for h in 2..=10 {
        // Rewrite the whole big file with incompressible data.
        let mut d = Vec::with_capacity(SIZE as usize);
        while d.len() < SIZE as usize {
            d.extend_from_slice(&rng.next_u64().to_le_bytes());
        }
        m.write(id, 0, ExtentBytes::Data(d));
        log.append(m.cut(h)).unwrap();
        snaps.push(m.clone());
    }
    let log_size: u64 = log.heights().iter().map(|h| h.stored_bytes).sum();
    assert!(log_size > 9 * SIZE);
    // The tree's bytes, plus the payloads' block tables (16 bytes per 4 KiB).
    let tree = SIZE + 1000 + (SIZE + 1000) / 256 + 64;
    let opts = opts();
    for h in [1u64, 5, 10] {
        let into = tmp.path().join(format!("r{h}"));
        let st = log.replay(h, &into, &opts).unwrap();
        assert!(
            st.log_bytes_read <= tree,
            "replay {h} read {} bytes, tree is {tree}",
            st.log_bytes_read
        );
        assert!(
            st.log_bytes_read >= SIZE / 2,
            "replay {h} read too little: {st:?}"
        );
        assert_tree(&into, &snaps[h as usize - 1], "bounded");
    }
    // Roll back a tree at 10 to 9: reads and writes the one changed file, not the small one.
    let into = tmp.path().join("r10");
    let st = log.replay(9, &into, &opts).unwrap();
    assert!(st.log_bytes_read <= tree, "{st:?}");
    assert_eq!(st.bytes_written, SIZE);
    assert_eq!(st.files_touched, 1);
    assert_tree(&into, &snaps[8], "rollback 10 -> 9");
}

/// Holes in the state become holes in the target, fresh or stale, without writing zeros.
#[test]
fn holes_stay_holes() {
    let tmp = tempfile::tempdir().unwrap();
    let mut log = Log::open_append(&tmp.path().join("log")).unwrap();
    let mut m = Model::new();
    const SIZE: u64 = 64 << 20;
    let id = m.new_file(b"sparse".to_vec(), 0o644, 0, 0);
    m.set_size(id, SIZE);
    m.write(id, 0, ExtentBytes::Data(vec![7; 4096]));
    m.write(id, 32 << 20, ExtentBytes::Data(vec![9; 4096]));
    log.append(m.cut(1)).unwrap();
    let sparse_model = m.clone();
    // Height 2: the whole file is data.
    m.write(id, 0, ExtentBytes::Data(vec![5; SIZE as usize]));
    log.append(m.cut(2)).unwrap();
    let full_model = m.clone();
    // Height 3: punch most of it again.
    m.write(id, 4096, ExtentBytes::Zero(SIZE - 8192));
    log.append(m.cut(3)).unwrap();
    let punched_model = m.clone();

    let into = tmp.path().join("t");
    let st = log.replay(1, &into, &opts()).unwrap();
    assert_eq!(st.bytes_written, 8192);
    let md = std::fs::metadata(into.join("sparse")).unwrap();
    assert_eq!(md.len(), SIZE);
    assert!(
        md.blocks() * 512 < (1 << 20),
        "fresh replay is not sparse: {} blocks",
        md.blocks()
    );
    assert_tree(&into, &sparse_model, "sparse");

    log.replay(2, &into, &opts()).unwrap();
    assert_tree(&into, &full_model, "full");
    assert!(std::fs::metadata(into.join("sparse")).unwrap().blocks() * 512 >= SIZE);

    let st = log.replay(3, &into, &opts()).unwrap();
    assert_tree(&into, &punched_model, "punched");
    assert!(st.holes_punched >= 1, "{st:?}");
    assert!(
        st.bytes_written < (1 << 20),
        "holes were written as zeros: {st:?}"
    );
    let blocks = std::fs::metadata(into.join("sparse")).unwrap().blocks() * 512;
    assert!(
        blocks < (1 << 20),
        "stale replay left data in holes: {blocks} bytes allocated"
    );

    // And back to the sparse height from the punched one: the data ranges change, holes stay.
    log.replay(1, &into, &opts()).unwrap();
    assert_tree(&into, &sparse_model, "sparse again");
    assert!(std::fs::metadata(into.join("sparse")).unwrap().blocks() * 512 < (1 << 20));
}

/// Hard links across directories, a stale target whose links are wrong, and a stale file that
/// is also linked from outside the target (which must not be modified).
#[test]
fn hard_links_in_stale_targets() {
    let tmp = tempfile::tempdir().unwrap();
    let mut log = Log::open_append(&tmp.path().join("log")).unwrap();
    let mut m = Model::new();
    m.mkdir(b"x".to_vec(), 0o755);
    m.mkdir(b"y".to_vec(), 0o755);
    let a = m.new_file(b"x/a".to_vec(), 0o644, 0, 0);
    m.set_size(a, 5);
    m.write(a, 0, ExtentBytes::Data(b"hello".to_vec()));
    let b = m.new_file(b"y/b".to_vec(), 0o644, 0, 0);
    m.set_size(b, 5);
    m.write(b, 0, ExtentBytes::Data(b"world".to_vec()));
    log.append(m.cut(1)).unwrap();
    let m1 = m.clone();
    // Height 2: y/b2 links to x/a, y/b is a link of x/a too (b is gone).
    m.remove(b"y/b");
    m.put_file_link(b"y/b", a);
    m.put_file_link(b"y/b2", a);
    m.write(a, 0, ExtentBytes::Data(b"HELLO".to_vec()));
    log.append(m.cut(2)).unwrap();
    let m2 = m.clone();

    let into = tmp.path().join("t");
    log.replay(2, &into, &opts()).unwrap();
    assert_tree(&into, &m2, "links at 2");
    log.replay(1, &into, &opts()).unwrap();
    assert_tree(&into, &m1, "links undone at 1");

    // A file of the target also linked from outside: replay must not write through it.
    let outside = tmp.path().join("outside");
    std::fs::hard_link(into.join("x/a"), &outside).unwrap();
    log.replay(2, &into, &opts()).unwrap();
    assert_tree(&into, &m2, "links at 2 with an outside link");
    assert_eq!(std::fs::read(&outside).unwrap(), b"hello");
    let d = tree_digest(&into);
    log.replay(2, &into, &opts()).unwrap();
    assert_eq!(tree_digest(&into), d);
}

/// Symlinks and odd names survive, and a Put of an existing id updates metadata only.
#[test]
fn metadata_only_changes() {
    let tmp = tempfile::tempdir().unwrap();
    let mut log = Log::open_append(&tmp.path().join("log")).unwrap();
    let name = b"we\nird \xff name".to_vec();
    log.append(CutRecord {
        height: 1,
        time_unix_ms: 0,
        ops: vec![
            NsOp::Put {
                path: name.clone(),
                entry: Entry::File {
                    id: 1,
                    mode: 0o600,
                    uid: 0,
                    gid: 0,
                },
            },
            NsOp::SetSize { id: 1, size: 3 },
            NsOp::Put {
                path: b"l".to_vec(),
                entry: Entry::Symlink {
                    target: b"../../x".to_vec(),
                    uid: 0,
                    gid: 0,
                },
            },
        ],
        extents: vec![ExtentData {
            id: 1,
            offset: 0,
            bytes: ExtentBytes::Data(b"abc".to_vec()),
        }],
    })
    .unwrap();
    log.append(CutRecord {
        height: 2,
        time_unix_ms: 0,
        ops: vec![NsOp::Put {
            path: name.clone(),
            entry: Entry::File {
                id: 1,
                mode: 0o755,
                uid: 0,
                gid: 0,
            },
        }],
        extents: vec![],
    })
    .unwrap();
    let into = tmp.path().join("t");
    log.replay(1, &into, &opts()).unwrap();
    let st = log.replay(2, &into, &opts()).unwrap();
    assert_eq!(st.bytes_written, 0);
    assert_eq!(st.log_bytes_read, 0);
    assert_eq!(st.files_touched, 1);
    let p = into.join(std::ffi::OsStr::from_bytes(&name));
    assert_eq!(std::fs::metadata(&p).unwrap().mode() & 0o7777, 0o755);
    assert_eq!(std::fs::read(&p).unwrap(), b"abc");
    assert_eq!(
        std::fs::read_link(into.join("l")).unwrap().to_str(),
        Some("../../x")
    );
}

/// A payload cut by later writes is compared block by block through its block table: replaying
/// onto an identical tree reads only tables, and a rollback writes only the blocks that differ.
#[test]
fn partial_pieces_compare_by_block_table() {
    let tmp = tempfile::tempdir().unwrap();
    let mut log = Log::open_append(&tmp.path().join("log")).unwrap();
    let mut rng = Rng(77);
    let mut m = Model::new();
    const MIB: u64 = 1 << 20;
    let id = m.new_file(b"db".to_vec(), 0o644, 0, 0);
    m.set_size(id, 4 * MIB);
    m.write(id, 0, ExtentBytes::Data(rng.bytes(4 * MIB as usize)));
    log.append(m.cut(1)).unwrap();
    let m1 = m.clone();
    // Page writes into every 1 MiB payload.
    for k in 0..4 {
        m.write(id, k * MIB + 64 * 1024, ExtentBytes::Data(rng.bytes(4096)));
    }
    log.append(m.cut(2)).unwrap();
    let m2 = m.clone();
    let into = tmp.path().join("t");
    log.replay(2, &into, &opts()).unwrap();
    assert_tree(&into, &m2, "at 2");
    let st = log.replay(2, &into, &opts()).unwrap();
    assert_eq!(st.bytes_written, 0);
    assert!(
        st.log_bytes_read <= 8 * 4096,
        "read payloads, not just tables: {st:?}"
    );
    let st = log.replay(1, &into, &opts()).unwrap();
    assert_tree(&into, &m1, "back at 1");
    assert_eq!(st.bytes_written, 4 * 4096, "{st:?}");
    let st = log.replay(2, &into, &opts()).unwrap();
    assert_tree(&into, &m2, "at 2 again");
    assert_eq!(st.bytes_written, 4 * 4096, "{st:?}");
    assert!(st.log_bytes_read <= 4 * 4096 + 8 * 4096 + 4 * 64, "{st:?}");
}
