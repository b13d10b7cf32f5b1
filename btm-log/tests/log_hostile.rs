//! Hostile paths and damaged logs.

#[path = "log_support.rs"]
mod support;

use std::os::unix::fs::FileExt;
use std::path::Path;

use btm_log::{CutRecord, Entry, ExtentBytes, ExtentData, Log, LogError, NsOp, ReplayOptions};
use support::{Model, Rng, assert_tree};

fn opts() -> ReplayOptions {
    ReplayOptions {
        progress: false,
        sync: false,
        ..Default::default()
    }
}

fn file(path: &[u8], id: u64) -> NsOp {
    NsOp::Put {
        path: path.to_vec(),
        entry: Entry::File {
            id,
            mode: 0o644,
            uid: 0,
            gid: 0,
        },
    }
}

fn dir_listing(dir: &Path) -> Vec<(String, u64)> {
    let mut v: Vec<(String, u64)> = std::fs::read_dir(dir)
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

#[test]
fn hostile_paths_are_refused_at_append() {
    let tmp = tempfile::tempdir().unwrap();
    let logdir = tmp.path().join("log");
    let mut log = Log::open_append(&logdir).unwrap();
    let mut m = Model::new();
    m.mkdir(b"a".to_vec(), 0o755);
    log.append(m.cut(1)).unwrap();
    let before = dir_listing(&logdir);
    let mut h = 2;
    let bad: &[&[u8]] = &[
        b"../x",
        b"/abs",
        b"a/../../b",
        b"",
        b"a//b",
        b"a/./b",
        b"a/",
        b".",
        b"..",
        b"a\0b",
    ];
    for p in bad {
        for op in [file(p, 7), NsOp::Remove { path: p.to_vec() }] {
            let e = log
                .append(CutRecord {
                    height: h,
                    ops: vec![op],
                    ..Default::default()
                })
                .unwrap_err();
            assert!(matches!(e, LogError::UnsafePath { .. }), "{e}");
            h += 1;
        }
    }
    // A symlink target may be anything but NUL-free and non-empty.
    let e = log
        .append(CutRecord {
            height: h,
            ops: vec![NsOp::Put {
                path: b"l".to_vec(),
                entry: Entry::Symlink {
                    target: b"x\0y".to_vec(),
                    uid: 0,
                    gid: 0,
                },
            }],
            ..Default::default()
        })
        .unwrap_err();
    assert!(matches!(e, LogError::UnsafePath { .. }), "{e}");
    // The symlink-parent escape: a -> /etc, then a/passwd.
    let outside = tmp.path().join("outside");
    std::fs::create_dir(&outside).unwrap();
    let e = log
        .append(CutRecord {
            height: h + 1,
            ops: vec![
                NsOp::Put {
                    path: b"s".to_vec(),
                    entry: Entry::Symlink {
                        target: outside.as_os_str().as_encoded_bytes().to_vec(),
                        uid: 0,
                        gid: 0,
                    },
                },
                file(b"s/passwd", 8),
                NsOp::SetSize { id: 8, size: 4 },
            ],
            extents: vec![ExtentData {
                id: 8,
                offset: 0,
                bytes: ExtentBytes::Data(b"root".to_vec()),
            }],
            ..Default::default()
        })
        .unwrap_err();
    assert!(e.to_string().contains("s/passwd"), "{e}");
    // Unknown parents, ids, removals.
    for (ops, ext) in [
        (vec![file(b"nodir/f", 9)], vec![]),
        (
            vec![NsOp::Remove {
                path: b"nothing".to_vec(),
            }],
            vec![],
        ),
        (vec![NsOp::SetSize { id: 1234, size: 1 }], vec![]),
        (
            vec![],
            vec![ExtentData {
                id: 1234,
                offset: 0,
                bytes: ExtentBytes::Zero(1),
            }],
        ),
    ] {
        let e = log
            .append(CutRecord {
                height: h + 2,
                ops,
                extents: ext,
                ..Default::default()
            })
            .unwrap_err();
        assert!(matches!(e, LogError::InvalidRecord { .. }), "{e}");
    }
    // Nothing was written, and the log still works.
    assert_eq!(dir_listing(&logdir), before);
    assert_eq!(log.last_height(), Some(1));
    m.mkdir(b"a/b".to_vec(), 0o755);
    log.append(m.cut(1000)).unwrap();
    assert!(std::fs::read_dir(&outside).unwrap().next().is_none());
    log.verify().unwrap();
}

/// Whatever the target already holds, replay never follows a symlink out of it.
#[test]
fn existing_symlinks_in_the_target_are_not_followed() {
    let tmp = tempfile::tempdir().unwrap();
    let mut log = Log::open_append(&tmp.path().join("log")).unwrap();
    let mut m = Model::new();
    m.mkdir(b"a".to_vec(), 0o755);
    let id = m.new_file(b"a/passwd".to_vec(), 0o644, 0, 0);
    m.set_size(id, 5);
    m.write(id, 0, ExtentBytes::Data(b"owned".to_vec()));
    let id = m.new_file(b"victim".to_vec(), 0o644, 0, 0);
    m.set_size(id, 5);
    m.write(id, 0, ExtentBytes::Data(b"owned".to_vec()));
    log.append(m.cut(1)).unwrap();

    let outside = tmp.path().join("outside");
    std::fs::create_dir(&outside).unwrap();
    std::fs::write(outside.join("passwd"), b"secret").unwrap();
    std::fs::write(outside.join("victim"), b"secret").unwrap();
    let into = tmp.path().join("t");
    std::fs::create_dir(&into).unwrap();
    std::os::unix::fs::symlink(&outside, into.join("a")).unwrap();
    std::os::unix::fs::symlink(outside.join("victim"), into.join("victim")).unwrap();
    log.replay(1, &into, &opts()).unwrap();
    assert_tree(&into, &m, "over symlinks");
    assert_eq!(std::fs::read(outside.join("passwd")).unwrap(), b"secret");
    assert_eq!(std::fs::read(outside.join("victim")).unwrap(), b"secret");
    assert_eq!(std::fs::read_dir(&outside).unwrap().count(), 2);
}

/// A log in `dir/log` holding one empty height, 1.
fn empty_height_one(dir: &Path) -> Log {
    let mut log = Log::open_append(&dir.join("log")).unwrap();
    log.append(CutRecord {
        height: 1,
        ..Default::default()
    })
    .unwrap();
    log
}

/// A target that is itself a symlink (the node can plant one) is refused: replay would empty
/// the directory it names.
#[test]
fn symlinked_target_is_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let log = empty_height_one(tmp.path());
    let other = tmp.path().join("other");
    std::fs::create_dir(&other).unwrap();
    std::fs::write(other.join("precious"), b"keep").unwrap();
    let into = tmp.path().join("restore");
    std::os::unix::fs::symlink(&other, &into).unwrap();
    let e = log.replay(1, &into, &opts()).unwrap_err();
    assert!(e.to_string().contains("the target is a symlink"), "{e}");
    assert_eq!(std::fs::read(other.join("precious")).unwrap(), b"keep");
}

