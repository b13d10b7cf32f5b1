//! BENCHMARKS.md sections for issue 16's measurements: btm with the precision mechanism
//! (`btm-agent exec`), and the eBPF programs' cost per event under fio.
use std::fmt::Write as _;

use super::dataset::STATE_WRITE;
use super::report::{amplification, bytes, mean, pct, secs};
use super::{Height, Marks, Results};

/// The precision phases' heights at `rate`, when they ran.
pub fn precise_at(r: &Results, rate: f64) -> Option<&[Height]> {
    r.precise
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

fn row(s: &mut String, rate: f64, writer: &str, hs: &[Height], m: &Marks, btrfs: &str) {
    let fr: Vec<f64> = hs.iter().map(|h| h.btm.freeze_ms).collect();
    let c = &m.counters;
    let _ = writeln!(
        s,
        "| {:.1} % | {writer} | {} | {} | {} | **{:.2}x** | {:.1} / {:.1} ms | {} / {} / {} | {} | {btrfs} |",
        rate * 100.0,
        secs(mean(hs.iter().map(|h| h.btm.secs))),
        bytes(mean(hs.iter().map(|h| h.btm.read as f64))),
        bytes(mean(hs.iter().map(|h| h.btm.stored as f64))),
        amplification(hs),
        pct(&fr, 50.0),
        pct(&fr, 99.0),
        c.fault_marked,
        c.folio_marked,
        c.fault_wide,
        kb(m.pmd_kb),
    );
}

/// "With the precision mechanism": btm at 0.1 % and 1 % with THP disabled for the writer, beside
/// the same rates from the main phases (mapped as is) and btrfs send there.
pub fn precision_section(s: &mut String, r: &Results, heights: u64) {
    let _ = writeln!(
        s,
        "## With the precision mechanism (`btm-agent exec`: THP disabled for the writer)\n"
    );
    if r.precise.is_empty() {
        let _ = writeln!(s, "Not measured in this run (see FAILED below).\n");
        return;
    }
    let _ = writeln!(
        s,
        "On this kernel a shared writable mapping of a file cached in 2 MiB folios (xfs) is \
         mapped with one PMD on first touch: one store makes 2 MiB writable, and the tracker \
         must mark the whole folio. A node started as `btm-agent exec -- NODE` runs with \
         `prctl(PR_SET_THP_DISABLE, 1, 0, 0, 0)` (inherited across fork and exec), so its file \
         mappings are made of 4 KiB PTEs and every store into a clean page faults on its own. \
         After every other phase, the bench process (the state file's writer) made the same \
         call, dropped its mapping of `state.mdbx` and mapped it again (PMD mappings made \
         before stay until unmapped), then ran {heights} more heights at 0.1 % and at 1 % with \
         btm alone (same changes as the main phases: half of them state pages through the \
         mapping). Rows \"mapped as is\" are the main phases' figures at the same rate. \
         Counters are the tracker's (`status`) over those heights: `fault_marked` write faults \
         marked per page, `folio_marked` folios marked whole on dirtying, `fault_wide` faults \
         widened to a 2 MiB folio a PMD may map. `FilePmdMapped` is read from \
         /proc/self/smaps for the writer's mapping of `state.mdbx` after the heights.\n"
    );
    let _ = writeln!(
        s,
        "| rate | state file's writer | btm time / height | bytes read | bytes stored | read \
         amplification | freeze p50 / p99 | fault_marked / folio_marked / fault_wide | \
         FilePmdMapped | btrfs send time / height |\n\
         |---:|---|---:|---:|---:|---:|---:|---:|---:|---:|"
    );
    for (rate, hs, m) in &r.precise {
        let main = main_at(r, *rate);
        let btrfs = main.map_or_else(
            || "-".into(),
            |(mh, _)| secs(mean(mh.iter().map(|h| h.btrfs.secs))),
        );
        if let Some((mh, mm)) = main {
            row(s, *rate, "mapped as is", mh, &mm, &btrfs);
        }
        row(s, *rate, "**`exec`: THP disabled**", hs, m, &btrfs);
    }
    let with: Vec<Option<u64>> = r.precise.iter().map(|(_, _, m)| m.pmd_kb).collect();
    let with_kb = with.iter().map(|k| kb(*k)).collect::<Vec<_>>().join(" / ");
    let folio_marked: u64 = r
        .precise
        .iter()
        .map(|(_, _, m)| m.counters.folio_marked)
        .sum();
    let verdict = if !with.iter().all(|k| *k == Some(0)) {
        format!(
            "The mechanism was **not in force**: the writer's mapping still had FilePmdMapped \
             {with_kb} after the precision heights."
        )
    } else if r.pmd_normal_kb.is_some_and(|k| k > 0) {
        format!(
            "The mechanism was in force: the writer's mapping had FilePmdMapped {} after the \
             normal phases (the 16 MiB heights included) and {with_kb} after the precision \
             heights.",
            kb(r.pmd_normal_kb)
        )
    } else {
        format!(
            "No part of the writer's mapping was PMD-mapped even without the mechanism \
             (FilePmdMapped {} after the normal phases, the 16 MiB heights included; {with_kb} \
             after the precision heights): `state.mdbx` is first written in {} writes and xfs \
             sizes page-cache folios by the write, so its folios are smaller than a PMD and THP \
             disabled changes nothing here. The amplification that remains comes from folios \
             marked whole ({folio_marked} `folio_marked` over the precision heights): the data \
             set stores into pages its process never touched through the mapping, and the \
             tracker marks the whole folio on such a first-touch fault.",
            kb(r.pmd_normal_kb),
            bytes(STATE_WRITE as f64)
        )
    };
    let _ = writeln!(s, "\n{verdict}\n");
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
}

#[cfg(test)]
mod tests {
    use super::super::{BtmCut, FaultCounters};
    use super::*;

    fn results(normal_kb: u64, with_kb: u64) -> Results {
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
        let marks = |kb| Marks {
            counters: FaultCounters {
                fault_marked: 3,
                folio_marked: 2,
                fault_wide: 1,
            },
            pmd_kb: Some(kb),
        };
        Results {
            rates: vec![(0.01, vec![h(40 << 20)])],
            rate_marks: vec![marks(normal_kb)],
            precise: vec![(0.01, vec![h(1 << 20)], marks(with_kb))],
            pmd_normal_kb: Some(normal_kb),
            ..Default::default()
        }
    }

    #[test]
    fn precision_section_says_whether_the_mechanism_mattered() {
        let mut s = String::new();
        precision_section(&mut s, &results(4096, 0), 1);
        assert!(s.contains("| 1.0 % | mapped as is |"), "{s}");
        assert!(s.contains("**40.00x**") && s.contains("**1.00x**"), "{s}");
        assert!(s.contains("The mechanism was in force"), "{s}");
        assert!(!s.contains("   "), "a string continuation lost: {s}");
        let mut s = String::new();
        precision_section(&mut s, &results(0, 0), 1);
        assert!(s.contains("even without the mechanism"), "{s}");
        assert!(!s.contains("   "), "a string continuation lost: {s}");
        let mut s = String::new();
        precision_section(&mut s, &results(4096, 2048), 1);
        assert!(s.contains("**not in force**"), "{s}");
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
