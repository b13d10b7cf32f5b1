//! Unit tests that need the log internals: a failing writer (a full disk at every offset of a
//! record) and hostile logs written without the append-time checks.

use std::path::Path;

use super::*;

fn no_sync() -> ReplayOptions {
    ReplayOptions {
        progress: false,
        sync: false,
        ..Default::default()
    }
}

use super::testing::{file_op, noise, record};

fn listing(dir: &Path) -> Vec<(String, u64)> {
    let mut v: Vec<(String, u64)> = fs::read_dir(dir)
        .unwrap()
        .map(|e| {
            let e = e.unwrap();
            (
                e.file_name().to_string_lossy().into_owned(),
                e.metadata().unwrap().len(),
            )
        })
        .collect();
    v.sort();
    v
}

/// Dedup with a bounded index: payloads met recently are stored once, those it forgot are
/// stored again (space, never a wrong byte), and reopening keeps it within its budget too.
#[test]
fn a_bounded_dedup_index_forgets_the_oldest_payloads_only() {
    let tmp = tempfile::tempdir().unwrap();
    let opts = || LogOptions {
        chunk_size: 4096,
        // 64 table slots of 54 bytes: two generations of 28 payloads.
        dedup_index_bytes: 64 * 54,
        ..Default::default()
    };
    let data = noise(5, 100 * 4096);
    let (old, recent) = (data[..20 * 4096].to_vec(), data[80 * 4096..].to_vec());
    let mut log = Log::open_append_with(tmp.path(), opts()).unwrap();
    let a = log.append(record(1, 1, data.clone())).unwrap();
    assert!(a.stored_bytes > 100 * 4096);
    let b = log.append(record(2, 2, recent.clone())).unwrap();
    assert!(b.stored_bytes < 4096, "recent payloads found: {b:?}");
    let c = log.append(record(3, 3, old.clone())).unwrap();
    assert!(
        c.stored_bytes > 20 * 4096,
        "the oldest were forgotten: {c:?}"
    );
    assert!(log.dedup.len() <= 56);
    drop(log);
    let mut log = Log::open_append_with(tmp.path(), opts()).unwrap();
    assert!(
        log.dedup.len() <= 56,
        "{} entries after open",
        log.dedup.len()
    );
    // Record 3's payloads were indexed last on open.
    let d = log.append(record(4, 4, old.clone())).unwrap();
    assert!(d.stored_bytes < 4096, "{d:?}");
    log.verify().unwrap();
    let into = tmp.path().join("r");
    log.replay(4, &into, &no_sync()).unwrap();
    for (i, want) in [(1, &data), (2, &recent), (3, &old), (4, &old)] {
        assert_eq!(&fs::read(into.join(format!("f{i}"))).unwrap(), want, "f{i}");
    }
}

/// A write failing at any offset of a record (ENOSPC) leaves the log exactly as before, and the
/// next append works.
#[test]
fn failed_write_is_undone_at_every_offset() {
    let tmp = tempfile::tempdir().unwrap();
    let mut log = Log::open_append_with(
        tmp.path(),
        LogOptions {
            chunk_size: 4096,
            ..Default::default()
        },
    )
    .unwrap();
    log.append(record(1, 1, noise(1, 10_000))).unwrap();
    let before = listing(tmp.path());
    let start = log.segments[0].len;
    let probe_len = {
        // The size of the record we are going to fail.
        let dir2 = tempfile::tempdir().unwrap();
        let mut l2 = Log::open_append_with(
            dir2.path(),
            LogOptions {
                chunk_size: 4096,
                ..Default::default()
            },
        )
        .unwrap();
        l2.append(record(1, 1, noise(1, 10_000))).unwrap();
        l2.append(record(2, 2, noise(2, 20_000)))
            .unwrap()
            .stored_bytes
    };
    let mut h = 2;
    for limit in (start..start + probe_len)
        .step_by(97)
        .chain([start + probe_len - 1])
    {
        log.fail_writes_beyond = Some(limit);
        let e = log.append(record(h, 2, noise(2, 20_000))).unwrap_err();
        assert!(e.is_io_kind(std::io::ErrorKind::StorageFull), "{e}");
        assert_eq!(listing(tmp.path()), before, "limit {limit}");
        assert_eq!(log.last_height(), Some(1));
        h += 1;
    }
    log.fail_writes_beyond = None;
    log.append(record(h, 2, noise(2, 20_000))).unwrap();
    log.verify().unwrap();
    drop(log);
    let log = Log::open_read(tmp.path()).unwrap();
    assert!(log.torn_tail().is_none());
    assert_eq!(log.heights().len(), 2);
}

