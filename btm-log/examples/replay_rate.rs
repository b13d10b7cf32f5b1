//! What replay into an empty directory costs, without root (issue 16, goal 4).
//!
//! `replay_rate build LOG [GIB]` writes a log of one height shaped like `cargo xtask bench`'s
//! data set (GIB GiB, default 4): half a state file of 4 KiB pages half random and half zero,
//! 30 % random 128 MiB block files, 20 % random 8 MiB tables.
//! `replay_rate run LOG INTO` replays it into INTO (which must not exist) with the final
//! syncfs, as `btm-agent replay` does, and prints the time and the rate. Evict the log from the
//! page cache first (or not) to measure the cold (or warm) case.
//!
//! Run with `--release`: `cargo run --release -p btm-log --example replay_rate -- build /tmp/l`.

use std::path::Path;
use std::time::Instant;

use btm_log::{CutRecord, Entry, ExtentBytes, ExtentData, Log, NsOp, ReplayOptions};

const MIB: u64 = 1 << 20;

/// `n` bytes from `seed`; with `half_zero`, the second half of every 4 KiB page is zero.
fn bytes(n: u64, seed: u64, half_zero: bool) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    let mut v = vec![0u8; n as usize];
    for page in v.chunks_mut(4096) {
        let fill = if half_zero {
            page.len() / 2
        } else {
            page.len()
        };
        for w in page[..fill].chunks_mut(8) {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            w.copy_from_slice(&x.to_le_bytes()[..w.len()]);
        }
    }
    v
}

/// Adds a file holding `data` at `path` to `rec`, and appends `rec` as a height of its own
/// once it holds 512 MiB (so building takes memory for one such record, not the whole log).
fn put(log: &mut Log, rec: &mut CutRecord, next_id: &mut u64, path: &str, data: Vec<u8>) {
    let id = *next_id;
    *next_id += 1;
    rec.ops.push(NsOp::Put {
        path: path.as_bytes().to_vec(),
        entry: Entry::File {
            id,
            mode: 0o644,
            uid: 0,
            gid: 0,
        },
    });
    rec.ops.push(NsOp::SetSize {
        id,
        size: data.len() as u64,
    });
    // The state file is captured as the agent captures it: 1 MiB extents.
    let mut off = 0;
    for chunk in data.chunks(MIB as usize) {
        rec.extents.push(ExtentData {
            id,
            offset: off,
            bytes: ExtentBytes::Data(chunk.to_vec()),
        });
        off += chunk.len() as u64;
    }
    if rec.extents.len() >= 512 {
        let next = rec.height + 1;
        log.append(std::mem::take(rec)).expect("append");
        rec.height = next;
        rec.time_unix_ms = next;
    }
}

fn build(dir: &Path, gib: u64) {
    std::fs::create_dir_all(dir).expect("log dir");
    let mut log = Log::open_append(dir).expect("open log");
    let total = gib << 30;
    let mut rec = CutRecord {
        height: 1,
        time_unix_ms: 1,
        ..Default::default()
    };
    let mut id = 1;
    for d in ["blocks", "chainstate"] {
        rec.ops.push(NsOp::Put {
            path: d.as_bytes().to_vec(),
            entry: Entry::Dir {
                mode: 0o755,
                uid: 0,
                gid: 0,
            },
        });
    }
    put(
        &mut log,
        &mut rec,
        &mut id,
        "state.mdbx",
        bytes(total / 2, 7, true),
    );
    for i in 0..(total * 3 / 10).div_ceil(128 * MIB) {
        let path = format!("blocks/blk{i:05}.dat");
        put(
            &mut log,
            &mut rec,
            &mut id,
            &path,
            bytes(128 * MIB, 100 + i, false),
        );
    }
    for i in 0..(total / 5).div_ceil(8 * MIB) {
        let path = format!("chainstate/{i:06}.ldb");
        put(
            &mut log,
            &mut rec,
            &mut id,
            &path,
            bytes(8 * MIB, 10_000 + i, false),
        );
    }
    if !rec.ops.is_empty() {
        log.append(rec).expect("append");
    }
    println!("built: heights 1 to {:?}", log.last_height());
}

fn run(dir: &Path, into: &Path) {
    let log = Log::open_read(dir).expect("open log");
    let height = log.last_height().expect("a height");
    let opts = ReplayOptions {
        progress: false,
        sync: true,
        ..Default::default()
    };
    let t = Instant::now();
    let st = log.replay(height, into, &opts).expect("replay");
    let secs = t.elapsed().as_secs_f64();
    println!(
        "replayed {} bytes ({} with O_DIRECT) in {secs:.2} s: {:.0} MB/s",
        st.bytes_written,
        st.bytes_direct,
        st.bytes_written as f64 / secs / 1e6
    );
}

fn main() {
    let a: Vec<String> = std::env::args().skip(1).collect();
    match a.iter().map(String::as_str).collect::<Vec<_>>()[..] {
        ["build", dir] => build(Path::new(dir), 4),
        ["build", dir, gib] => build(Path::new(dir), gib.parse().expect("GIB")),
        ["run", dir, into] => run(Path::new(dir), Path::new(into)),
        _ => {
            eprintln!("usage: replay_rate build LOG [GIB] | replay_rate run LOG INTO");
            std::process::exit(2);
        }
    }
}
