//! Small record builders for tests, here and in crates built on the log (feature `testing`).

use crate::{CutRecord, Entry, ExtentBytes, ExtentData, NsOp};

/// Puts a regular file with `id` at `path` (mode 0644, root-owned).
pub fn file_op(path: &[u8], id: u64) -> NsOp {
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

/// Height `height`: file `f<id>` holding `data`.
pub fn record(height: u64, id: u64, data: Vec<u8>) -> CutRecord {
    let name = format!("f{id}").into_bytes();
    CutRecord {
        height,
        time_unix_ms: height,
        ops: vec![
            file_op(&name, id),
            NsOp::SetSize {
                id,
                size: data.len() as u64,
            },
        ],
        extents: vec![ExtentData {
            id,
            offset: 0,
            bytes: ExtentBytes::Data(data),
        }],
    }
}

/// Deterministic incompressible bytes (xorshift).
pub fn noise(seed: u64, n: usize) -> Vec<u8> {
    let mut x = seed | 1;
    (0..n)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}
