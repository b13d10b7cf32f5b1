//! `cargo xtask bench-scale`: how btm's costs grow with the volume (issue 14). At each size
//! (up to more data than the machine has RAM, and up to 10^6 files), on an xfs loop volume:
//! the baseline, heights of 1 MiB, 16 MiB and 1 % of the data (freeze p50/p99, time, bytes
//! read and stored), the first cut after a clean agent restart and after a crash (no resume
//! state, caches dropped: what a reboot looks like), and a compaction beside the cuts. Peak RSS
//! covers the whole run. Results go to BENCHMARKS-scale.md with a per-GiB and per-file
//! extrapolation to a 2 TB node.
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

use super::dataset::DataSet;
use super::report::{bytes, pct, secs};
use super::tools::{Agent, sh};

#[derive(clap::Args, Debug, Clone)]
pub struct ScaleArgs {
    /// Data set sizes in GiB, one run each (the largest should exceed RAM).
    #[arg(long, value_delimiter = ',', default_values_t = [8.0, 16.0, 32.0])]
    pub sizes_gib: Vec<f64>,
    /// Small files (4 KiB each, 1,000 per directory) beside the data set, one count per size.
    #[arg(long, value_delimiter = ',', default_values_t = [10_000u64, 100_000, 1_000_000])]
    pub files: Vec<u64>,
    /// Heights measured at each change size.
    #[arg(long, default_value_t = 5)]
    pub heights: u64,
    /// Percent of each 4 KiB of block files and tables left zero, so that the log of the
    /// largest size fits the disk beside its volume (chain data compresses less).
    #[arg(long, default_value_t = 90)]
    pub zero_pct: u64,
    /// Where the report is written.
    #[arg(long, default_value = "BENCHMARKS-scale.md")]
    pub out: PathBuf,
    /// Scratch directory on a real disk (images and logs; needs about 2x the largest size).
    #[arg(long, default_value = "/var/tmp/btm-bench-scale")]
    pub dir: PathBuf,
}

/// One cut's figures.
#[derive(Clone, Copy, Debug, Default)]
struct Cut {
    secs: f64,
    /// The node's writers blocked: `FIFREEZE` to the end of `FITHAW`.
    freeze_ms: f64,
    /// Of which `FIFREEZE` itself (the writeback of what phase 1 left dirty).
    freeze_enter_ms: f64,
    read: u64,
    stored: u64,
    /// What the frozen phase did: entries it stat'ed (or walked), files it opened, and
    /// whether it had to walk the tree.
    frozen_entries: u64,
    frozen_opens: u64,
    frozen_walk: bool,
    /// The agent's own timing of the cut (`phases_ms`, in [`super::PHASES`] order).
    phases: [f64; 6],
}

/// One size's figures.
#[derive(Debug, Default)]
struct Point {
    data: u64,
    files: u64,
    setup_secs: f64,
    baseline: Cut,
    /// Per change size (label, bytes): its heights.
    steps: Vec<(String, u64, Vec<Cut>)>,
    restart: Cut,
    /// The clean stop before it (SIGTERM to exit).
    stop_secs: f64,
    reboot: Cut,
    compact_secs: f64,
    /// Why the compaction did not finish (the agent's `last_compaction`: refused by its
    /// free-space check, or failed), or that none started.
    compact_failed: Option<String>,
    log_before: u64,
    log_after: u64,
    rss_hwm_kb: u64,
    /// Peak RSS of the agents that cut (baseline, heights, restart, crash), apart from the
    /// one that compacted: the two grow with different things.
    rss_cuts_kb: u64,
    rss_compact_kb: u64,
    /// The cutting agent's RSS once the heights are done (what it holds between heights).
    rss_rest_kb: u64,
    log_bytes: u64,
}

fn cut(agent: &Agent, h: u64) -> Result<Cut> {
    let (secs, v) = agent.cut(h)?;
    let u = |k: &str| v[k].as_u64().unwrap_or(0);
    Ok(Cut {
        secs,
        freeze_ms: v["freeze_ms"].as_f64().unwrap_or(0.0),
        freeze_enter_ms: v["freeze_enter_ms"].as_f64().unwrap_or(0.0),
        read: u("read_unfrozen") + u("read_frozen"),
        stored: u("stored_bytes"),
        frozen_entries: u("frozen_entries"),
        frozen_opens: u("frozen_opens"),
        frozen_walk: v["frozen_walk"] == true,
        phases: super::PHASES.map(|k| v["phases_ms"][k].as_f64().unwrap_or(0.0)),
    })
}

