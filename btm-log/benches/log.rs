//! Micro-benchmarks of the log: appending one 64 MiB height, replaying a 256 MiB tree.
//! No root needed; everything lives in temporary directories.
//! `cargo bench -p btm-agent --bench log`
use std::{hint::black_box, time::Duration};

use btm_log::{CutRecord, Entry, ExtentBytes, ExtentData, Log, LogOptions, NsOp, ReplayOptions};
use criterion::{BatchSize, Criterion, Throughput, criterion_group, criterion_main};

const MIB: usize = 1 << 20;

/// `n` bytes like chain state pages: each 4 KiB half random, half zeros (about 2:1 for zstd).
fn pages(n: usize, seed: u64) -> Vec<u8> {
    let mut x = seed | 1;
    let mut v = vec![0u8; n];
    for page in v.chunks_mut(4096) {
        let half = page.len() / 2;
        for w in page[..half].chunks_mut(8) {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            w.copy_from_slice(&x.to_le_bytes()[..w.len()]);
        }
    }
    v
}

fn file(path: &str, id: u64, data: Vec<u8>) -> (Vec<NsOp>, ExtentData) {
    let ops = vec![
        NsOp::Put {
            path: path.as_bytes().to_vec(),
            entry: Entry::File {
                id,
                mode: 0o644,
                uid: 0,
                gid: 0,
            },
        },
        NsOp::SetSize {
            id,
            size: data.len() as u64,
        },
    ];
    let ext = ExtentData {
        id,
        offset: 0,
        bytes: ExtentBytes::Data(data),
    };
    (ops, ext)
}

fn append_64mib(c: &mut Criterion) {
    let dir = tempfile::tempdir().unwrap();
    let mut log = Log::open_append_with(dir.path(), LogOptions::default()).unwrap();
    let base = pages(64 * MIB, 7);
    let mut height = 0u64;
    let mut g = c.benchmark_group("log");
    g.sample_size(10);
    g.measurement_time(Duration::from_secs(10));
    g.throughput(Throughput::Bytes(base.len() as u64));
    g.bench_function("append 64 MiB record", |b| {
        b.iter_batched(
            || {
                // Fresh bytes in every 1 MiB piece so nothing deduplicates against the log.
                height += 1;
                let mut data = base.clone();
                for (i, piece) in data.chunks_mut(MIB).enumerate() {
                    piece[..8].copy_from_slice(&(height << 16 | i as u64).to_le_bytes());
                }
                let (ops, ext) = file("state.mdbx", 1, data);
                CutRecord {
                    height,
                    time_unix_ms: height,
                    ops,
                    extents: vec![ext],
                }
            },
            |rec| black_box(log.append(rec).unwrap()),
            BatchSize::PerIteration,
        )
    });
    g.finish();
}

fn replay_256mib(c: &mut Criterion) {
    let dir = tempfile::tempdir().unwrap();
    let log_dir = dir.path().join("log");
    std::fs::create_dir(&log_dir).unwrap();
    let mut log = Log::open_append(&log_dir).unwrap();
    let mut rec = CutRecord {
        height: 1,
        time_unix_ms: 1,
        ..Default::default()
    };
    for i in 0..16u64 {
        let (ops, ext) = file(&format!("f{i:02}.dat"), i + 1, pages(16 * MIB, 100 + i));
        rec.ops.extend(ops);
        rec.extents.push(ext);
    }
    log.append(rec).unwrap();
    drop(log);
    let log = Log::open_read(&log_dir).unwrap();
    let opts = ReplayOptions {
        progress: false,
        sync: false,
        ..Default::default()
    };
    let mut g = c.benchmark_group("replay");
    g.sample_size(10);
    g.measurement_time(Duration::from_secs(10));
    g.throughput(Throughput::Bytes(256 * MIB as u64));
    g.bench_function("replay 256 MiB tree into an empty dir", |b| {
        b.iter_batched(
            || tempfile::tempdir_in(dir.path()).unwrap(),
            |into| {
                black_box(log.replay(1, into.path(), &opts).unwrap());
                into
            },
            BatchSize::PerIteration,
        )
    });
    g.finish();
}

criterion_group!(benches, append_64mib, replay_256mib);
criterion_main!(benches);
