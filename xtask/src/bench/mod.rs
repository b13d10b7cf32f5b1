//! `cargo xtask bench`: btm against the tools users would pick instead, side by side, in one run.
//!
//! The same chain-like data set (see [`dataset`]) lives on an xfs loop volume (btm in ebpf mode,
//! restic, rsync and tar read it) and on a btrfs loop volume (the `btrfs send -p` anchor); every
//! height applies the same changes to both. Results go to BENCHMARKS.md.
mod dataset;
mod limit;
pub mod offsite;
mod probes;
mod replay;
mod report;
mod report_durable;
mod report_overhead;
mod report_phases;
mod report_precision;
pub mod scale;
mod tools;

use std::{
    path::{Path, PathBuf},
    process::Command,
    time::Instant,
};

use anyhow::{Context, Result, bail};
use serde_json::Value;

use dataset::DataSet;
use probes::{BpfStats, ProbeCost, Programs};
use tools::{Agent, Restic, Run};

#[derive(clap::Args, Debug, Clone)]
pub struct BenchArgs {
    /// Size of the data set in GiB (fractions allowed, e.g. 0.25 while developing).
    #[arg(long, default_value_t = 4.0)]
    pub size_gib: f64,
    /// Heights measured at each change rate (0.1 %, 1 %, 10 % of the data set).
    #[arg(long, default_value_t = 3)]
    pub heights: u64,
    /// Heights of 16 MiB each for the freeze-window distribution (btm only).
    #[arg(long, default_value_t = 20)]
    pub freeze_heights: u64,
    /// Seconds per fio run for the tracking overhead (0 skips it).
    #[arg(long, default_value_t = 10)]
    pub fio_secs: u64,
    /// Rounds of fio runs without and with the agent, alternated: the report gives the
    /// median overhead of the rounds and their spread.
    #[arg(long, default_value_t = 4)]
    pub fio_rounds: u64,
    /// Where the report is written.
    #[arg(long, default_value = "BENCHMARKS.md")]
    pub out: PathBuf,
    /// Scratch directory (on a real disk: images, logs, repositories, mirrors).
    #[arg(long, default_value = "/var/tmp/btm-bench")]
    pub dir: PathBuf,
    /// Leave the log (`DIR/log`) in place at the end, to profile replay or inspect it.
    #[arg(long)]
    pub keep_log: bool,
}

pub const RATES: [f64; 3] = [0.001, 0.01, 0.1];
pub const FIO_ENGINES: [&str; 3] = ["buffered", "direct", "mmap"];

/// btm's figures for one height.
#[derive(Clone, Debug, Default)]
pub struct BtmCut {
    pub secs: f64,
    pub freeze_ms: f64,
    pub read: u64,
    pub read_frozen: u64,
    pub data: u64,
    pub stored: u64,
    /// The agent's own time for the cut and its phases (`total_ms`, `phases_ms`), in ms.
    pub total_ms: f64,
    pub phases: [f64; PHASES.len()],
    /// What the volume's device wrote during the cut's syncfs (`synced_bytes`).
    pub synced: u64,
}

/// The cut report's `phases_ms` keys, in order.
pub const PHASES: [&str; 6] = ["syncfs", "drain", "namespace", "read", "frozen", "record"];

impl BtmCut {
    /// The cut's `syncfs` and `drain` phases: the flip, the write-back and the marks, which
    /// the physical limit counts as unavoidable.
    pub fn sync_ms(&self) -> f64 {
        self.phases[0] + self.phases[1]
    }

    fn from_report(secs: f64, v: &Value) -> BtmCut {
        let u = |k: &str| v[k].as_u64().unwrap_or(0);
        BtmCut {
            secs,
            freeze_ms: v["freeze_ms"].as_f64().unwrap_or(0.0),
            read: u("read_unfrozen") + u("read_frozen"),
            read_frozen: u("read_frozen"),
            data: u("data_bytes"),
            stored: u("stored_bytes"),
            total_ms: v["total_ms"].as_f64().unwrap_or(0.0),
            phases: PHASES.map(|k| v["phases_ms"][k].as_f64().unwrap_or(0.0)),
            synced: u("synced_bytes"),
        }
    }
}