fn drop_caches() -> Result<()> {
    sh("sync", &[])?;
    std::fs::write("/proc/sys/vm/drop_caches", "3").context("dropping the page cache")
}

fn dir_bytes(d: &Path) -> u64 {
    std::fs::read_dir(d)
        .map(|rd| {
            rd.flatten()
                .filter_map(|e| e.metadata().ok())
                .filter(|m| m.is_file())
                .map(|m| m.len())
                .sum()
        })
        .unwrap_or(0)
}

/// `n` files of 4 KiB in directories of 1,000 (chain clients' small-file stores).
fn small_files(root: &Path, n: u64, seed: u64) -> Result<()> {
    let mut x = seed | 1;
    let mut buf = vec![0u8; 4096];
    for i in 0..n {
        if i % 1000 == 0 {
            std::fs::create_dir_all(root.join(format!("small/d{:04}", i / 1000)))?;
        }
        // Half random, half zeros, like the state pages.
        for w in buf[..2048].chunks_mut(8) {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            w.copy_from_slice(&x.to_le_bytes());
        }
        std::fs::write(root.join(format!("small/d{:04}/f{i:07}", i / 1000)), &buf)?;
    }
    Ok(())
}

/// Rewrites `k` of the `n` small files (a height touches a few of them).
fn touch_small(root: &Path, n: u64, k: u64, h: u64) -> Result<()> {
    for j in 0..k.min(n) {
        let i = (h * 7919 + j * 104_729) % n;
        let p = root.join(format!("small/d{:04}/f{i:07}", i / 1000));
        std::fs::write(p, format!("height {h} file {i}\n").repeat(100))?;
    }
    Ok(())
}

pub fn run(a: ScaleArgs) -> Result<()> {
    if a.sizes_gib.len() != a.files.len() || a.sizes_gib.is_empty() {
        bail!("give as many --files counts as --sizes-gib");
    }
    let (bin, out) = super::build_agent(&a.out)?;
    let t0 = Instant::now();
    let mut points = Vec::new();
    for (&gib, &files) in a.sizes_gib.iter().zip(&a.files) {
        let p = measure(&a, &bin, (gib * (1u64 << 30) as f64) as u64, files)?;
        println!("bench-scale: {p:?}");
        points.push(p);
        // Each size is written as soon as it is measured: a later failure keeps it.
        std::fs::write(&out, render(&a, &points, t0.elapsed().as_secs_f64()))?;
    }
    println!("bench-scale: wrote {}", out.display());
    Ok(())
}