/// Replay refuses to run when the log lives inside the target (it would delete it).
#[test]
fn log_inside_target_is_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let log = empty_height_one(tmp.path());
    let e = log.replay(1, tmp.path(), &opts()).unwrap_err();
    assert!(e.to_string().contains("inside the target"), "{e}");
    assert!(tmp.path().join("log/seg-00000001.btm").exists());
}

struct Built {
    dir: tempfile::TempDir,
    /// (height, path, id) of a file whose data is stored in that height's record.
    marks: Vec<(u64, Vec<u8>, u64)>,
}

fn build() -> Built {
    let dir = tempfile::tempdir().unwrap();
    let mut log = Log::open_append(dir.path()).unwrap();
    let mut rng = Rng(11);
    let mut m = Model::new();
    let mut marks = Vec::new();
    for h in 1..=5u64 {
        let p = format!("file {h}\n").into_bytes();
        let id = m.new_file(p.clone(), 0o644, 0, 0);
        m.set_size(id, 50_000);
        let noise: Vec<u8> = (0..50_000 / 8)
            .flat_map(|_| rng.next_u64().to_le_bytes())
            .collect();
        m.write(id, 0, ExtentBytes::Data(noise));
        log.append(m.cut(h * 10)).unwrap();
        marks.push((h * 10, p, id));
    }
    Built { dir, marks }
}

fn flip(path: &Path, at: u64) {
    let f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(path)
        .unwrap();
    let mut b = [0u8];
    f.read_exact_at(&mut b, at).unwrap();
    b[0] ^= 0x20;
    f.write_all_at(&b, at).unwrap();
}