/// A failure while the record goes into a new segment removes that segment again.
#[test]
fn failed_write_in_new_segment_removes_it() {
    let tmp = tempfile::tempdir().unwrap();
    let mut log = Log::open_append_with(
        tmp.path(),
        LogOptions {
            segment_size: 1000,
            ..Default::default()
        },
    )
    .unwrap();
    log.append(record(1, 1, noise(1, 5000))).unwrap();
    let before = listing(tmp.path());
    for limit in [0, 10, 32, 100, 3000] {
        log.fail_writes_beyond = Some(limit);
        assert!(log.append(record(2, 2, noise(2, 5000))).is_err());
        assert_eq!(listing(tmp.path()), before, "limit {limit}");
    }
    log.fail_writes_beyond = None;
    log.append(record(2, 2, noise(2, 5000))).unwrap();
    assert_eq!(log.segment_paths().len(), 2);
    log.verify().unwrap();
}

/// Dedup: the same bytes appended again cost a table row, not a payload.
#[test]
fn identical_payloads_are_stored_once() {
    let tmp = tempfile::tempdir().unwrap();
    let mut log = Log::open_append(tmp.path()).unwrap();
    let data = noise(9, 3 << 20);
    let a = log.append(record(1, 1, data.clone())).unwrap();
    let b = log.append(record(2, 2, data.clone())).unwrap();
    assert!(a.stored_bytes > 3 << 20);
    assert!(b.stored_bytes < 4096, "{b:?}");
    assert_eq!(b.data_bytes, 3 << 20);
    drop(log);
    // The dedup index is rebuilt on open.
    let mut log = Log::open_append(tmp.path()).unwrap();
    let c = log.append(record(3, 3, data.clone())).unwrap();
    assert!(c.stored_bytes < 4096);
    let rep = log.verify().unwrap();
    assert_eq!(rep.payloads, 3);
    assert_eq!(rep.deduplicated_extents, 6);
    let into = tmp.path().join("r");
    log.replay(3, &into, &no_sync()).unwrap();
    for i in 1..=3 {
        assert_eq!(fs::read(into.join(format!("f{i}"))).unwrap(), data);
    }
}

fn hostile_log(dir: &Path, records: Vec<CutRecord>) {
    let mut log = Log::open_append(dir).unwrap();
    log.skip_checks = true;
    for r in records {
        log.append(r).unwrap();
    }
}

/// Paths that could escape are refused when a log holding them is opened.
#[test]
fn hostile_paths_refused_at_open() {
    for bad in [&b"../x"[..], b"/abs", b"a/../../b", b"a//b", b"x/."] {
        let tmp = tempfile::tempdir().unwrap();
        hostile_log(
            tmp.path(),
            vec![
                CutRecord {
                    height: 1,
                    ops: vec![NsOp::Put {
                        path: b"a".to_vec(),
                        entry: Entry::Dir {
                            mode: 0o755,
                            uid: 0,
                            gid: 0,
                        },
                    }],
                    ..Default::default()
                },
                record(2, 1, b"x".to_vec()),
                CutRecord {
                    height: 3,
                    ops: vec![file_op(bad, 2)],
                    ..Default::default()
                },
            ],
        );
        let e = Log::open_read(tmp.path())
            .err()
            .expect("hostile log opened");
        assert!(matches!(e, LogError::UnsafePath { height: 3, .. }), "{e}");
        assert!(e.to_string().contains(&display_path(bad)), "{e}");
        assert!(Log::open_append(tmp.path()).is_err());
    }
}