fn measure(a: &ScaleArgs, bin: &Path, size: u64, files: u64) -> Result<Point> {
    let dir = &a.dir;
    let _ = std::process::Command::new("umount")
        .arg("-d")
        .arg(dir.join("vol"))
        .output();
    let _ = std::fs::remove_dir_all(dir);
    std::fs::create_dir_all(dir)?;
    let mut p = Point {
        files,
        ..Default::default()
    };
    let small = files * 4096;
    let big = size.saturating_sub(small).max(64 << 20);
    let one_pct = size / 100;
    let growth = ((a.heights * (1 + 16 + (one_pct >> 20))) << 20) + 4 * one_pct;
    let vol = super::tools::loop_vol(
        dir,
        "vol",
        "xfs",
        size + size / 4 + growth + (files << 13) + (2 << 30),
    )?;
    let t = Instant::now();
    let zeros = (4096 * a.zero_pct.min(100) / 100) as usize;
    let mut ds = DataSet::create_with(&vol.mnt, big, 0x9e37_79b9_7f4a_7c15, zeros)?;
    small_files(&vol.mnt, files, 0x5851_f42d_4c95_7f2d)?;
    drop_caches()?;
    p.setup_secs = t.elapsed().as_secs_f64();
    p.data = super::tools::tree_bytes(&vol.mnt);
    println!(
        "bench-scale: {} in {} files written in {:.0} s",
        bytes(p.data as f64),
        files,
        p.setup_secs
    );
    let log = dir.join("log");
    let sock = dir.join("btm.sock");
    let mut agent = Agent::start(bin, &vol.mnt, &log, &sock)?;
    let mut h = 1;
    p.baseline = cut(&agent, h)?;
    println!(
        "bench-scale: baseline {:?}, agent VmHWM/VmRSS {:?} kB",
        p.baseline,
        agent.memory()
    );
    for (label, bytes) in [
        ("1 MiB", 1u64 << 20),
        ("16 MiB", 16 << 20),
        ("1 %", one_pct),
    ] {
        let mut cuts = Vec::new();
        for _ in 0..a.heights {
            h += 1;
            ds.height(bytes)?;
            touch_small(&vol.mnt, files, 10, h)?;
            cuts.push(cut(&agent, h)?);
        }
        println!("bench-scale: {label}: {cuts:?}");
        p.steps.push((label.to_string(), bytes, cuts));
    }
    (p.rss_hwm_kb, p.rss_rest_kb, _) = agent.memory();
    println!(
        "bench-scale: after the heights: VmHWM {} kB, VmRSS {} kB ({})",
        p.rss_hwm_kb,
        p.rss_rest_kb,
        rss_parts(agent.pid())
    );
    // How the heights' writes were marked (whole folios or 4 KiB pages): what a height's read
    // beyond its change comes from.
    let st = agent.status().unwrap_or_default();
    println!(
        "bench-scale: tracker counters after the heights: {}",
        st["tracker"]
    );

    // A clean restart (an upgrade): 1 % changes while no agent runs. The stop gets the time
    // the deployments give it; killed sooner, it would be the crash measured below.
    p.stop_secs = agent.stop()?;
    h += 1;
    ds.height(one_pct)?;
    touch_small(&vol.mnt, files, 10, h)?;
    agent = Agent::start(bin, &vol.mnt, &log, &sock)?;
    p.restart = cut(&agent, h)?;
    p.rss_hwm_kb = p.rss_hwm_kb.max(agent.memory().0);
    println!(
        "bench-scale: after the restart cut: VmHWM {} kB",
        agent.memory().0
    );
    // A crash, then what a reboot looks like: no resume state, a cold page cache.
    agent.kill();
    h += 1;
    ds.height(one_pct)?;
    touch_small(&vol.mnt, files, 10, h)?;
    drop_caches()?;
    agent = Agent::start(bin, &vol.mnt, &log, &sock)?;
    p.reboot = cut(&agent, h)?;
    p.rss_hwm_kb = p.rss_hwm_kb.max(agent.memory().0);
    println!(
        "bench-scale: after the reboot cut: VmHWM {} kB",
        agent.memory().0
    );
    println!(
        "bench-scale: restart {:?}, reboot {:?}",
        p.restart, p.reboot
    );
    drop(agent);

    // Compaction beside the cuts: retention down to 3 heights, then heights keep coming.
    p.log_before = dir_bytes(&log);
    let agent = Agent::start_with(
        bin,
        &vol.mnt,
        &log,
        &sock,
        &[
            "--cap",
            "3",
            "--compact-min-bytes",
            "0",
            "--compact-rate",
            "0",
        ],
    )?;
    // Until the agent reports how its compaction ended (`last_compaction`); heights keep
    // coming meanwhile.
    let t = Instant::now();
    let last = loop {
        let st = agent.status()?;
        if st["last_compaction"].is_object() {
            break st["last_compaction"].clone();
        }
        if st["compaction"].is_null() && t.elapsed() > Duration::from_secs(30) {
            println!("bench-scale: no compaction started in 30 s");
            break serde_json::Value::Null;
        }
        if t.elapsed() > Duration::from_secs(6 * 3600) {
            bail!("compaction still running after 6 h");
        }
        h += 1;
        ds.height(1 << 20)?;
        cut(&agent, h)?;
        std::thread::sleep(Duration::from_millis(500));
    };
    p.compact_secs = t.elapsed().as_secs_f64();
    if last["result"] != "compacted" {
        // Refused (no room for its new segments), failed, or never started: report that,
        // not a time.
        println!("bench-scale: the compaction did not finish: {last}");
        p.compact_failed = Some(format!(
            "**{}**: {}",
            last["result"].as_str().unwrap_or("none started"),
            last["error"].as_str().unwrap_or("")
        ));
    }
    p.rss_cuts_kb = p.rss_hwm_kb;
    p.rss_compact_kb = agent.memory().0;
    p.rss_hwm_kb = p.rss_hwm_kb.max(p.rss_compact_kb);
    println!(
        "bench-scale: after compaction: VmHWM {} kB",
        agent.memory().0
    );
    drop(agent);
    p.log_after = dir_bytes(&log);
    p.log_bytes = p.log_after;
    drop(ds);
    drop(vol);
    let _ = std::fs::remove_dir_all(&log);
    Ok(p)
}

fn median(v: &[f64]) -> f64 {
    pct(v, 50.0)
}

