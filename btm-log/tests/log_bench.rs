//! Throughput numbers (ignored by default). Run in release mode:
//! `cargo test --release -p btm-agent --test log_bench -- --ignored --nocapture`
//! Size with BTM_BENCH_MIB (default 256).

#[path = "log_support.rs"]
mod support;

use std::time::Instant;

use btm_log::{ExtentBytes, Log, ReplayOptions};
use support::{Model, Rng, assert_tree};

fn mbs(bytes: u64, secs: f64) -> String {
    format!("{:.0} MB/s", bytes as f64 / 1e6 / secs)
}

#[test]
#[ignore]
fn bench_log_throughput() {
    let mib: u64 = std::env::var("BTM_BENCH_MIB")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(256);
    let tmp = tempfile::tempdir().unwrap();
    let logdir = tmp.path().join("log");
    let mut log = Log::open_append(&logdir).unwrap();
    let mut rng = Rng(2024);
    let mut m = Model::new();
    const FILE: u64 = 4 << 20;
    let files = mib * (1 << 20) / FILE;
    m.mkdir(b"db".to_vec(), 0o755);
    let mut ids = Vec::new();
    for i in 0..files {
        let id = m.new_file(format!("db/{i:06}.ldb").into_bytes(), 0o644, 0, 0);
        m.set_size(id, FILE);
        // Half of the files compress (runs), half do not (noise).
        let d = if i % 2 == 0 {
            rng.data(FILE as usize)
        } else {
            rng.bytes(FILE as usize)
        };
        m.write(id, 0, ExtentBytes::Data(d));
        ids.push(id);
    }
    let total = files * FILE;
    let t = Instant::now();
    let info = log.append(m.cut(1)).unwrap();
    let secs = t.elapsed().as_secs_f64();
    println!(
        "baseline append: {} MiB in {secs:.2}s = {} (stored {} MiB)",
        total >> 20,
        mbs(total, secs),
        info.stored_bytes >> 20
    );
    let first = m.clone();
    // 20 heights, each rewriting ~1% of the tree in 64 KiB extents.
    let mut inc_bytes = 0;
    let t = Instant::now();
    for h in 2..=21 {
        for _ in 0..(total / 100 / (64 << 10)).max(1) {
            let id = *rng.pick(&ids);
            let off = rng.below(FILE / (64 << 10)) * (64 << 10);
            m.write(id, off, ExtentBytes::Data(rng.bytes(64 << 10)));
            inc_bytes += 64 << 10;
        }
        log.append(m.cut(h)).unwrap();
    }
    let secs = t.elapsed().as_secs_f64();
    println!(
        "20 incremental appends: {} MiB in {secs:.2}s = {}",
        inc_bytes >> 20,
        mbs(inc_bytes, secs)
    );
    drop(log);

    let t = Instant::now();
    let log = Log::open_read(&logdir).unwrap();
    println!("open: {:.1} ms", t.elapsed().as_secs_f64() * 1e3);
    let opts = ReplayOptions {
        progress: false,
        sync: true,
        ..Default::default()
    };
    let into = tmp.path().join("tree");
    // The appends leave the log's segments dirty in the page cache: write them back first, so
    // that the replay's syncfs does not pay for them.
    // SAFETY: sync(2) takes no arguments and cannot fail.
    unsafe { libc::sync() };
    let t = Instant::now();
    let st = log.replay(21, &into, &opts).unwrap();
    let secs = t.elapsed().as_secs_f64();
    println!(
        "replay fresh (with syncfs): {} MiB in {secs:.2}s = {}; read {} MiB from the log; {} \
         writes on the writer thread",
        total >> 20,
        mbs(total, secs),
        st.log_bytes_read >> 20,
        st.writes_in_parallel
    );
    let t = Instant::now();
    let st = log.replay(21, &into, &opts).unwrap();
    let secs = t.elapsed().as_secs_f64();
    println!(
        "replay onto itself (compare only): {secs:.2}s = {}; read {} KiB from the log, wrote {}",
        mbs(total, secs),
        st.log_bytes_read >> 10,
        st.bytes_written
    );
    let t = Instant::now();
    let st = log.replay(1, &into, &opts).unwrap();
    let secs = t.elapsed().as_secs_f64();
    println!(
        "rollback 21 -> 1: {secs:.2}s; read {} MiB from the log, wrote {} MiB, compared {} MiB",
        st.log_bytes_read >> 20,
        st.bytes_written >> 20,
        st.bytes_compared >> 20
    );
    assert_tree(&into, &first, "rollback");
    let t = Instant::now();
    let rep = log.verify().unwrap();
    let secs = t.elapsed().as_secs_f64();
    println!(
        "verify: {} MiB of log in {secs:.2}s = {}",
        rep.bytes_read >> 20,
        mbs(rep.raw_bytes, secs)
    );
}