/// A log that creates symlink `a -> outside` and then `a/passwd` opens (its paths are
/// well-formed), but replay and verify refuse it naming the path, and nothing is written
/// outside the target.
#[test]
fn symlink_parent_escape_refused_at_replay() {
    let tmp = tempfile::tempdir().unwrap();
    let outside = tmp.path().join("outside");
    fs::create_dir(&outside).unwrap();
    let logdir = tmp.path().join("log");
    hostile_log(
        &logdir,
        vec![
            CutRecord {
                height: 1,
                ops: vec![NsOp::Put {
                    path: b"a".to_vec(),
                    entry: Entry::Symlink {
                        target: outside.as_os_str().as_encoded_bytes().to_vec(),
                        uid: 0,
                        gid: 0,
                    },
                }],
                ..Default::default()
            },
            CutRecord {
                height: 2,
                ops: vec![file_op(b"a/passwd", 1), NsOp::SetSize { id: 1, size: 4 }],
                extents: vec![ExtentData {
                    id: 1,
                    offset: 0,
                    bytes: ExtentBytes::Data(b"root".to_vec()),
                }],
                ..Default::default()
            },
        ],
    );
    let log = Log::open_read(&logdir).unwrap();
    let into = tmp.path().join("t");
    let e = log.replay(2, &into, &no_sync()).unwrap_err();
    assert!(matches!(e, LogError::UnsafePath { .. }), "{e}");
    assert!(e.to_string().contains("a/passwd"), "{e}");
    let e = log.verify().unwrap_err();
    assert!(e.to_string().contains("a/passwd"), "{e}");
    assert!(fs::read_dir(&outside).unwrap().next().is_none());
    // Height 1 alone is harmless: a dangling-or-not symlink, never followed.
    log.replay(1, &into, &no_sync()).unwrap();
    assert!(
        fs::symlink_metadata(into.join("a"))
            .unwrap()
            .file_type()
            .is_symlink()
    );
    assert!(fs::read_dir(&outside).unwrap().next().is_none());
}

/// Defence in depth: even with the fold check bypassed, the openat(O_NOFOLLOW) chain refuses to
/// go through a symlink in the target.
#[test]
fn openat_chain_does_not_follow_symlinks() {
    let tmp = tempfile::tempdir().unwrap();
    let outside = tmp.path().join("outside");
    fs::create_dir(&outside).unwrap();
    let into = tmp.path().join("t");
    fs::create_dir(&into).unwrap();
    std::os::unix::fs::symlink(&outside, into.join("a")).unwrap();
    let logdir = tmp.path().join("log");
    let mut log = Log::open_append(&logdir).unwrap();
    log.append(CutRecord {
        height: 1,
        ..Default::default()
    })
    .unwrap();
    let state = TreeState::default();
    let mut r = replay::tests_support::replayer(&log, &state, &into);
    let e = r.dir_fd(b"a").expect_err("followed a symlink");
    assert!(matches!(e, LogError::UnsafePath { .. }), "{e}");
    assert!(e.to_string().contains("\"a\""), "{e}");
}

/// A record whose extent points outside every payload section is refused at open.
#[test]
fn payload_reference_out_of_bounds_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let mut log = Log::open_append(tmp.path()).unwrap();
    log.append(record(1, 1, noise(3, 1000))).unwrap();
    // Forge the dedup index so the next record points at bytes outside every payload section.
    let fake = blake3::hash(&noise(4, 1000));
    log.dedup.replace(&PayloadRef {
        seg: 1,
        offset: 40,
        stored_len: 1016,
        raw_len: 1000,
        codec: Codec::Raw,
        hash: *fake.as_bytes(),
    });
    log.append(record(2, 2, noise(4, 1000))).unwrap();
    drop(log);
    let e = Log::open_read(tmp.path()).err().expect("opened");
    assert!(
        e.to_string().contains("outside every payload section"),
        "{e}"
    );
}

/// The agent moves the log between threads.
#[test]
fn log_is_send_and_sync() {
    fn check<T: Send + Sync>() {}
    check::<Log>();
    check::<TreeState>();
    check::<LogError>();
}

