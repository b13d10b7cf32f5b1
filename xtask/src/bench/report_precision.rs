//! BENCHMARKS.md sections for issue 16's measurements: btm without the precision mechanism
//! (`btm-agent run --no-prefault`) beside the main phases (with it, the default), and the
//! eBPF programs' cost per event under fio.
use std::fmt::Write as _;

use super::dataset::STATE_WRITE;
use super::report::{amplification, bytes, mean, pct, secs};
use super::{Height, Marks, Results};

/// The heights without the prefault at `rate`, when they ran.
pub fn without_at(r: &Results, rate: f64) -> Option<&[Height]> {
    r.without
        .iter()
        .find(|(x, _, _)| (*x - rate).abs() < 1e-9)
        .map(|(_, hs, _)| hs.as_slice())
}

/// The main phases' heights and marks at `rate`.
fn main_at(r: &Results, rate: f64) -> Option<(&[Height], Marks)> {
    let i = r.rates.iter().position(|(x, _)| (*x - rate).abs() < 1e-9)?;
    Some((
        r.rates[i].1.as_slice(),
        r.rate_marks.get(i).copied().unwrap_or_default(),
    ))
}

fn kb(v: Option<u64>) -> String {
    v.map_or_else(|| "not found".into(), |k| format!("{k} kB"))
}

fn row(s: &mut String, rate: f64, agent: &str, hs: &[Height], m: &Marks, btrfs: &str) {
    let fr: Vec<f64> = hs.iter().map(|h| h.btm.freeze_ms).collect();
    let c = &m.counters;
    let _ = writeln!(
        s,
        "| {:.1} % | {agent} | {} | {} | {} | **{:.2}x** | {:.1} / {:.1} ms | {} | {} / {} / {} / {} / {} | {} | {btrfs} |",
        rate * 100.0,
        secs(mean(hs.iter().map(|h| h.btm.secs))),
        bytes(mean(hs.iter().map(|h| h.btm.read as f64))),
        bytes(mean(hs.iter().map(|h| h.btm.stored as f64))),
        amplification(hs),
        pct(&fr, 50.0),
        pct(&fr, 99.0),
        m.prefault
            .map_or_else(|| "off".into(), |p| format!("{} / {}", p.faulted, p.passes)),
        c.fault_marked,
        c.folio_marked,
        c.fault_wide,
        c.fault_cached,
        c.fault_unresolved,
        kb(m.pmd_kb),
    );
}

/// What the main phases ran with: both halves of the precision mechanism.
pub const WITH: &str = "with the precision mechanism: the writer started as `btm-agent exec` \
                        starts a node (THP disabled) and the agent's prefault (default)";
/// What the phases without it ran with.
pub const WITHOUT: &str = "without it: the writer started directly (THP on) and \
                           `btm-agent run --no-prefault`";