#[test]
fn flipped_payload_byte_is_named_by_verify() {
    let b = build();
    let log = Log::open_read(b.dir.path()).unwrap();
    let (h, path, id) = b.marks[2].clone();
    let st = log.state_at(h).unwrap();
    let piece = st.file(id).unwrap().pieces.values().next().unwrap().clone();
    let seg = log.segment_paths()[piece.payload.seg as usize - 1].clone();
    drop(log);
    flip(&seg, piece.payload.offset + piece.payload.stored_len / 2);

    let log = Log::open_read(b.dir.path()).unwrap();
    assert_eq!(
        log.heights().len(),
        5,
        "a payload flip is not visible at open"
    );
    let e = log.verify().unwrap_err();
    let msg = e.to_string();
    match &e {
        LogError::CorruptExtent {
            height, path: p, ..
        } => {
            assert_eq!(*height, h);
            assert_eq!(p, &btm_log::display_path(&path));
        }
        other => panic!("expected CorruptExtent, got {other}"),
    }
    assert!(
        msg.contains(&format!("height {h}")) && msg.contains("file 3\\n"),
        "{msg}"
    );
    // Replay of a height that needs it fails the same way; one that does not need it works.
    let into = b.dir.path().join("r");
    let e = log.replay(50, &into, &opts()).unwrap_err();
    assert!(
        matches!(e, LogError::CorruptExtent { height: 30, .. }),
        "{e}"
    );
    let into2 = b.dir.path().join("r2");
    log.replay(20, &into2, &opts()).unwrap();
}

#[test]
fn flipped_metadata_byte_is_found_at_open() {
    let b = build();
    let rec_off = {
        let log = Log::open_read(b.dir.path()).unwrap();
        32 + log.heights()[..2]
            .iter()
            .map(|h| h.stored_bytes)
            .sum::<u64>()
    };
    let seg = b.dir.path().join("seg-00000001.btm");
    // A byte inside the metadata block of the third record (height 30).
    let meta_at = rec_off + meta_start(&seg, rec_off);
    flip(&seg, meta_at + 10);
    let e = Log::open_read(b.dir.path()).err().expect("open must fail");
    let msg = e.to_string();
    assert!(matches!(e, LogError::Corrupt { .. }), "{msg}");
    assert!(msg.contains(&format!("offset {rec_off}")), "{msg}");
    assert!(
        Log::open_append(b.dir.path()).is_err(),
        "the appender must not cut acknowledged records"
    );
    flip(&seg, meta_at + 10);
    // A byte inside its header.
    flip(&seg, rec_off + 20);
    assert!(Log::open_read(b.dir.path()).is_err());
    flip(&seg, rec_off + 20);
    // A byte inside its trailer (the hash): the chain check finds it at open.
    let log = Log::open_read(b.dir.path()).unwrap();
    let len3 = log.heights()[2].stored_bytes;
    drop(log);
    flip(&seg, rec_off + len3 - 5);
    let e = Log::open_read(b.dir.path()).err().expect("open must fail");
    assert!(e.to_string().contains("hash chain"), "{e}");
    flip(&seg, rec_off + len3 - 5);
    Log::open_read(b.dir.path()).unwrap().verify().unwrap();
}

#[test]
fn damaged_last_record_is_a_torn_tail() {
    let b = build();
    let log = Log::open_read(b.dir.path()).unwrap();
    let hs = log.heights();
    let total: u64 = 32 + hs.iter().map(|h| h.stored_bytes).sum::<u64>();
    let last_off = total - hs[4].stored_bytes;
    drop(log);
    let seg = b.dir.path().join("seg-00000001.btm");
    // A payload byte of the last record: read mode does not look; the appender does and cuts.
    flip(&seg, last_off + hs[4].stored_bytes - 1000);
    let log = Log::open_read(b.dir.path()).unwrap();
    assert_eq!(log.last_height(), Some(50));
    assert!(log.verify().is_err());
    drop(log);
    let log = Log::open_append(b.dir.path()).unwrap();
    assert_eq!(log.last_height(), Some(40));
    assert_eq!(log.torn_tail().map(|t| t.offset), Some(last_off));
    log.verify().unwrap();
}

/// Where the metadata block of the record at `rec` starts, from its header (docs/FORMAT.md):
/// right after the header in version 1, after the payload section in version 2.
fn meta_start(seg: &std::path::Path, rec: u64) -> u64 {
    use std::os::unix::fs::FileExt;
    let mut h = [0u8; 128];
    std::fs::File::open(seg)
        .unwrap()
        .read_exact_at(&mut h, rec)
        .unwrap();
    let version = u16::from_le_bytes(h[8..10].try_into().unwrap());
    let payload_len = u64::from_le_bytes(h[40..48].try_into().unwrap());
    match version {
        1 => 128,
        2 => 128 + payload_len,
        v => panic!("unknown record version {v}"),
    }
}
