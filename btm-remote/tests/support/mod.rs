//! What the btm-remote integration tests share: a log of scattered 4 KiB blocks, stores on
//! `file://`, and a walk of a store's files.
#![allow(dead_code)]

use std::path::{Path, PathBuf};

use btm_log::testing::{file_op, noise};
use btm_log::{CutRecord, ExtentBytes, ExtentData, Log, NsOp, ReplayOptions};
use btm_remote::{PushOptions, Remote, RemoteKey};

pub const BLOCK: u64 = 4096;
/// Blocks a height after the first rewrites (one payload each: they are not adjacent).
pub const CHANGED: u64 = 24;

pub fn no_sync() -> ReplayOptions {
    ReplayOptions {
        progress: false,
        sync: false,
        ..Default::default()
    }
}

/// Height 1: files f1..f3 of 128 blocks, every other block written (64 payloads each). Later
/// heights rewrite `CHANGED` scattered even blocks of one file.
pub fn record(h: u64) -> CutRecord {
    let mut r = CutRecord {
        height: h,
        time_unix_ms: h,
        ops: vec![],
        extents: vec![],
    };
    let block = |id: u64, b: u64, seed: u64| ExtentData {
        id,
        offset: b * 2 * BLOCK,
        // noise() seeds differing only in the lowest bit give the same bytes.
        bytes: ExtentBytes::Data(noise(2 * seed + 1, BLOCK as usize)),
    };
    if h == 1 {
        for id in 1..=3u64 {
            r.ops.push(file_op(format!("f{id}").as_bytes(), id));
            r.ops.push(NsOp::SetSize {
                id,
                size: 128 * BLOCK,
            });
            r.extents
                .extend((0..64).map(|b| block(id, b, id * 1000 + b)));
        }
    } else {
        let id = h % 3 + 1;
        r.extents
            .extend((0..CHANGED).map(|i| block(id, (h * 7 + 5 * i) % 64, h * 100_000 + i)));
    }
    r
}

pub fn log_with(dir: &Path, heights: std::ops::RangeInclusive<u64>) -> Log {
    let mut log = Log::open_append(dir).unwrap();
    for h in heights {
        log.append(record(h)).unwrap();
    }
    drop(log);
    Log::open_read(dir).unwrap()
}

pub fn open(store: &Path, key: Option<[u8; 32]>, legacy: bool) -> Remote {
    Remote::open(&format!("file://{}", store.display()))
        .unwrap()
        .with_key(key.map(|k| RemoteKey::from_secret(&k)))
        .with_legacy_layout(legacy)
}

pub fn opts(name: &str) -> PushOptions {
    PushOptions {
        name: name.into(),
        ..Default::default()
    }
}

pub fn walk(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let Ok(rd) = std::fs::read_dir(dir) else {
        return out;
    };
    for e in rd.flatten() {
        if e.file_type().unwrap().is_dir() {
            out.extend(walk(&e.path()));
        } else {
            out.push(e.path());
        }
    }
    out.sort();
    out
}

pub fn tree(dir: &Path) -> String {
    btm_testkit::tree_digest(dir)
}

pub const KEY: [u8; 32] = [0x33; 32];
