//! BENCHMARKS.md from the results.
use std::fmt::Write as _;
use std::process::Command;

use super::report_precision::{WITH, WITHOUT, precision_section, probe_cost_section, without_at};
use super::{BenchArgs, Height, RATES, Results};
use crate::bench::tools::Run;

/// Nearest-rank percentile.
pub fn pct(v: &[f64], p: f64) -> f64 {
    if v.is_empty() {
        return 0.0;
    }
    let mut s = v.to_vec();
    s.sort_by(|a, b| a.total_cmp(b));
    let rank = ((p / 100.0) * s.len() as f64).ceil() as usize;
    s[rank.clamp(1, s.len()) - 1]
}

pub fn mean(v: impl Iterator<Item = f64>) -> f64 {
    let v: Vec<f64> = v.collect();
    if v.is_empty() {
        0.0
    } else {
        v.iter().sum::<f64>() / v.len() as f64
    }
}

pub fn bytes(b: f64) -> String {
    const U: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut x = b;
    let mut i = 0;
    while x >= 1024.0 && i < U.len() - 1 {
        x /= 1024.0;
        i += 1;
    }
    if i == 0 {
        format!("{x:.0} B")
    } else {
        format!("{x:.1} {}", U[i])
    }
}

pub fn secs(s: f64) -> String {
    if s < 1.0 {
        format!("{:.0} ms", s * 1000.0)
    } else {
        format!("{s:.2} s")
    }
}

fn first_line(cmd: &str, args: &[&str]) -> String {
    Command::new(cmd)
        .args(args)
        .output()
        .ok()
        .map(|o| {
            let s = if o.stdout.is_empty() {
                o.stderr
            } else {
                o.stdout
            };
            String::from_utf8_lossy(&s)
                .lines()
                .next()
                .unwrap_or("")
                .trim()
                .to_string()
        })
        .unwrap_or_default()
}

fn machine(a: &BenchArgs) -> String {
    let nproc = std::thread::available_parallelism().map_or(0, |n| n.get());
    let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
    let mem_kb: u64 = meminfo
        .lines()
        .find_map(|l| l.strip_prefix("MemTotal:"))
        .and_then(|r| r.split_whitespace().next()?.parse().ok())
        .unwrap_or(0);
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("model name"))
        .map(|r| r.trim_start_matches([' ', '\t', ':']).to_string())
        .unwrap_or_default();
    let src = first_line(
        "findmnt",
        &[
            "-no",
            "SOURCE",
            "-T",
            a.dir.parent().unwrap_or(&a.dir).to_str().unwrap_or("/"),
        ],
    );
    let disk = first_line("lsblk", &["-dno", "NAME,SIZE,ROTA,MODEL", &src]);
    let mut s = String::new();
    let _ = writeln!(s, "| | |\n|---|---|");
    let _ = writeln!(s, "| CPUs | {nproc} ({cpu}) |");
    let _ = writeln!(s, "| RAM | {} |", bytes(mem_kb as f64 * 1024.0));
    let _ = writeln!(s, "| Kernel | {} |", first_line("uname", &["-r"]));
    let rev = first_line(
        "git",
        &["-c", "safe.directory=*", "rev-parse", "--short", "HEAD"],
    );
    let dirty = Command::new("git")
        .args([
            "-c",
            "safe.directory=*",
            "status",
            "--porcelain",
            "--untracked-files=no",
        ])
        .output()
        .is_ok_and(|o| !o.stdout.is_empty());
    let _ = writeln!(
        s,
        "| btm | commit {rev}{} |",
        if dirty {
            " with uncommitted changes"
        } else {
            ""
        }
    );
    let _ = writeln!(
        s,
        "| Disk | `{src}` ({disk}); volumes are loop-mounted sparse images on it |"
    );
    let _ = writeln!(
        s,
        "| Tools | {}; {}; {}; {}; {} |",
        first_line("restic", &["version"]),
        first_line("rsync", &["--version"]),
        first_line("btrfs", &["--version"]),
        first_line("zstd", &["--version"]),
        first_line("fio", &["--version"])
    );
    s
}

struct Row {
    name: &'static str,
    how: &'static str,
    secs: f64,
    read: f64,
    stored: f64,
}