fn render(a: &ScaleArgs, points: &[Point], total_secs: f64) -> String {
    let mut s = String::new();
    let host = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|m| {
            m.lines()
                .next()
                .map(|l| l.split_whitespace().nth(1).unwrap_or("?").to_string())
        })
        .and_then(|kb| kb.parse::<u64>().ok())
        .map_or("?".into(), |kb| bytes((kb * 1024) as f64));
    let _ = writeln!(
        s,
        "# btm at scale\n\n`cargo xtask bench-scale --sizes-gib {} --files {} --heights {}`: one run \
         on {} cores with {host} of RAM, {:.0} min in all. xfs loop volume on the machine's disk; \
         release build; the agent with its defaults (capture buffer 64 MiB). Data set: the chain-like \
         set of `cargo xtask bench` (an mmap'd state file, append-only block files, LSM tables) plus \
         small 4 KiB files in directories of 1,000, {}% of every 4 KiB of block files and tables left \
         zero so that the largest log fits the machine's disk. Every height also rewrites 10 small \
         files. Times are wall-clock, with nothing else running on purpose.\n",
        a.sizes_gib
            .iter()
            .map(|g| g.to_string())
            .collect::<Vec<_>>()
            .join(","),
        a.files
            .iter()
            .map(|g| g.to_string())
            .collect::<Vec<_>>()
            .join(","),
        a.heights,
        std::thread::available_parallelism().map_or(0, |n| n.get()),
        total_secs / 60.0,
        a.zero_pct,
    );
    let _ = writeln!(
        s,
        "| data | files | peak RSS (cutting / compacting) | RSS between heights | baseline | baseline read / stored | freeze p50 / p99, all heights (of which `FIFREEZE`) | frozen work (max entries / opens; walks) | 1 MiB height | 16 MiB height | 1 % height (read / stored) | after a clean restart (read / stored; the stop before it) | after a crash + cold cache (read / stored) | compaction beside cuts (log before → after) |\n|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"
    );
    for p in points {
        let cuts: Vec<&Cut> = p.steps.iter().flat_map(|(_, _, c)| c.iter()).collect();
        let all: Vec<f64> = cuts.iter().map(|c| c.freeze_ms).collect();
        let enter: Vec<f64> = cuts.iter().map(|c| c.freeze_enter_ms).collect();
        let step = |i: usize| -> (f64, u64, u64) {
            let c = &p.steps[i].2;
            let t: Vec<f64> = c.iter().map(|c| c.secs).collect();
            let n = c.len().max(1) as u64;
            (
                median(&t),
                c.iter().map(|c| c.read).sum::<u64>() / n,
                c.iter().map(|c| c.stored).sum::<u64>() / n,
            )
        };
        let (t1, _, _) = step(0);
        let (t16, _, _) = step(1);
        let (tp, rp, sp) = step(2);
        let _ = writeln!(
            s,
            "| {} | {} | {} / {} | {} | {} | {} / {} | {:.1} / {:.1} ms ({:.1} / {:.1}) | {} / {}; {} | {} | {} | {} ({} / {}) | {} ({} / {}; {}) | {} ({} / {}) | {} ({} → {}) |",
            bytes(p.data as f64),
            p.files,
            bytes((p.rss_cuts_kb * 1024) as f64),
            bytes((p.rss_compact_kb * 1024) as f64),
            bytes((p.rss_rest_kb * 1024) as f64),
            secs(p.baseline.secs),
            bytes(p.baseline.read as f64),
            bytes(p.baseline.stored as f64),
            pct(&all, 50.0),
            pct(&all, 99.0),
            pct(&enter, 50.0),
            pct(&enter, 99.0),
            cuts.iter().map(|c| c.frozen_entries).max().unwrap_or(0),
            cuts.iter().map(|c| c.frozen_opens).max().unwrap_or(0),
            cuts.iter().filter(|c| c.frozen_walk).count(),
            secs(t1),
            secs(t16),
            secs(tp),
            bytes(rp as f64),
            bytes(sp as f64),
            secs(p.restart.secs),
            bytes(p.restart.read as f64),
            bytes(p.restart.stored as f64),
            secs(p.stop_secs),
            secs(p.reboot.secs),
            bytes(p.reboot.read as f64),
            bytes(p.reboot.stored as f64),
            p.compact_failed
                .clone()
                .unwrap_or_else(|| secs(p.compact_secs)),
            bytes(p.log_before as f64),
            bytes(p.log_after as f64),
        );
    }
    phases_table(&mut s, points);
    if let [.., x, y] = points {
        const NODE: f64 = 2e12;
        // Linear between the two largest runs, extended to 2 TB.
        let at = |fy: f64, fx: f64| {
            fy + (fy - fx) / (y.data as f64 - x.data as f64) * (NODE - y.data as f64)
        };
        let rss = |p: &Point| (p.rss_hwm_kb * 1024) as f64;
        let p99 = |p: &Point| {
            let all: Vec<f64> = p
                .steps
                .iter()
                .flat_map(|(_, _, c)| c.iter().map(|c| c.freeze_ms))
                .collect();
            pct(&all, 99.0)
        };
        let _ = writeln!(
            s,
            "\n## What the two largest runs predict for a 2 TB node\n\nEach figure extended \
             linearly from the two largest runs (their file counts grow with them, so per-file \
             costs are in it too; a node's own mix differs):\n\n\
             - baseline: {} ({:.0} MB/s read at the largest size);\n\
             - peak RSS: {};\n\
             - freeze p99: {};\n\
             - first cut after a clean restart: {} read;\n\
             - first cut after a crash or reboot: {} read, {} stored.",
            secs(at(y.baseline.secs, x.baseline.secs)),
            y.baseline.read as f64 / y.baseline.secs.max(1e-9) / 1e6,
            bytes(at(rss(y), rss(x)).max(0.0)),
            // Noise between runs can make it fall with size: then no growth was measured.
            if p99(y) > p99(x) {
                format!("{:.1} ms", at(p99(y), p99(x)))
            } else {
                format!(
                    "no growth measured ({:.1} ms at the largest size, {:.1} ms at the one before)",
                    p99(y),
                    p99(x)
                )
            },
            bytes(at(y.restart.read as f64, x.restart.read as f64).max(0.0)),
            bytes(at(y.reboot.read as f64, x.reboot.read as f64).max(0.0)),
            bytes(at(y.reboot.stored as f64, x.reboot.stored as f64).max(0.0)),
        );
    }
    s
}