/// A record that rewrites a whole 3 MiB file with one 4 KiB block changed (and zeros over a hole)
/// stores about that block, and every height still replays exactly; extents that overlap, and
/// sizes the record's ops shrink, are compared with nothing (a later extent may undo an earlier
/// one; a shrink drops the old bytes).
#[test]
fn unchanged_blocks_are_left_out_and_replays_stay_exact() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("log");
    let mut log = Log::open_append(&dir).unwrap();
    let mut v1 = noise(1, 3 << 20);
    v1[(2 << 20)..(2 << 20) + 8192].fill(0);
    let mut r1 = record(1, 1, v1.clone());
    // A hole of 64 KiB after the data: the file is 3 MiB + 64 KiB.
    r1.ops.push(NsOp::SetSize {
        id: 1,
        size: (3 << 20) + 65536,
    });
    log.append(r1).unwrap();

    // Height 2: the whole file again plus the hole as zeros; one block differs.
    let mut v2 = v1.clone();
    v2[4096 * 100..4096 * 101].copy_from_slice(&noise(2, 4096));
    v2.extend_from_slice(&[0u8; 65536]);
    let mut r2 = record(2, 1, v2.clone());
    r2.ops.pop(); // keep the size
    let info = log.append(r2).unwrap();
    assert!(
        info.stored_bytes < 64 << 10,
        "stored {} bytes for one changed 4 KiB block",
        info.stored_bytes
    );

    // Height 3: overlapping extents: the first changes block 5, the second puts block 5 back.
    let old5 = v2[5 * 4096..6 * 4096].to_vec();
    let r3 = CutRecord {
        height: 3,
        time_unix_ms: 3,
        ops: vec![],
        extents: vec![
            ExtentData {
                id: 1,
                offset: 5 * 4096,
                bytes: ExtentBytes::Data(noise(3, 4096)),
            },
            ExtentData {
                id: 1,
                offset: 5 * 4096,
                bytes: ExtentBytes::Data(old5),
            },
        ],
    };
    log.append(r3).unwrap();

    // Height 4: shrink to 1 MiB and grow back to 3 MiB + 64 KiB in one record, rewriting the
    // old bytes: they must be stored again (the shrink dropped them).
    let r4 = CutRecord {
        height: 4,
        time_unix_ms: 4,
        ops: vec![
            NsOp::SetSize {
                id: 1,
                size: 1 << 20,
            },
            NsOp::SetSize {
                id: 1,
                size: v2.len() as u64,
            },
        ],
        extents: vec![ExtentData {
            id: 1,
            offset: 1 << 20,
            bytes: ExtentBytes::Data(v2[1 << 20..].to_vec()),
        }],
    };
    log.append(r4).unwrap();
    drop(log);

    let log = Log::open_read(&dir).unwrap();
    log.verify().unwrap();
    for (h, want) in [
        (1, {
            let mut v = v1.clone();
            v.extend_from_slice(&[0u8; 65536]);
            v
        }),
        (2, v2.clone()),
        (3, v2.clone()),
        (4, v2.clone()),
    ] {
        let into = tmp.path().join(format!("r{h}"));
        log.replay(h, &into, &no_sync()).unwrap();
        let got = fs::read(into.join("f1")).unwrap();
        assert_eq!(got.len(), want.len(), "height {h}");
        assert!(got == want, "height {h} differs");
    }
}

/// A record whose metadata block is between 2 and 4 MiB (about 30 000 extents: a height that
/// touches many small ranges) reads back: the writer once put such a block over the record
/// header's place (found by the benchmark as "bad record magic" in a non-last segment).
#[test]
fn large_metadata_blocks_are_written_in_place() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("log");
    let mut log = Log::open_append(&dir).unwrap();
    let n = 30_000u64;
    let size = n * 8192;
    let mut r = record(1, 1, vec![]);
    r.ops[1] = NsOp::SetSize { id: 1, size };
    r.extents = (0..n)
        .map(|i| ExtentData {
            id: 1,
            offset: i * 8192,
            bytes: ExtentBytes::Data(vec![(i % 251) as u8 + 1; 100]),
        })
        .collect();
    log.append(r).unwrap();
    log.append(record(2, 2, noise(2, 5000))).unwrap();
    drop(log);
    let log = Log::open_read(&dir).unwrap();
    log.verify().unwrap();
    let into = tmp.path().join("r");
    log.replay(2, &into, &no_sync()).unwrap();
    let got = fs::read(into.join("f1")).unwrap();
    assert_eq!(got.len() as u64, size);
    for i in [0, 1, 12_345, n - 1] {
        let at = (i * 8192) as usize;
        assert_eq!(got[at..at + 100], [(i % 251) as u8 + 1; 100], "extent {i}");
        assert_eq!(got[at + 100], 0);
    }
}