fn rows(hs: &[Height]) -> Vec<Row> {
    let anchor = |name, how, f: fn(&Height) -> Run| Row {
        name,
        how,
        secs: mean(hs.iter().map(|h| f(h).secs)),
        read: mean(hs.iter().map(|h| f(h).read as f64)),
        stored: mean(hs.iter().map(|h| f(h).stored as f64)),
    };
    vec![
        Row {
            name: "btm (ebpf)",
            how: "cut until durable",
            secs: mean(hs.iter().map(|h| h.btm.secs)),
            read: mean(hs.iter().map(|h| h.btm.read as f64)),
            stored: mean(hs.iter().map(|h| h.btm.stored as f64)),
        },
        anchor("restic", "backup, local repo", |h| h.restic),
        anchor("rsync", "`-a --delete` to a mirror", |h| h.rsync),
        anchor("btrfs send", "snapshot -r + send -p", |h| h.btrfs),
        anchor("tar + zstd", "full copy, zstd -1", |h| h.tar),
    ]
}

/// The physical limit of these heights on this machine (see [`super::limit`]), in seconds.
pub fn limit(hs: &[Height], codec_rate: f64) -> Option<f64> {
    super::limit::limit_secs(
        mean(hs.iter().map(|h| h.changed as f64)),
        codec_rate,
        mean(hs.iter().map(|h| h.btm.sync_ms())),
        mean(hs.iter().map(|h| h.btm.freeze_ms)),
    )
}

fn table(hs: &[Height], codec_rate: f64) -> String {
    let rs = rows(hs);
    let btm = rs[0].secs;
    let mut s = String::new();
    let _ = writeln!(
        s,
        "| tool | what | time / height | bytes read | bytes stored / sent | time vs btm |\n\
         |---|---|---:|---:|---:|---:|"
    );
    for r in &rs {
        let ratio = if r.name.starts_with("btm") {
            "1x".to_string()
        } else if r.secs >= btm {
            format!("**{:.1}x** slower", r.secs / btm)
        } else {
            format!("**{:.1}x** faster", btm / r.secs.max(1e-9))
        };
        let _ = writeln!(
            s,
            "| {} | {} | {} | {} | {} | {} |",
            r.name,
            r.how,
            secs(r.secs),
            bytes(r.read),
            bytes(r.stored),
            ratio
        );
    }
    if let Some(t) = limit(hs, codec_rate) {
        let _ = writeln!(
            s,
            "| physical limit | the changed bytes through zstd -1 + blake3 on one core ({:.0} MB/s, \
             measured here), plus btm's syncfs (with the drain) and freeze | {} | {} | | btm \
             takes **{:.1}x** the limit |",
            codec_rate / 1e6,
            secs(t),
            bytes(mean(hs.iter().map(|h| h.changed as f64))),
            btm / t
        );
    }
    let fr: Vec<f64> = hs.iter().map(|h| h.btm.freeze_ms).collect();
    let _ = writeln!(
        s,
        "\nbtm over these heights: freeze window p50 {:.1} ms, p99 {:.1} ms; read {:.1}x the bytes \
         the height changed (of that {} inside the freeze); captured {} per height (raw, before \
         dedup and zstd).",
        pct(&fr, 50.0),
        pct(&fr, 99.0),
        amplification(hs),
        bytes(mean(hs.iter().map(|h| h.btm.read_frozen as f64))),
        bytes(mean(hs.iter().map(|h| h.btm.data as f64)))
    );
    s
}

/// btm's bytes read per byte the heights changed.
pub fn amplification(hs: &[Height]) -> f64 {
    let changed: u64 = hs.iter().map(|h| h.changed).sum();
    let read: u64 = hs.iter().map(|h| h.btm.read).sum();
    read as f64 / changed.max(1) as f64
}

