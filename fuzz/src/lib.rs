//! What the log fuzz targets share: a scratch log directory per process (on tmpfs when there is
//! one), the forged-log input encoding, and the run of every reader over a log.
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use btm_log::testing::Forged;
use btm_log::{Log, ReplayOptions};

/// The forged-log input: records, each `[height delta: u8][payloads len: u32 LE][payloads]
/// [meta len: u32 LE][meta]`; a length past the end takes what is left.
pub fn decode_forged(mut data: &[u8]) -> Vec<Forged> {
    let mut out = Vec::new();
    let mut height = 0u64;
    let take = |d: &mut &[u8]| -> Vec<u8> {
        let Some(len) = d.get(..4) else {
            let all = d.to_vec();
            *d = &[];
            return all;
        };
        let n = (u32::from_le_bytes(len.try_into().unwrap()) as usize).min(d.len() - 4);
        let v = d[4..4 + n].to_vec();
        *d = &d[4 + n..];
        v
    };
    while let Some((&delta, rest)) = data.split_first() {
        data = rest;
        height = height.saturating_add(delta as u64);
        let payloads = take(&mut data);
        let meta = take(&mut data);
        out.push(Forged {
            height,
            payloads,
            meta,
        });
    }
    out
}

/// The inverse of [`decode_forged`], for seeds (heights must rise by at most 255).
pub fn encode_forged(records: &[Forged]) -> Vec<u8> {
    let mut out = Vec::new();
    let mut prev = 0;
    for r in records {
        out.push(u8::try_from(r.height - prev).expect("height step of at most 255"));
        prev = r.height;
        for part in [&r.payloads, &r.meta] {
            out.extend((part.len() as u32).to_le_bytes());
            out.extend_from_slice(part);
        }
    }
    out
}

fn scratch() -> &'static Path {
    static DIR: OnceLock<tempfile::TempDir> = OnceLock::new();
    DIR.get_or_init(|| {
        let shm = Path::new("/dev/shm");
        if shm.is_dir() {
            tempfile::tempdir_in(shm)
        } else {
            tempfile::tempdir()
        }
        .expect("scratch directory")
    })
    .path()
}

/// Writes `segment` as the only segment of a fresh log and runs every reader over it: open,
/// verify, fold and replay of each height into one directory (an in-place restore moving
/// between heights). Nothing may panic, and nothing may appear outside the replay target.
pub fn exercise_log(segment: &[u8]) {
    let root = scratch();
    let (log_dir, into) = (root.join("log"), root.join("into"));
    for d in [&log_dir, &into] {
        let _ = std::fs::remove_dir_all(d);
        std::fs::create_dir(d).unwrap();
    }
    std::fs::write(log_dir.join("seg-00000001.btm"), segment).unwrap();
    let Ok(log) = Log::open_read(&log_dir) else {
        return;
    };
    let _ = log.verify();
    let opts = ReplayOptions {
        progress: false,
        sync: false,
        ..Default::default()
    };
    for h in log.heights() {
        if log.state_at(h.height).is_ok() {
            let _ = log.replay(h.height, &into, &opts);
        }
    }
    let mut found: Vec<PathBuf> = std::fs::read_dir(root)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    found.sort();
    assert_eq!(found, [into, log_dir], "replay wrote outside its target");
}