/// A torn last line in `dropped` (a crash mid-append) must not join the next height appended.
#[test]
fn torn_dropped_line_does_not_join_the_next_height() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join(super::DROPPED_FILE), b"5\n1").unwrap();
    super::record_dropped(dir.path(), &[130]).unwrap();
    let got = super::compact::read_dropped(dir.path()).unwrap();
    assert_eq!(got.into_iter().collect::<Vec<_>>(), vec![5, 130]);
}

/// A height far larger than the draft's batch goes out in many batches, each written to its
/// final place, and reads back exactly; deduplication still finds payloads across batches.
#[test]
fn a_draft_streams_in_bounded_batches() {
    let tmp = tempfile::tempdir().unwrap();
    let opts = LogOptions {
        chunk_size: 64 << 10,
        batch_bytes: 256 << 10,
        ..Default::default()
    };
    let mut log = Log::open_append_with(tmp.path(), opts).unwrap();
    let data = noise(3, 4 << 20);
    let mut d = log.begin(1).unwrap();
    for (i, part) in data.chunks(100_000).enumerate() {
        d.extent(ExtentData {
            id: 1,
            offset: (i * 100_000) as u64,
            bytes: ExtentBytes::Data(part.to_vec()),
        })
        .unwrap();
        assert!(
            d.buffered_bytes() < (256 << 10) + 100_000,
            "the batch is bounded"
        );
    }
    // The same bytes again, as a second file: every piece is a borrowed payload.
    for (i, part) in data.chunks(100_000).enumerate() {
        d.extent(ExtentData {
            id: 2,
            offset: (i * 100_000) as u64,
            bytes: ExtentBytes::Data(part.to_vec()),
        })
        .unwrap();
    }
    let size = data.len() as u64;
    let info = d
        .commit(
            1,
            vec![
                file_op(b"a", 1),
                file_op(b"b", 2),
                NsOp::SetSize { id: 1, size },
                NsOp::SetSize { id: 2, size },
            ],
        )
        .unwrap();
    assert!(info.stored_bytes < size + size / 8, "{info:?}: stored once");
    drop(log);
    let log = Log::open_read(tmp.path()).unwrap();
    log.verify().unwrap();
    let into = tmp.path().join("r");
    log.replay(1, &into, &no_sync()).unwrap();
    assert_eq!(fs::read(into.join("a")).unwrap(), data);
    assert_eq!(fs::read(into.join("b")).unwrap(), data);
}

/// A draft dropped without commit (a cut that starts over) leaves no trace; one whose files
/// vanished keeps their payloads unused, which verify and open accept.
#[test]
fn a_dropped_draft_is_undone_and_vanished_files_leave_unused_payloads() {
    let tmp = tempfile::tempdir().unwrap();
    let opts = LogOptions {
        batch_bytes: 64 << 10,
        ..Default::default()
    };
    let mut log = Log::open_append_with(tmp.path(), opts).unwrap();
    log.append(record(1, 1, noise(1, 10_000))).unwrap();
    let before = listing(tmp.path());
    {
        let mut d = log.begin(2).unwrap();
        d.extent(ExtentData {
            id: 2,
            offset: 0,
            bytes: ExtentBytes::Data(noise(2, 500_000)),
        })
        .unwrap();
    }
    assert_eq!(listing(tmp.path()), before);
    let mut d = log.begin(2).unwrap();
    for id in [2, 3] {
        d.extent(ExtentData {
            id,
            offset: 0,
            bytes: ExtentBytes::Data(noise(id, 300_000)),
        })
        .unwrap();
    }
    d.retain_files(|_, id| id != 3).unwrap();
    d.commit(
        2,
        vec![
            file_op(b"f2", 2),
            NsOp::SetSize {
                id: 2,
                size: 300_000,
            },
        ],
    )
    .unwrap();
    let rep = log.verify().unwrap();
    assert_eq!(rep.records, 2);
    drop(log);
    let log = Log::open_append(tmp.path()).unwrap();
    let into = tmp.path().join("r");
    log.replay(2, &into, &no_sync()).unwrap();
    assert_eq!(fs::read(into.join("f2")).unwrap(), noise(2, 300_000));
    assert!(!into.join("f3").exists());
}