pub fn render(a: &BenchArgs, r: &Results) -> String {
    let mut s = String::new();
    let _ = writeln!(
        s,
        "# Benchmarks\n\nGenerated by `cargo xtask bench --size-gib {} --heights {}` in {:.0} s \
         (do not edit by hand; rerun the command). Everything below comes from one run: the \
         ratios compare tools on the same data at the same heights.\n",
        a.size_gib, a.heights, r.secs_total
    );
    let _ = writeln!(s, "## Machine\n\n{}", machine(a));
    let _ = writeln!(
        s,
        "The machine is shared (2 cores; other builds and tests ran meanwhile): absolute figures \
         are noisy, ratios from the same run are what to read. Page cache is warm for every tool \
         (nothing is dropped between tools), which favours the tools that rescan the data.\n"
    );
    let _ = writeln!(
        s,
        "## Data set\n\n{} of chain-like data ({} of files), identical on an xfs loop volume \
         (btm in ebpf mode, restic, rsync and tar read it) and on a btrfs loop volume (the \
         `btrfs send` anchor):\n\n\
         - `state.mdbx`: 50 %, one file written through a shared writable mapping (MDBX/LMDB \
         style); pages half random, half zeros.\n\
         - `blocks/blk*.dat`: 30 %, append-only 128 MiB block files (random, incompressible).\n\
         - `chainstate/*.ldb`: 20 %, LSM tables of up to 8 MiB (random), written whole; as many \
         bytes of the oldest tables are deleted as are written.\n\n\
         A height changing *c* bytes stores c/2 in random 4 KiB state pages through the \
         mapping, appends c/4 to the block files and writes c/4 of new tables (deleting as many \
         old ones), then rewrites `chainstate/CURRENT`. {} heights per rate; btm cuts through its \
         socket (the request `btm-agent snapshot` sends) and the time is until the height is \
         durable (fsync'd). Tools run one after another after each height, in the order of the \
         table.\n",
        bytes(r.size as f64),
        bytes(r.tree_bytes as f64),
        a.heights
    );

    let _ = writeln!(s, "## Per height, by change rate\n");
    for (rate, hs) in &r.rates {
        let _ = writeln!(
            s,
            "### {:.1} % of the data set changed per height ({})\n\n{}",
            rate * 100.0,
            bytes(hs.first().map_or(0, |h| h.changed) as f64),
            table(hs, r.codec_rate)
        );
    }
    let _ = writeln!(
        s,
        "### Baseline (first copy of the whole data set)\n\n{}",
        table(std::slice::from_ref(&r.baseline), r.codec_rate)
    );
    let _ = writeln!(
        s,
        "What the byte columns mean: btm reads exactly the extents the tracker marked and stores \
         them zstd-compressed and deduplicated; restic walks every file (`total_bytes_processed`, the \
         size of all files it processed), re-reads those whose metadata changed and stores new \
         deduplicated, compressed chunks (`data_added`); rsync (local, so whole-file) rewrites every changed file in full \
         (`Total transferred file size` / `Literal data`); btrfs send reads and sends the changed \
         extents (the send stream); tar + zstd reads everything and stores the compressed \
         archive.\n"
    );
    super::report_phases::phases_section(&mut s, r);
    super::report_durable::durable_section(&mut s, r);
    precision_section(&mut s, r, a.heights);

    // Tracking overhead.
    if !r.fio.is_empty() {
        super::report_overhead::overhead_section(&mut s, r);
        probe_cost_section(&mut s, r);
    }

    let _ = writeln!(s, "## Freeze window, replay, rollback, memory\n");
    for e in &r.errors {
        let _ = writeln!(s, "**FAILED** in this run: {e}\n");
    }
    let p50 = pct(&r.freeze16, 50.0);
    let p99 = pct(&r.freeze16, 99.0);
    let replay_mbs = r.replay_bytes as f64 / 1e6 / r.replay_secs.max(1e-9);
    let rollback_what = format!(
        "{}: compared {}, wrote {}",
        if r.rollback_scoped {
            "scoped to what changed since the height"
        } else {
            "the whole tree"
        },
        bytes(r.rollback_compared as f64),
        bytes(r.rollback_written as f64)
    );
    let after_rollback = match &r.after_rollback {
        Some((c, full)) => format!(
            "{} cut, read {}, stored {}, in {} (it re-reads what the rollback wrote)",
            if *full { "a full" } else { "an incremental" },
            bytes(c.read as f64),
            bytes(c.stored as f64),
            secs(c.secs)
        ),
        None => "failed".into(),
    };
    let _ = writeln!(
        s,
        "| | |\n|---|---|\n\
         | freeze window, {} heights of 16 MiB | p50 {p50:.1} ms, p99 {p99:.1} ms, max {:.1} ms |\n\
         | replay of height {} into a fresh directory (includes the final syncfs) | {}{} |\n\
         | in-place rollback to height {} (undoing {} heights; btm captured {} after it) | {} (`btm-agent rollback --exact`, through the running agent): {} |\n\
         | the cut right after the rollback | {} |\n\
         | full restore of the same height | {} (`restic restore` into an empty directory) |\n\
         | agent memory | VmHWM {}, VmRSS {} after the main phases and the 16 MiB heights (before the restart without the precision mechanism) |\n\
         | BPF map memory | {} (memlock of the agent's map fds, /proc/PID/fdinfo) |\n\
         | log size at the end | {} (restic repository: {}) |\n\n\
         Tracker counters after the main phases and the 16 MiB heights (the agent's `status`): `{}`\n",
        r.freeze16.len(),
        pct(&r.freeze16, 100.0),
        r.replay_height,
        replay_times(r),
        disk_limit(r),
        r.rollback_height,
        r.rollback_heights,
        bytes(r.rollback_undone as f64),
        if r.rollback_secs > 0.0 {
            secs(r.rollback_secs)
        } else {
            "failed".into()
        },
        rollback_what,
        after_rollback,
        secs(r.restore_secs),
        bytes(r.rss_hwm_kb as f64 * 1024.0),
        bytes(r.rss_kb as f64 * 1024.0),
        bytes(r.bpf_map_bytes as f64),
        bytes(r.log_bytes as f64),
        bytes(r.restic_repo_bytes as f64),
        r.tracker,
    );

    // Targets.
    let one = r
        .rates
        .iter()
        .find(|(rate, _)| (*rate - RATES[1]).abs() < 1e-9)
        .map(|(_, hs)| hs.as_slice())
        .unwrap_or(&[]);
    let rs = rows(one);
    let (vs_restic, vs_rsync) = if one.is_empty() {
        (0.0, 0.0)
    } else {
        (rs[1].secs / rs[0].secs, rs[2].secs / rs[0].secs)
    };
    let amp1 = amplification(one);
    let counter = |k: &str| r.tracker[k].as_u64().unwrap_or(0);
    let mark = |ok: bool| if ok { "met" } else { "**not met**" };
    let _ = writeln!(
        s,
        "## Targets (issue 7)\n\n| target | measured | verdict | why |\n|---|---|---|---|"
    );
    if let Some((worst_engine, worst)) = super::report_overhead::worst(r) {
        let why = if worst <= 2.0 {
            "every engine within 2 %: the probes add a few instructions per folio turning dirty and per write".to_string()
        } else {
            format!(
                "worst with the `{worst_engine}` engine; the probes run on every write fault / \
                 dirtying event and resolve the page, which fio's 4 KiB random writes hit on every \
                 I/O: see \"Probe cost per event\" below for each program's time per write. \
                 Noise on this shared machine is several %, so small overheads are within noise"
            )
        };
        let _ = writeln!(
            s,
            "| tracking overhead at most 2 % | worst engine {worst:+.1} % | {} | {why} |",
            mark(worst <= 2.0)
        );
    }
    let fast = vs_restic >= 20.0 && vs_rsync >= 20.0;
    // What the precision mechanism did for the mmap writer.
    let prefault = {
        let one_n = without_at(r, RATES[1]).filter(|hs| !hs.is_empty());
        format!(
            "{WITH}: the data set's blind stores fault per 4 KiB page and are marked as such{}",
            one_n.map_or(String::new(), |hs| format!(
                "; {:.2}x {WITHOUT}, where a first-touch store marks its whole folio",
                amplification(hs)
            ))
        )
    };
    let why = if fast {
        format!(
            "btm reads only what the tracker marked ({amp1:.2}x the changed bytes: {prefault}); \
             restic and rsync re-read every changed file whole (the state file is half the data \
             set and changes at every height)"
        )
    } else if amp1 > 2.0 {
        format!(
            "btm read {amp1:.1}x the bytes a 1 % height changes ({prefault}). It reads whole \
             folios where a store hit a page the prefault had not mapped (a not-present write \
             fault maps the whole folio writable: folio_marked {}), where a PMD mapping made \
             2 MiB writable at once (fault_wide {}) and in every cut that saw a write fault the \
             probe could not resolve (fault_unresolved {}), which marks every partially-marked \
             folio whole; the cut re-reads and hashes them (the log then stores only the 4 KiB \
             blocks that differ). Stores into pages already mapped, and pwrite engines, are \
             marked per 4 KiB",
            counter("folio_marked"),
            counter("fault_wide"),
            counter("fault_unresolved")
        )
    } else {
        format!(
            "btm reads only the changed bytes ({amp1:.2}x: {prefault}), but most of its cut \
             time is the syncfs writing the node's dirty pages back (see \"Where a height's \
             time goes\"); restic and rsync are fast on a small, page-cached data set. The gap \
             grows with the data set: measure at the default size or larger"
        )
    };
    let _ = writeln!(
        s,
        "| a 1 % height at least 20x faster than restic and rsync | restic {vs_restic:.1}x, rsync {vs_rsync:.1}x slower than btm | {} | {why} |",
        mark(fast)
    );
    let fok = !r.freeze16.is_empty() && p99 <= 50.0;
    let frozen16 = mean(r.cuts16.iter().map(|c| c.read_frozen as f64));
    let why = if fok {
        "changed extents are read (after a syncfs) before the freeze; inside it only a namespace \
         walk and the blocks changed since"
            .to_string()
    } else {
        format!(
            "inside the freeze the agent read {} per 16 MiB height on average: when a write fault \
             cannot be resolved to a page, the phase-1 folios are widened and re-read whole while \
             frozen (fault_unresolved {} at the end). Resolving faults per page, or re-reading the \
             widened ranges before freezing and only verifying inside, would close it",
            bytes(frozen16),
            counter("fault_unresolved")
        )
    };
    let _ = writeln!(
        s,
        "| freeze window p99 at most 50 ms with 16 MiB changed | p99 {p99:.1} ms over {} heights | {} | {why} |",
        r.freeze16.len(),
        mark(fok)
    );
    let rok = r.replay_secs > 0.0 && replay_mbs >= 500.0;
    let _ = writeln!(
        s,
        "| replay at least 500 MB/s | {replay_mbs:.0} MB/s | {} | {} |",
        mark(rok),
        if rok {
            "replay reads each payload once and writes files sequentially"
        } else if r.replay_secs == 0.0 {
            "replay failed in this run (see FAILED above): the log it was given did not read back"
        } else {
            "measured end to end (read log, blake3, zstd decode, write, final syncfs) on 2 shared \
             cores and one shared disk; see `cargo bench -p btm-agent --bench log` for replay \
             without the disk: if that is well above 500 MB/s the disk is the limit, otherwise \
             decoding in parallel would close it"
        }
    );
    issue16_targets(&mut s, r, one, &rs);
    let _ = writeln!(s, "\n## Every height\n");
    let _ = writeln!(
        s,
        "| height | changed | btm s | freeze ms | btm read | btm stored | restic s | restic added | rsync s | btrfs s | btrfs sent | tar+zstd s |\n\
         |---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"
    );
    for h in std::iter::once(&r.baseline).chain(r.rates.iter().flat_map(|(_, hs)| hs.iter())) {
        let _ = writeln!(
            s,
            "| {} | {} | {:.3} | {:.1} | {} | {} | {:.2} | {} | {:.2} | {:.2} | {} | {:.2} |",
            h.height,
            bytes(h.changed as f64),
            h.btm.secs,
            h.btm.freeze_ms,
            bytes(h.btm.read as f64),
            bytes(h.btm.stored as f64),
            h.restic.secs,
            bytes(h.restic.stored as f64),
            h.rsync.secs,
            h.btrfs.secs,
            bytes(h.btrfs.stored as f64),
            h.tar.secs
        );
    }
    let _ = writeln!(
        s,
        "\nMicro-benchmarks of the log writer and replay (no root needed): `cargo bench -p \
         btm-agent --bench log`."
    );
    s
}