/// "Without the precision mechanism": btm at 0.1 % and 1 % with the writer's THP on again and
/// the agent restarted with `--no-prefault`, beside the same rates from the main phases (with
/// both) and btrfs send there.
pub fn precision_section(s: &mut String, r: &Results, heights: u64) {
    let _ = writeln!(
        s,
        "## Without the precision mechanism (THP on, `btm-agent run --no-prefault`)\n"
    );
    if r.without.is_empty() {
        let _ = writeln!(s, "Not measured in this run (see FAILED below).\n");
        return;
    }
    let writer = if r.writer_thp_disabled {
        "The main phases ran with both (rows \"exec + prefault\"): the benchmark process, the \
         data set's writer, disabled THP for itself (`PR_SET_THP_DISABLE`) before mapping \
         `state.mdbx`, as `btm-agent exec` does for a node; the tools it spawns (restic, rsync, \
         fio, the agent) get the system's setting back."
    } else {
        "The writer could not disable THP in this run (see FAILED below): the main phases ran \
         with the prefault alone."
    };
    let _ = writeln!(
        s,
        "A store into a page of a shared file mapping that its process has not mapped yet is a \
         not-present write fault, and such a fault maps the page's whole folio writable at once \
         (with one PMD when the folio is 2 MiB and the process has THP on): the stores into the \
         folio's other pages raise no fault, and the tracker must mark the whole folio. The \
         precision mechanism has two halves. `btm-agent exec` starts the node with THP disabled, \
         so no file folio is PMD-mapped in it (a write-protect fault on a PMD makes 2 MiB \
         writable again). The agent's prefault, on by default, read-faults after each cut \
         (`process_vm_readv`, one byte per page) every page of the mapping processes' shared \
         mappings of the volume that is in the page cache but not mapped, so a later store is a \
         write-protect fault on that page alone and is marked as 4 KiB. {writer} After every \
         other phase, the bench stopped the agent cleanly (SIGTERM: the tracker keeps running, \
         the next agent adopts it), started it again with the same arguments plus \
         `--no-prefault`, enabled THP for the writer again, dropped its mapping of `state.mdbx` \
         and mapped it again (what the prefault had mapped is gone, as in a node's fresh \
         mapping), then ran {heights} more heights at 0.1 % and at 1 % with btm alone (same \
         changes as the main phases: half of them blind stores into state pages through the \
         mapping). `prefault faulted / passes` is the prefault's `status` over those heights \
         (pages read-faulted, passes run). The tracker's counters (`status`) over them: \
         `fault_marked` write faults marked per page, `folio_marked` folios marked whole on \
         dirtying, `fault_wide` faults widened to a folio a PMD may map, `fault_cached` write faults \
         resolved from the fault probe's mapping cache (no `bpf_find_vma`), `fault_unresolved` \
         write faults the probe could not resolve to a mapping (`bpf_find_vma` busy): a cut \
         that sees one marks every partially-marked folio whole. `FilePmdMapped` is read from \
         /proc/self/smaps for the writer's mapping of `state.mdbx` after the heights.\n"
    );
    let _ = writeln!(
        s,
        "| rate | agent | btm time / height | bytes read | bytes stored | read amplification \
         | freeze p50 / p99 | prefault faulted / passes | fault_marked / folio_marked / \
         fault_wide / fault_cached / fault_unresolved | FilePmdMapped | btrfs send time / height |\n\
         |---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"
    );
    for (rate, hs, m) in &r.without {
        let main = main_at(r, *rate);
        let btrfs = main.map_or_else(
            || "-".into(),
            |(mh, _)| secs(mean(mh.iter().map(|h| h.btrfs.secs))),
        );
        if let Some((mh, mm)) = main {
            row(s, *rate, "exec + prefault (default)", mh, &mm, &btrfs);
        }
        row(s, *rate, "**THP on, `--no-prefault`**", hs, m, &btrfs);
    }
    let amps: Vec<String> = r
        .without
        .iter()
        .filter_map(|(rate, hs, _)| {
            let (mh, _) = main_at(r, *rate)?;
            Some(format!(
                "{:.2}x with the precision mechanism and {:.2}x without it at {:.1} %",
                amplification(mh),
                amplification(hs),
                rate * 100.0
            ))
        })
        .collect();
    if !amps.is_empty() {
        let _ = writeln!(s, "\nRead amplification: {}.", amps.join("; "));
    }
    let unresolved: u64 = r
        .without
        .iter()
        .filter_map(|(rate, _, _)| Some(main_at(r, *rate)?.1.counters.fault_unresolved))
        .sum();
    if unresolved > 0 {
        let _ = writeln!(
            s,
            "\nThe main phases' heights at these rates saw {unresolved} unresolved write faults \
             (`fault_unresolved`): each such cut marked every partially-marked folio whole, so \
             those heights read whole folios with the precision mechanism too."
        );
    }
    let without_kb: Vec<Option<u64>> = r.without.iter().map(|(_, _, m)| m.pmd_kb).collect();
    let with_kb = without_kb
        .iter()
        .map(|k| kb(*k))
        .collect::<Vec<_>>()
        .join(" / ");
    let pmd = format!(
        "FilePmdMapped of the writer's mapping of `state.mdbx`: {} after the main phases (the \
         16 MiB heights included), {with_kb} after the heights without the precision mechanism. \
         `state.mdbx` is first written in {} writes, but pages evicted under memory pressure \
         (the anchors' copies fill the page cache too) come back through readahead, in folios \
         of up to 2 MiB. {}",
        kb(r.pmd_normal_kb),
        bytes(STATE_WRITE as f64),
        if r.pmd_normal_kb == Some(0) {
            "With THP disabled for the writer none of them was PMD-mapped."
        } else {
            "Where the writer PMD-maps them, every store into a clean one marks 2 MiB \
             (`fault_wide`), which the prefault cannot prevent."
        }
    );
    let _ = writeln!(s, "\n{pmd}\n");
}