/// The tracker's counters for mmap stores over some heights (deltas of the agent's `status`).
#[derive(Clone, Copy, Debug, Default)]
pub struct FaultCounters {
    pub fault_marked: u64,
    pub folio_marked: u64,
    pub fault_wide: u64,
    pub fault_cached: u64,
    pub fault_unresolved: u64,
}

impl FaultCounters {
    fn of(status: &Value) -> FaultCounters {
        let u = |k: &str| status["tracker"][k].as_u64().unwrap_or(0);
        FaultCounters {
            fault_marked: u("fault_marked"),
            folio_marked: u("folio_marked"),
            fault_wide: u("fault_wide"),
            fault_cached: u("fault_cached"),
            fault_unresolved: u("fault_unresolved"),
        }
    }

    fn since(self, before: FaultCounters) -> FaultCounters {
        FaultCounters {
            fault_marked: self.fault_marked.saturating_sub(before.fault_marked),
            folio_marked: self.folio_marked.saturating_sub(before.folio_marked),
            fault_wide: self.fault_wide.saturating_sub(before.fault_wide),
            fault_cached: self.fault_cached.saturating_sub(before.fault_cached),
            fault_unresolved: self
                .fault_unresolved
                .saturating_sub(before.fault_unresolved),
        }
    }
}

/// The agent's prefault over some heights (deltas of `status`'s `prefault`; `None` when the
/// agent runs without it).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Prefault {
    /// Passes run (one after each cut).
    pub passes: u64,
    /// Pages read-faulted (in the page cache, not mapped in the writer before).
    pub faulted: u64,
}

impl Prefault {
    fn of(status: &Value) -> Option<Prefault> {
        let p = status.get("prefault").filter(|p| p.is_object())?;
        Some(Prefault {
            passes: p["passes"].as_u64().unwrap_or(0),
            faulted: p["faulted"].as_u64().unwrap_or(0),
        })
    }

    fn since(after: Option<Prefault>, before: Option<Prefault>) -> Option<Prefault> {
        let (a, b) = (after?, before.unwrap_or_default());
        Some(Prefault {
            passes: a.passes.saturating_sub(b.passes),
            faulted: a.faulted.saturating_sub(b.faulted),
        })
    }
}

/// What the state file's writer and the tracker did over one rate's heights.
#[derive(Clone, Copy, Debug, Default)]
pub struct Marks {
    pub counters: FaultCounters,
    /// The agent's prefault over the heights (`None`: `--no-prefault`).
    pub prefault: Option<Prefault>,
    /// `FilePmdMapped` of the writer's mapping of state.mdbx after the heights (kB).
    pub pmd_kb: Option<u64>,
}

/// Every tool at one height.
#[derive(Clone, Debug, Default)]
pub struct Height {
    pub height: u64,
    pub changed: u64,
    pub btm: BtmCut,
    pub restic: Run,
    pub rsync: Run,
    pub btrfs: Run,
    pub tar: Run,
}

/// One height of the durable writer's phase.
#[derive(Clone, Debug, Default)]
pub struct Durable {
    pub btm: BtmCut,
    pub btrfs: Run,
    pub restic: Run,
    pub rsync: Run,
    /// The writer's commit (a syncfs) on the xfs and the btrfs volume, seconds.
    pub commit_xfs: f64,
    pub commit_btrfs: f64,
}