/// The goals of issue 16 that this run measures (tracking overhead is the issue 7 row).
fn issue16_targets(s: &mut String, r: &Results, one: &[Height], rs: &[Row]) {
    let mark = |ok: bool| if ok { "met" } else { "**not met**" };
    let _ = writeln!(
        s,
        "\n## Targets (issue 16)\n\n| target | measured | verdict |\n|---|---|---|"
    );
    // Both figures where the phases without the precision mechanism ran; the verdict is the
    // one with it, as in the main phases.
    let with_note = format!(" ({WITH})");
    let one_n = without_at(r, RATES[1]).filter(|hs| !hs.is_empty());
    if !one.is_empty() {
        let (btm, btrfs) = (rs[0].secs, rs[3].secs);
        let btm_n = one_n.map(|hs| mean(hs.iter().map(|h| h.btm.secs)));
        let _ = writeln!(
            s,
            "| a 1 % height in at most half the time of `btrfs send -p` | btm {} with the \
             precision mechanism{}, btrfs send {}, physical limit {} | {}{with_note} |",
            secs(btm),
            btm_n.map_or(String::new(), |t| format!(", {} without it", secs(t))),
            secs(btrfs),
            limit(one, r.codec_rate).map_or_else(|| "not measured".into(), secs),
            mark(btm * 2.0 <= btrfs)
        );
        let amp = amplification(one);
        let amp_n = one_n.map(amplification);
        let _ = writeln!(
            s,
            "| read amplification at most 1.25 at 1 % for the data set's mmap writer | **{amp:.2}x** \
             with the precision mechanism{} | {}{with_note} |",
            amp_n.map_or(String::new(), |x| format!(", {x:.2}x {WITHOUT}")),
            mark(amp <= 1.25)
        );
    }
    if let Some((_, hs)) = r
        .rates
        .iter()
        .find(|(rate, _)| (*rate - RATES[0]).abs() < 1e-9)
    {
        let t = mean(hs.iter().map(|h| h.btm.secs));
        let t_n = without_at(r, RATES[0])
            .filter(|hs| !hs.is_empty())
            .map(|hs| mean(hs.iter().map(|h| h.btm.secs)));
        let _ = writeln!(
            s,
            "| a 0.1 % height in at most 50 ms | {} with the precision mechanism{} | {}{with_note} |",
            secs(t),
            t_n.map_or(String::new(), |x| format!(", {} without it", secs(x))),
            mark(t <= 0.05)
        );
    }
    super::report_durable::durable_targets(s, r);
    // Replay's own work is the run with the log cached; the one that reads the log from the
    // disk is held to the disk's rates (reading the log, then writing) in the row above.
    let warm_mbs = r.replay_bytes as f64 / 1e6 / r.replay_warm_secs.max(1e-9);
    let disk_mbs = r.disk_write_rate / 1e6;
    let at_disk = disk_mbs > 0.0 && warm_mbs >= 0.9 * disk_mbs;
    let _ = writeln!(
        s,
        "| replay into an empty directory at least 1 GB/s where the disk allows it | {} | {} |",
        replay_times(r),
        if r.replay_warm_secs > 0.0 && warm_mbs >= 1000.0 {
            "met (the log cached; the run that reads it is held to the disk's rates)".to_string()
        } else if r.replay_warm_secs > 0.0 && at_disk {
            format!(
                "met: at the disk's limit ({:.0} % of it)",
                100.0 * warm_mbs / disk_mbs
            )
        } else {
            mark(false).to_string()
        }
    );
    let cheap = r.rollback_scoped && r.after_rollback.as_ref().is_some_and(|(_, full)| !full);
    let _ = writeln!(
        s,
        "| in-place rollback costs what changed since the height, not the tree | compared {}, \
         wrote {}; the next cut {} | {} |",
        bytes(r.rollback_compared as f64),
        bytes(r.rollback_written as f64),
        match &r.after_rollback {
            Some((c, false)) => format!("incremental, read {}", bytes(c.read as f64)),
            Some((c, true)) => format!("full, read {}", bytes(c.read as f64)),
            None => "failed".into(),
        },
        mark(cheap)
    );
}