/// "Probe cost per event": per fio engine and program, from the agent's `programs` counters.
pub fn probe_cost_section(s: &mut String, r: &Results) {
    let _ = writeln!(s, "### Probe cost per event (kernel.bpf_stats_enabled)\n");
    if let Some(e) = &r.probe_error {
        let _ = writeln!(
            s,
            "Not measured: `kernel.bpf_stats_enabled` could not be set ({e}).\n"
        );
        return;
    }
    let measured: Vec<_> = r
        .probe_cost
        .iter()
        .filter_map(|c| Some((c, c.per_write()?)))
        .collect();
    if measured.is_empty() || measured.len() < r.probe_cost.len() {
        let _ = writeln!(
            s,
            "Not reported by this agent (its `status` has no `programs`).\n"
        );
        return;
    }
    let _ = writeln!(
        s,
        "Over the runs with the agent above: each program's `run_cnt` and `run_time_ns` (the \
         agent's `status`, from its program fds' fdinfo) before and after every fio run, \
         against the write I/Os fio reports (`total_ios`). Only programs that ran are listed.\n\n\
         | engine | program | runs per fio write | ns per run | ns per fio write |\n\
         |---|---|---:|---:|---:|"
    );
    for (c, (rows, total)) in &measured {
        for (name, per, ns) in rows {
            let _ = writeln!(
                s,
                "| {} | `{name}` | {per:.2} | {ns:.0} | {:.0} |",
                c.engine,
                per * ns
            );
        }
        let runs: f64 = rows.iter().map(|x| x.1).sum();
        let _ = writeln!(
            s,
            "| {} | **all programs** ({} fio writes) | {runs:.2} | | **{total:.0}** |",
            c.engine, c.ios
        );
    }
    let _ = writeln!(
        s,
        "\n`kernel.bpf_stats_enabled` was 1 only during the runs with the agent (and set back \
         after). Counting costs a little by itself: the kernel reads the clock twice per \
         program run while it is on, so those runs' IOPS above include that. `run_cnt` counts \
         every run of a program on the machine, also runs that return early for another \
         filesystem (other processes' I/O on this shared machine included).\n"
    );
    let _ = writeln!(
        s,
        "Before, for comparison (commit 960948b, the same bench on the same machine, when \
         every program read kernel structs with `bpf_probe_read_kernel` and the precise write \
         range was a hash map per task): buffered `btm_dirty_folio` 326 ns and \
         `btm_iomap_iter` 376 ns per run, all programs 1,094 ns per fio write (overhead \
         +20.0 %); direct `btm_iomap_iter` 627 ns per run, 1,431 ns per write; mmap \
         `btm_dirty_folio` 700 ns and `btm_fault_user` 1,584 ns per run, 2,851 ns per write.\n"
    );
}

#[cfg(test)]
mod tests {
    use super::super::{BtmCut, FaultCounters, Prefault};
    use super::*;