#[derive(Clone, Debug, Default)]
pub struct Results {
    pub size: u64,
    pub tree_bytes: u64,
    pub baseline: Height,
    /// Per rate: its heights.
    pub rates: Vec<(f64, Vec<Height>)>,
    /// Per rate, as `rates`: the tracker's mmap counters and the writer's PMD mappings.
    pub rate_marks: Vec<Marks>,
    /// btm alone at the 0.1 % and 1 % rates without the precision mechanism (the agent
    /// restarted with `btm-agent run --no-prefault`, the writer's THP on again and the state
    /// file mapped again): per rate, its heights and marks. The main phases ran with it (the
    /// writer as `btm-agent exec` starts a node, the agent's prefault on by default).
    pub without: Vec<(f64, Vec<Height>, Marks)>,
    /// btm and `btrfs send -p` at the 0.1 % and 1 % rates with a durable writer: each
    /// height's writes made durable by the writer (its commit, timed apart) before the tools
    /// run, as a node that syncs at every block does.
    pub durable: Vec<(f64, Vec<Durable>)>,
    /// `FilePmdMapped` of the writer's mapping after the main phases, before the phases
    /// without the precision mechanism re-map it (kB).
    pub pmd_normal_kb: Option<u64>,
    /// The writer ran the main phases with THP disabled, as `btm-agent exec` starts a node.
    pub writer_thp_disabled: bool,
    /// zstd -1 plus blake3 on one core, bytes per second ([`limit::codec_rate`]).
    pub codec_rate: f64,
    /// Per fio engine: IOPS without and with the agent (one entry per repetition).
    pub fio: Vec<(String, Vec<f64>, Vec<f64>)>,
    pub fio_size: u64,
    pub fio_secs: u64,
    /// Per fio engine: what the eBPF programs cost over its runs with the agent.
    pub probe_cost: Vec<ProbeCost>,
    /// Why the programs' cost could not be measured (`kernel.bpf_stats_enabled`).
    pub probe_error: Option<String>,
    /// Freeze windows (ms) of the 16 MiB heights.
    pub freeze16: Vec<f64>,
    /// btm's cuts of the 16 MiB heights.
    pub cuts16: Vec<BtmCut>,
    /// The tracker's counters after the main phases and the 16 MiB heights (the agent's
    /// status answer, before it is restarted without the prefault).
    pub tracker: Value,
    /// The replay with the log evicted from the page cache (see `replay.rs`), and its bytes.
    pub replay_secs: f64,
    pub replay_bytes: u64,
    /// The same replay with the log cached.
    pub replay_warm_secs: f64,
    /// The log's bytes, and the rate the disk reads them at (evicted, 1 MiB reads).
    pub replay_log_bytes: u64,
    pub log_read_rate: f64,
    pub replay_height: u64,
    /// The disk's sequential write rate into the replay's directory, bytes per second
    /// ([`limit::disk_write_rate`], the same bytes as the replay wrote); 0 when not measured.
    pub disk_write_rate: f64,
    pub rollback_secs: f64,
    pub rollback_height: u64,
    pub rollback_undone: u64,
    /// Heights the rollback undid (the 16 MiB heights and those without the prefault).
    pub rollback_heights: u64,
    /// What the rollback compared and wrote, whether it was scoped to what changed, and
    /// what the next cut read (it re-reads what the rollback wrote, from the marks).
    pub rollback_compared: u64,
    pub rollback_written: u64,
    pub rollback_scoped: bool,
    pub after_rollback: Option<(BtmCut, bool)>,
    pub restore_secs: f64,
    pub rss_hwm_kb: u64,
    pub rss_kb: u64,
    pub bpf_map_bytes: u64,
    pub log_bytes: u64,
    pub restic_repo_bytes: u64,
    pub secs_total: f64,
    /// btm steps that failed (reported, not fatal).
    pub errors: Vec<String>,
}

fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("xtask lives in the workspace")
        .to_path_buf()
}

/// Builds the release agent; returns it and `out` made absolute (relative to the workspace).
pub fn build_agent(out: &Path) -> Result<(PathBuf, PathBuf)> {
    let root = workspace_root();
    let st = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()))
        .current_dir(&root)
        .args(["build", "-q", "--release", "-p", "btm-agent"])
        .status()
        .context("spawning cargo build")?;
    if !st.success() {
        bail!("cargo build --release -p btm-agent failed with {st}");
    }
    let out = if out.is_absolute() {
        out.to_path_buf()
    } else {
        root.join(out)
    };
    // Where cargo put it: CARGO_TARGET_DIR (relative to the workspace) or `target`.
    let target = std::env::var_os("CARGO_TARGET_DIR").map_or(root.join("target"), |d| root.join(d));
    Ok((target.join("release/btm-agent"), out))
}