/// The replay's two runs: with the log evicted from the page cache, and cached.
fn replay_times(r: &Results) -> String {
    let mbs = |t: f64| r.replay_bytes as f64 / 1e6 / t.max(1e-9);
    let run = |t: f64| {
        if t > 0.0 {
            format!("{} = **{:.0} MB/s**", secs(t), mbs(t))
        } else {
            "failed".into()
        }
    };
    format!(
        "{}: log not cached {}; log cached {}",
        bytes(r.replay_bytes as f64),
        run(r.replay_secs),
        run(r.replay_warm_secs)
    )
}

/// The replay's limits as the report states them: the disk's rates measured in the same run
/// and directory (nothing when they were not measured).
fn disk_limit(r: &Results) -> String {
    let mut out = String::new();
    if r.disk_write_rate > 0.0 {
        out += &format!(
            "; the disk itself writes {:.0} MB/s there (the same bytes, 1 MiB O_DIRECT writes, fsync)",
            r.disk_write_rate / 1e6
        );
    }
    if let Some(limit) = super::replay::cold_limit_secs(r) {
        out += &format!(
            " and reads the log ({}) at {:.0} MB/s: a replay that reads the log takes at least \
             {} here ({:.0} % of that reached)",
            bytes(r.replay_log_bytes as f64),
            r.log_read_rate / 1e6,
            secs(limit),
            100.0 * limit / r.replay_secs.max(1e-9)
        );
    }
    out
}
