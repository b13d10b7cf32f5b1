//! Replay's writer thread: a fresh replay hands its writes to it (and stays byte-exact), and a
//! damaged payload in the middle of a replay is refused before any of its bytes are written.

#[path = "log_support.rs"]
mod support;

use std::os::unix::fs::{FileExt, PermissionsExt};

use btm_log::{ExtentBytes, Log, LogError};
use support::{Model, Rng, assert_tree, quiet};

const FILES: u64 = 8;
const SIZE: u64 = 256 << 10;

/// A log at height 1 of `FILES` files (noise: stored raw, so only blake3 notices a flipped
/// byte), plus a set-uid one; the model and the files' ids.
fn build(dir: &std::path::Path) -> (Model, Vec<u64>) {
    let mut log = Log::open_append(dir).unwrap();
    let mut rng = Rng(16);
    let mut m = Model::new();
    m.mkdir(b"db".to_vec(), 0o755);
    let mut ids = Vec::new();
    for i in 0..FILES {
        let id = m.new_file(format!("db/{i:02}.ldb").into_bytes(), 0o644, 0, 0);
        m.set_size(id, SIZE);
        m.write(id, 0, ExtentBytes::Data(rng.bytes(SIZE as usize)));
        ids.push(id);
    }
    // A write after chmod would clear a set-uid bit (without CAP_FSETID): replay waits for
    // the file's writes before setting its mode.
    let id = m.new_file(b"db/tool".to_vec(), 0o4755, 0, 0);
    m.set_size(id, SIZE);
    m.write(id, 0, ExtentBytes::Data(rng.bytes(SIZE as usize)));
    log.append(m.cut(1)).unwrap();
    (m, ids)
}

#[test]
fn fresh_replay_writes_on_the_writer_thread() {
    let tmp = tempfile::tempdir().unwrap();
    let logdir = tmp.path().join("log");
    let (m, _) = build(&logdir);
    let log = Log::open_read(&logdir).unwrap();
    let into = tmp.path().join("tree");
    // With sync: the writer thread also starts each range's writeback.
    let synced = btm_log::ReplayOptions {
        sync: true,
        ..quiet()
    };
    let st = log.replay(1, &into, &synced).unwrap();
    assert!(st.writes_in_parallel > FILES, "{st:?}");
    assert_eq!(st.bytes_written, (FILES + 1) * SIZE);
    // Every file is one run of whole blocks: all of it goes past the page cache, where the
    // target's filesystem takes O_DIRECT.
    if takes_o_direct(&into) {
        assert_eq!(st.bytes_direct, st.bytes_written, "{st:?}");
    } else {
        eprintln!(
            "SKIP the O_DIRECT half: {} refuses O_DIRECT",
            into.display()
        );
    }
    assert_tree(&into, &m, "parallel replay");
    let mode = std::fs::metadata(into.join("db/tool"))
        .unwrap()
        .permissions();
    assert_eq!(mode.mode() & 0o7777, 0o4755);
    // Onto itself: nothing to write, nothing handed over.
    let st = log.replay(1, &into, &quiet()).unwrap();
    assert_eq!((st.writes_in_parallel, st.bytes_written), (0, 0), "{st:?}");
}

fn takes_o_direct(dir: &std::path::Path) -> bool {
    use std::os::unix::fs::OpenOptionsExt;
    let probe = dir.join(".o_direct_probe");
    let ok = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .custom_flags(libc::O_DIRECT)
        .open(&probe)
        .is_ok();
    let _ = std::fs::remove_file(&probe);
    ok
}

#[test]
fn damaged_payload_mid_replay_is_refused_unwritten() {
    let tmp = tempfile::tempdir().unwrap();
    let logdir = tmp.path().join("log");
    let (m, ids) = build(&logdir);
    let log = Log::open_read(&logdir).unwrap();
    let bad = ids[FILES as usize / 2];
    let st = log.state_at(1).unwrap();
    let piece = st
        .file(bad)
        .unwrap()
        .pieces
        .values()
        .next()
        .unwrap()
        .clone();
    let seg = log.segment_paths()[piece.payload.seg as usize - 1].clone();
    drop(log);
    let f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(&seg)
        .unwrap();
    let at = piece.payload.offset + piece.payload.stored_len - 100;
    let mut b = [0u8];
    f.read_exact_at(&mut b, at).unwrap();
    f.write_all_at(&[b[0] ^ 0x20], at).unwrap();

    let log = Log::open_read(&logdir).unwrap();
    let into = tmp.path().join("tree");
    let e = log.replay(1, &into, &quiet()).unwrap_err();
    let name = format!("db/{:02}.ldb", FILES / 2);
    match &e {
        LogError::CorruptExtent {
            height, path, what, ..
        } => {
            assert_eq!((*height, path.as_str()), (1, name.as_str()), "{e}");
            assert!(what.contains("blake3"), "{e}");
        }
        other => panic!("expected CorruptExtent, got {other}"),
    }
    // The files before it were written whole; none of the damaged payload's bytes were.
    for (i, id) in ids.iter().enumerate().take(FILES as usize / 2) {
        let got = std::fs::read(into.join(format!("db/{i:02}.ldb"))).unwrap();
        assert!(got == m.files[id].data, "file {i} differs");
    }
    let got = std::fs::read(into.join(&name)).unwrap_or_default();
    assert!(got.iter().all(|&b| b == 0), "damaged bytes were written");
}