/// Where the cuts that grow with the tree spend their time: the agent's phases (ms) of the
/// last 1 % height, the first cut after a clean restart and the one after a crash.
fn phases_table(s: &mut String, points: &[Point]) {
    let _ = writeln!(
        s,
        "\n## Where those cuts spend their time\n\nThe agent's own timing of each cut \
         (`phases_ms` of its report, ms), as in BENCHMARKS.md's \"Where a height's time goes\".\n\n\
         | data | files | cut | {} | total |\n|---|---|---|{}---:|",
        super::PHASES
            .iter()
            .map(|p| format!("`{p}`"))
            .collect::<Vec<_>>()
            .join(" | "),
        "---:|".repeat(super::PHASES.len())
    );
    for p in points {
        let last_pct = p.steps.get(2).and_then(|st| st.2.last()).copied();
        let rows = [
            ("last 1 % height", last_pct),
            ("first after a clean restart", Some(p.restart)),
            ("first after a crash + cold cache", Some(p.reboot)),
        ];
        for (what, c) in rows {
            let Some(c) = c else { continue };
            let cells: Vec<String> = c.phases.iter().map(|ms| format!("{ms:.0}")).collect();
            let _ = writeln!(
                s,
                "| {} | {} | {what} | {} | {} |",
                bytes(p.data as f64),
                p.files,
                cells.join(" | "),
                secs(c.secs)
            );
        }
    }
}

/// What a process's resident memory is made of (`RssAnon`, `RssFile`, `RssShmem` of
/// /proc/PID/status): file pages the agent maps count in VmRSS but are not its heap.
fn rss_parts(pid: u32) -> String {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    (status.lines())
        .filter(|l| l.starts_with("Rss"))
        .map(|l| l.split_whitespace().collect::<Vec<_>>().join(" "))
        .collect::<Vec<_>>()
        .join(", ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn phases_table_has_a_row_per_cut_with_every_phase() {
        let c = |ms: f64| Cut {
            secs: 2.5,
            phases: [ms, 1.0, 2.0, 3.0, 4.0, 5.0],
            ..Default::default()
        };
        let p = Point {
            data: 1 << 30,
            files: 1000,
            steps: vec![
                ("1 MiB".into(), 1 << 20, vec![c(7.0)]),
                ("16 MiB".into(), 16 << 20, vec![c(8.0)]),
                ("1 %".into(), 10 << 20, vec![c(9.0), c(10.0)]),
            ],
            restart: c(11.0),
            reboot: c(12.0),
            ..Default::default()
        };
        let mut s = String::new();
        phases_table(&mut s, &[p]);
        assert!(s.contains("| `syncfs` | `drain` |"), "{s}");
        assert!(
            s.contains("| last 1 % height | 10 | 1 | 2 | 3 | 4 | 5 |"),
            "{s}"
        );
        assert!(s.contains("| first after a clean restart | 11 |"), "{s}");
        assert!(
            s.contains("| first after a crash + cold cache | 12 |"),
            "{s}"
        );
    }
}