    fn results(normal_kb: u64, without_kb: u64) -> Results {
        let h = |read| Height {
            height: 2,
            changed: 1 << 20,
            btm: BtmCut {
                secs: 0.1,
                read,
                ..Default::default()
            },
            ..Default::default()
        };
        let marks = |kb, prefault| Marks {
            counters: FaultCounters {
                fault_marked: 3,
                folio_marked: 2,
                fault_wide: 1,
                fault_cached: 4,
                fault_unresolved: 0,
            },
            prefault,
            pmd_kb: Some(kb),
        };
        let pf = Prefault {
            passes: 5,
            faulted: 1234,
        };
        Results {
            rates: vec![(0.01, vec![h(1 << 20)])],
            rate_marks: vec![marks(normal_kb, Some(pf))],
            without: vec![(0.01, vec![h(40 << 20)], marks(without_kb, None))],
            pmd_normal_kb: Some(normal_kb),
            ..Default::default()
        }
    }

    #[test]
    fn precision_section_shows_with_and_without_the_prefault() {
        let mut s = String::new();
        precision_section(&mut s, &results(0, 0), 1);
        assert!(s.contains("`btm-agent run --no-prefault`"), "{s}");
        assert!(s.contains("The writer could not disable THP"), "{s}");
        assert!(
            s.contains("| 1.0 % | exec + prefault (default) |")
                && s.contains("| 1234 / 5 | 3 / 2 / 1 / 4 / 0 |"),
            "{s}"
        );
        assert!(
            s.contains("| 1.0 % | **THP on, `--no-prefault`** |")
                && s.contains("| off | 3 / 2 / 1 / 4 / 0 |"),
            "{s}"
        );
        assert!(s.contains("**1.00x**") && s.contains("**40.00x**"), "{s}");
        assert!(
            s.contains("1.00x with the precision mechanism and 40.00x without it at 1.0 %"),
            "{s}"
        );
        assert!(
            s.contains("With THP disabled for the writer none of them was PMD-mapped"),
            "{s}"
        );
        assert!(!s.contains("   "), "a string continuation lost: {s}");
        let mut s = String::new();
        let mut r = results(4096, 2048);
        r.writer_thp_disabled = true;
        precision_section(&mut s, &r, 1);
        assert!(
            s.contains("4096 kB after the main phases") && s.contains("2048 kB after the heights"),
            "{s}"
        );
        assert!(s.contains("which the prefault cannot prevent"), "{s}");
        assert!(s.contains("as `btm-agent exec` does for a node"), "{s}");
        assert!(!s.contains("   "), "a string continuation lost: {s}");
    }

    #[test]
    fn probe_cost_table_or_not_reported() {
        use crate::bench::probes::{ProbeCost, Programs};
        let mut r = Results {
            probe_cost: vec![ProbeCost {
                engine: "mmap".into(),
                ios: 1000,
                programs: Some(Programs::from([
                    ("btm_fault".to_string(), (1000, 300_000)),
                    ("btm_dirty_folio".to_string(), (500, 50_000)),
                ])),
            }],
            ..Default::default()
        };
        let mut s = String::new();
        probe_cost_section(&mut s, &r);
        assert!(
            s.contains("| mmap | `btm_fault` | 1.00 | 300 | 300 |"),
            "{s}"
        );
        assert!(
            s.contains("| mmap | `btm_dirty_folio` | 0.50 | 100 | 50 |"),
            "{s}"
        );
        assert!(s.contains("| 1.50 | | **350** |"), "{s}");
        assert!(
            s.contains("two clock reads") || s.contains("clock twice"),
            "{s}"
        );
        r.probe_cost.push(ProbeCost {
            engine: "direct".into(),
            ios: 10,
            programs: None,
        });
        let mut s = String::new();
        probe_cost_section(&mut s, &r);
        assert!(s.contains("Not reported by this agent"), "{s}");
    }
}