/// The payloads an undone record wrote (a cut that starts over, or a disk that fills up) are
/// forgotten with it: the next record holding the same bytes stores them again instead of
/// pointing into the tail that was cut off (and that the next record then overwrites).
#[test]
fn an_undone_records_payloads_are_never_pointed_at() {
    let tmp = tempfile::tempdir().unwrap();
    let opts = LogOptions {
        batch_bytes: 64 << 10,
        chunk_size: 4096,
        ..Default::default()
    };
    let mut log = Log::open_append_with(tmp.path(), opts).unwrap();
    log.append(record(1, 1, noise(1, 10_000))).unwrap();
    let data = noise(2, 300_000);
    {
        let mut d = log.begin(2).unwrap();
        d.extent(ExtentData {
            id: 2,
            offset: 0,
            bytes: ExtentBytes::Data(data.clone()),
        })
        .unwrap();
        d.flush().unwrap();
    }
    // The same bytes again, this time up to a full disk halfway through the record.
    log.fail_writes_beyond = Some(log.segments[0].len + 150_000);
    assert!(log.append(record(2, 2, data.clone())).is_err());
    log.fail_writes_beyond = None;
    let rep = log.append(record(2, 2, data.clone())).unwrap();
    assert!(rep.stored_bytes > 0, "the bytes were stored again");
    log.verify().unwrap();
    drop(log);
    let log = Log::open_append(tmp.path()).unwrap();
    log.verify().unwrap();
    let into = tmp.path().join("r");
    log.replay(2, &into, &no_sync()).unwrap();
    assert_eq!(fs::read(into.join("f2")).unwrap(), data);
}

/// Compaction writes through the same writer and its fault seam: a full disk at any point
/// leaves the log as it was.
#[test]
fn compaction_on_a_full_disk_changes_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    let opts = || LogOptions {
        chunk_size: 4096,
        ..Default::default()
    };
    let mut log = Log::open_append_with(tmp.path(), opts()).unwrap();
    for h in 1..=4 {
        log.append(record(h, h % 2 + 1, noise(h, 30_000))).unwrap();
    }
    log.drop_heights(&[2]).unwrap();
    let heights = |l: &Log| l.heights().iter().map(|h| h.hash).collect::<Vec<_>>();
    let want = heights(&log);
    drop(log);
    for limit in [40, 1000, 20_000, 60_000] {
        let mut l = Log::open_append_with(tmp.path(), opts()).unwrap();
        l.fail_writes_beyond = Some(limit);
        let e = l.compact().err().expect("the full disk fails compaction");
        assert!(e.is_io_kind(std::io::ErrorKind::StorageFull), "{e}");
        let reopened = Log::open_append_with(tmp.path(), opts()).unwrap();
        assert_eq!(heights(&reopened), want, "limit {limit}");
        reopened.verify().unwrap();
    }
}

/// The fuzz targets' forger writes exactly what the appender writes for the same records, so
/// what it forges differs from a real log only where the fuzzer says.
#[test]
fn forged_segment_is_what_the_appender_writes() {
    let tmp = tempfile::tempdir().unwrap();
    let mut log = Log::open_append(tmp.path()).unwrap();
    for h in 1..=3 {
        log.append(record(h, h, noise(h, 9000 * h as usize)))
            .unwrap();
    }
    drop(log);
    let seg = fs::read(tmp.path().join(seg_name(1))).unwrap();
    let parts = testing::split_segment(&seg);
    assert_eq!(
        parts.iter().map(|f| f.height).collect::<Vec<_>>(),
        [1, 2, 3]
    );
    assert_eq!(testing::forged_segment(&parts), seg);
    testing::decode_headers(&seg[..32]);
    testing::decode_headers(&seg[32..]);
}