pub fn run(a: BenchArgs) -> Result<()> {
    if a.size_gib.is_nan() || a.size_gib <= 0.0 {
        bail!("--size-gib must be positive");
    }
    if a.heights == 0 {
        bail!("--heights must be at least 1");
    }
    let (bin, out) = build_agent(&a.out)?;
    let t0 = Instant::now();
    let mut r = measure(&a, &bin)?;
    r.secs_total = t0.elapsed().as_secs_f64();
    let md = report::render(&a, &r);
    std::fs::write(&out, md).with_context(|| format!("writing {}", out.display()))?;
    println!("bench: wrote {}", out.display());
    Ok(())
}

fn gib(b: u64) -> String {
    format!("{:.2} GiB", b as f64 / (1u64 << 30) as f64)
}

fn measure(a: &BenchArgs, bin: &Path) -> Result<Results> {
    let size = (a.size_gib * (1u64 << 30) as f64) as u64;
    let dir = &a.dir;
    for m in ["xfs", "btrfs"] {
        let _ = Command::new("umount").arg("-d").arg(dir.join(m)).output();
    }
    let _ = std::fs::remove_dir_all(dir);
    std::fs::create_dir_all(dir)?;
    let mut r = Results {
        size,
        codec_rate: limit::codec_rate(),
        ..Default::default()
    };
    println!(
        "bench: zstd -1 + blake3 on one core: {:.0} MB/s",
        r.codec_rate / 1e6
    );
    let growth = size / 10 * 3 * a.heights / 4 + a.freeze_heights * (16 << 20);
    let xfs = tools::loop_vol(dir, "xfs", "xfs", size + growth + size / 2 + (2 << 30))?;
    let btrfs = tools::loop_vol(dir, "btrfs", "btrfs", 2 * (size + growth) + (2 << 30))?;
    let socket = dir.join("btm.sock");
    println!(
        "bench: data set {} on {} (xfs, btm) and {} (btrfs)",
        gib(size),
        xfs.mnt.display(),
        btrfs.mnt.display()
    );

    // 1. Tracking overhead: fio with and without the agent tracking the volume, alternated.
    if a.fio_secs > 0 {
        let fio_file = xfs.mnt.join("fio.dat");
        r.fio_size = (size / 4).clamp(64 << 20, 1 << 30);
        r.fio_secs = a.fio_secs;
        r.fio = FIO_ENGINES
            .iter()
            .map(|e| (e.to_string(), vec![], vec![]))
            .collect();
        r.probe_cost = FIO_ENGINES
            .iter()
            .map(|e| ProbeCost {
                engine: e.to_string(),
                ios: 0,
                programs: Some(Programs::new()),
            })
            .collect();
        // Lay the file out once, outside the measurements.
        tools::fio("buffered", &fio_file, r.fio_size, 1)?;
        for rep in 0..a.fio_rounds.max(1) {
            for with in [false, true] {
                let agent = if with {
                    Some(Agent::start(
                        bin,
                        &xfs.mnt,
                        &dir.join(format!("log-fio{rep}")),
                        &socket,
                    )?)
                } else {
                    None
                };
                // The programs' run counts and times, only while the agent runs (restored by
                // the guard's drop, also when a run fails).
                let stats = match agent.as_ref().map(|_| BpfStats::enable()) {
                    Some(Err(e)) => {
                        r.probe_error = Some(format!("{e:#}"));
                        None
                    }
                    Some(Ok(g)) => Some(g),
                    None => None,
                };
                let programs = || {
                    let st = agent.as_ref()?.status().ok()?;
                    probes::programs(&st)
                };
                for (i, e) in FIO_ENGINES.iter().enumerate() {
                    let before = programs();
                    let run = tools::fio(e, &fio_file, r.fio_size, a.fio_secs)?;
                    let iops = run.iops;
                    println!(
                        "bench: fio {e:>8} {} agent: {iops:>10.0} IOPS",
                        if with { "with   " } else { "without" }
                    );
                    if with {
                        r.fio[i].2.push(iops);
                        let cost = &mut r.probe_cost[i];
                        cost.ios += run.ios;
                        match (before, programs(), &mut cost.programs) {
                            (Some(b), Some(a), Some(sum)) if stats.is_some() => {
                                probes::add(sum, &probes::delta(&b, &a))
                            }
                            _ => cost.programs = None,
                        }
                    } else {
                        r.fio[i].1.push(iops);
                    }
                }
                drop(stats);
                drop(agent);
            }
        }
        std::fs::remove_file(&fio_file)?;
        for rep in 0..a.fio_rounds.max(1) {
            let _ = std::fs::remove_dir_all(dir.join(format!("log-fio{rep}")));
        }
    }

    // 2. The data set, the same on both volumes.
    let t = Instant::now();
    let bdata = btrfs.mnt.join("data");
    tools::sh(
        "btrfs",
        &["-q", "subvolume", "create", bdata.to_str().unwrap()],
    )?;
    // The writer (this process) runs as `btm-agent exec` starts a node: THP disabled, so no
    // file folio is PMD-mapped (the tools it spawns get the system's setting back).
    if let Err(e) = dataset::writer_thp(true) {
        println!("bench: the writer runs with THP on: {e:#}");
        r.errors.push(format!("writer THP: {e:#}"));
    } else {
        r.writer_thp_disabled = true;
    }
    let mut ds_x = DataSet::create(&xfs.mnt, size, 0x2545_f491_4f6c_dd1d)?;
    let mut ds_b = DataSet::create(&bdata, size, 0x2545_f491_4f6c_dd1d)?;
    tools::sh("sync", &[])?;
    r.tree_bytes = tools::tree_bytes(&xfs.mnt);
    println!(
        "bench: data set written in {:.1} s ({})",
        t.elapsed().as_secs_f64(),
        gib(r.tree_bytes)
    );

    // 3. Baselines: every tool's first full copy.
    let log = dir.join("log");
    let mut agent = Agent::start(bin, &xfs.mnt, &log, &socket)?;
    let restic = Restic::init(dir)?;
    let mirror = dir.join("rsync-mirror");
    let send_file = dir.join("btrfs.send");
    let tar_file = dir.join("full.tar.zst");
    let mut height = 1;
    let mut restic_snaps = vec![];
    let mut base = Height {
        height,
        changed: r.tree_bytes,
        ..Default::default()
    };
    let (secs, rep) = agent.cut(height)?;
    base.btm = BtmCut::from_report(secs, &rep);
    let (run, snap) = restic.backup(&xfs.mnt)?;
    base.restic = run;
    restic_snaps.push((height, snap));
    base.rsync = tools::rsync(&xfs.mnt, &mirror)?;
    let (run, mut parent) = tools::btrfs_send(&bdata, height, None, &send_file)?;
    base.btrfs = run;
    base.tar = tools::tar_zstd(&xfs.mnt, &tar_file, r.tree_bytes)?;
    print_height("baseline", &base);
    r.baseline = base;

    // 4. Heights at each change rate.
    for rate in RATES {
        let changed = ((size as f64 * rate) as u64).max(64 << 10);
        let mut hs = vec![];
        let st = agent.status().unwrap_or_default();
        let (before, pf_before) = (FaultCounters::of(&st), Prefault::of(&st));
        for _ in 0..a.heights {
            height += 1;
            ds_x.height(changed)?;
            ds_b.height(changed)?;
            let tree = tools::tree_bytes(&xfs.mnt);
            let mut h = Height {
                height,
                changed,
                ..Default::default()
            };
            let (secs, rep) = agent.cut(height)?;
            h.btm = BtmCut::from_report(secs, &rep);
            let (run, snap) = restic.backup(&xfs.mnt)?;
            h.restic = run;
            restic_snaps.push((height, snap));
            h.rsync = tools::rsync(&xfs.mnt, &mirror)?;
            h.btrfs = tools::btrfs_send_next(&bdata, height, &mut parent, &send_file)?;
            h.tar = tools::tar_zstd(&xfs.mnt, &tar_file, tree)?;
            print_height(&format!("{:.1} %", rate * 100.0), &h);
            hs.push(h);
        }
        r.rates.push((rate, hs));
        let st = agent.status().unwrap_or_default();
        r.rate_marks.push(Marks {
            counters: FaultCounters::of(&st).since(before),
            prefault: Prefault::since(Prefault::of(&st), pf_before),
            pmd_kb: ds_x.file_pmd_mapped_kb(),
        });
    }
    // 4b. A durable writer: the node makes each height's writes durable at its commit (on
    // xfs a 4 KiB store into a large page-cache folio makes the whole folio written back, by
    // the node's own sync then, not by the cut's syncfs). btm, btrfs send, restic, rsync.
    for rate in [RATES[0], RATES[1]] {
        let changed = ((size as f64 * rate) as u64).max(64 << 10);
        let mut hs = vec![];
        for _ in 0..a.heights {
            height += 1;
            ds_x.height(changed)?;
            ds_b.height(changed)?;
            let mut d = Durable {
                commit_xfs: ds_x.commit()?,
                commit_btrfs: ds_b.commit()?,
                ..Default::default()
            };
            let (secs, rep) = agent.cut(height)?;
            d.btm = BtmCut::from_report(secs, &rep);
            d.btrfs = tools::btrfs_send_next(&bdata, height, &mut parent, &send_file)?;
            let (run, snap) = restic.backup(&xfs.mnt)?;
            d.restic = run;
            restic_snaps.push((height, snap));
            d.rsync = tools::rsync(&xfs.mnt, &mirror)?;
            println!(
                "bench: durable writer {:.1} %: commit xfs {:.3} s btrfs {:.3} s; btm {:.3} s \
                 (syncfs {:.0} ms, {} written back); btrfs send {:.3} s; restic {:.2} s; \
                 rsync {:.2} s",
                rate * 100.0,
                d.commit_xfs,
                d.commit_btrfs,
                d.btm.secs,
                d.btm.phases[0],
                gib(d.btm.synced),
                d.btrfs.secs,
                d.restic.secs,
                d.rsync.secs
            );
            hs.push(d);
        }
        r.durable.push((rate, hs));
    }
    let rollback_to = height;
    let restic_snap = restic_snaps.last().map(|s| s.1.clone()).unwrap_or_default();
    drop(ds_b);

    // 5. Freeze window with 16 MiB changed per height (btm only).
    let mut undone = 0;
    for _ in 0..a.freeze_heights {
        height += 1;
        ds_x.height(16 << 20)?;
        let (secs, rep) = agent.cut(height)?;
        let c = BtmCut::from_report(secs, &rep);
        undone += c.data;
        r.freeze16.push(c.freeze_ms);
        r.cuts16.push(c);
    }
    if !r.freeze16.is_empty() {
        println!(
            "bench: 16 MiB heights: freeze p50 {:.1} ms, p99 {:.1} ms",
            report::pct(&r.freeze16, 50.0),
            report::pct(&r.freeze16, 99.0)
        );
    }

    // 6. Without the precision mechanism: btm alone at 0.1 % and 1 % with the agent stopped
    // cleanly (SIGTERM: the tracker keeps running and the next agent adopts it) and started
    // again with the same arguments plus `--no-prefault`, and the state file mapped again, so
    // the pages the prefault had mapped read-only in the writer are unmapped, as in a node's
    // fresh mapping. These heights come after every other tool's phase and change only the
    // xfs copy: the btrfs copy (dropped above), restic and rsync are done, so nothing compares
    // against them. The replay (of the last height) and the rollback (to the end of the rate
    // phases, through this agent) include them.
    r.pmd_normal_kb = ds_x.file_pmd_mapped_kb();
    let st = agent.status().unwrap_or_default();
    r.tracker = st["tracker"].clone();
    let (hwm, rss, maps) = agent.memory();
    r.rss_hwm_kb = hwm;
    r.rss_kb = rss;
    r.bpf_map_bytes = maps;
    drop(agent);
    let started = Agent::start_with(bin, &xfs.mnt, &log, &socket, &["--no-prefault"]);
    let without = started.and_then(|ag| {
        // And the writer as a node started directly: THP on, its mapping made again.
        dataset::writer_thp(false)?;
        ds_x.remap()?;
        Ok(ag)
    });
    agent = match without {
        Ok(ag) => {
            for rate in [RATES[0], RATES[1]] {
                let changed = ((size as f64 * rate) as u64).max(64 << 10);
                let st = ag.status().unwrap_or_default();
                let (before, pf_before) = (FaultCounters::of(&st), Prefault::of(&st));
                let mut hs = vec![];
                for _ in 0..a.heights {
                    height += 1;
                    ds_x.height(changed)?;
                    let (secs, rep) = ag.cut(height)?;
                    let h = Height {
                        height,
                        changed,
                        btm: BtmCut::from_report(secs, &rep),
                        ..Default::default()
                    };
                    undone += h.btm.data;
                    print_height(&format!("{:.1} % nopf", rate * 100.0), &h);
                    hs.push(h);
                }
                let st = ag.status().unwrap_or_default();
                let marks = Marks {
                    counters: FaultCounters::of(&st).since(before),
                    prefault: Prefault::since(Prefault::of(&st), pf_before),
                    pmd_kb: ds_x.file_pmd_mapped_kb(),
                };
                println!(
                    "bench: without the prefault {:.1} %: FilePmdMapped {:?} kB (main phases: \
                     {:?} kB), prefault {:?}, {:?}",
                    rate * 100.0,
                    marks.pmd_kb,
                    r.pmd_normal_kb,
                    marks.prefault,
                    marks.counters
                );
                r.without.push((rate, hs, marks));
            }
            ag
        }
        Err(e) => {
            println!("bench: phases without the prefault FAILED: {e:#}");
            r.errors.push(format!("without the prefault: {e:#}"));
            Agent::start(bin, &xfs.mnt, &log, &socket)?
        }
    };
    drop(ds_x);

    // 7. Replay the latest height into a fresh directory, the log cold and warm.
    replay::measure(&mut r, bin, &log, dir, height);

    // 8. In-place rollback (through the running agent) vs a full restic restore.
    let rollback = tools::timed(
        tools::command(bin)
            .args(["rollback", "--exact", "--json", "--volume"])
            .arg(&xfs.mnt)
            .arg("--log")
            .arg(&log)
            .arg("--to")
            .arg(rollback_to.to_string())
            .arg("--socket")
            .arg(&socket)
            .env("BTM_LOG", "warn"),
    );
    r.rollback_height = rollback_to;
    r.rollback_undone = undone;
    r.rollback_heights = height - rollback_to;
    match rollback {
        Ok((secs, out)) => {
            r.rollback_secs = secs;
            let v: Value = serde_json::from_str(&out).unwrap_or_default();
            let st = &v["detail"]["stats"];
            r.rollback_compared = st["bytes_compared"].as_u64().unwrap_or(0);
            r.rollback_written = st["bytes_written"].as_u64().unwrap_or(0);
            r.rollback_scoped = st["scoped"].is_u64();
            // Nothing changed since: the cut reads what the rollback wrote, no more.
            match agent.cut(rollback_to + 1) {
                Ok((secs, rep)) => {
                    let full = rep["full"].as_bool().unwrap_or(true);
                    r.after_rollback = Some((BtmCut::from_report(secs, &rep), full));
                }
                Err(e) => r.errors.push(format!("cut after the rollback: {e:#}")),
            }
        }
        Err(e) => {
            println!("bench: rollback FAILED: {e:#}");
            r.errors.push(format!("rollback --to {rollback_to}: {e:#}"));
        }
    }
    let target = dir.join("restic-restore");
    r.restore_secs = restic.restore(&restic_snap, &target)?;
    println!(
        "bench: rollback to {rollback_to} in place {:.2} s, restic restore {:.2} s",
        r.rollback_secs, r.restore_secs
    );
    let _ = std::fs::remove_dir_all(&target);
    drop(agent);
    r.log_bytes = tools::tree_bytes(&log);
    r.restic_repo_bytes = tools::tree_bytes(&restic.repo);
    drop(btrfs);
    drop(xfs);
    if a.keep_log {
        println!("bench: the log stays in {}", log.display());
    } else {
        let _ = std::fs::remove_dir_all(dir);
    }
    Ok(r)
}

fn print_height(label: &str, h: &Height) {
    println!(
        "bench: {label:>8} h{:<3} btm {:>7.2}s (freeze {:>6.1} ms) restic {:>7.2}s rsync {:>7.2}s \
         btrfs {:>7.2}s tar {:>7.2}s",
        h.height,
        h.btm.secs,
        h.btm.freeze_ms,
        h.restic.secs,
        h.rsync.secs,
        h.btrfs.secs,
        h.tar.secs
    );
}
