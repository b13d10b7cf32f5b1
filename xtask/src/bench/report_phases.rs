//! "Where a height's time goes": the agent's own phase times per rate, beside the request's
//! wall time, btrfs send and the physical limit. The profile each cut-time verdict rests on.
use std::fmt::Write as _;

use super::report::{bytes, mean, secs};
use super::{Height, PHASES, Results};

/// What each phase covers, for the table's legend.
const WHAT: [&str; PHASES.len()] = [
    "flip the tracker's epoch, syncfs (write the node's dirty pages back, which write-protects \
     its shared mappings again)",
    "drain the epoch's marks from the tracker",
    "the namespace before the freeze (patched from events, or walked)",
    "read, compress, hash and append what the marks name",
    "freeze, the frozen phase (the blocks changed since, the namespace settled), thaw",
    "the record: namespace diff, metadata, commit and its fsync",
];

fn row(s: &mut String, label: &str, hs: &[Height]) {
    if hs.is_empty() || hs.iter().all(|h| h.btm.total_ms == 0.0) {
        return;
    }
    let phase = |i: usize| mean(hs.iter().map(|h| h.btm.phases[i]));
    let total = mean(hs.iter().map(|h| h.btm.total_ms));
    let wall = mean(hs.iter().map(|h| h.btm.secs)) * 1000.0;
    let cells: Vec<String> = (0..PHASES.len())
        .map(|i| {
            format!(
                "{:.0} ({:.0} %)",
                phase(i),
                phase(i) / total.max(1e-9) * 100.0
            )
        })
        .collect();
    let _ = writeln!(
        s,
        "| {label} | {} | {} | {} | {total:.0} | {:.0} | {} |",
        bytes(mean(hs.iter().map(|h| h.btm.read as f64))),
        bytes(mean(hs.iter().map(|h| h.btm.synced as f64))),
        cells.join(" | "),
        wall - total,
        secs(mean(hs.iter().map(|h| h.btrfs.secs))),
    );
}

/// The table, one row per rate of the main phases and per rate without the precision
/// mechanism; nothing when the agent reported no phases (an older agent).
pub fn phases_section(s: &mut String, r: &Results) {
    let all = r.rates.iter().flat_map(|(_, hs)| hs.iter());
    if all.clone().all(|h| h.btm.total_ms == 0.0) {
        return;
    }
    let _ = writeln!(
        s,
        "### Where a height's time goes\n\nThe agent's own timing of each cut (`phases_ms` in \
         the cut report), mean per height, in ms and as a share of the cut; \"request\" is the \
         rest of the wall time the bench measured (the socket round trip, retention, the \
         status). \"written back by the syncfs\" is what the volume's device wrote during it \
         (`synced_bytes`). Phases:\n"
    );
    for (k, what) in PHASES.iter().zip(WHAT) {
        let _ = writeln!(s, "- `{k}`: {what}");
    }
    let _ = writeln!(
        s,
        "\n| rate | btm read | written back by the syncfs | {} | cut total | request | btrfs send |\n|---|---:|---:|{}---:|---:|---:|",
        PHASES.map(|k| format!("`{k}`")).join(" | "),
        "---:|".repeat(PHASES.len())
    );
    for (rate, hs) in &r.rates {
        row(s, &format!("{:.1} %", rate * 100.0), hs);
    }
    for (rate, hs, _) in &r.without {
        row(s, &format!("{:.1} %, without", rate * 100.0), hs);
    }
    let _ = writeln!(s);
}

#[cfg(test)]
mod tests {
    use super::super::BtmCut;
    use super::*;

    #[test]
    fn phases_add_up_per_rate() {
        let h = |total| Height {
            btm: BtmCut {
                secs: 0.120,
                read: 1 << 20,
                total_ms: total,
                phases: [5.0, 5.0, 20.0, 30.0, 15.0, 25.0],
                synced: 4 << 20,
                ..Default::default()
            },
            ..Default::default()
        };
        let r = Results {
            rates: vec![(0.01, vec![h(100.0), h(100.0)])],
            ..Default::default()
        };
        let mut s = String::new();
        phases_section(&mut s, &r);
        assert!(
            s.contains("| 1.0 % | 1.0 MiB | 4.0 MiB | 5 (5 %) | 5 (5 %) | 20 (20 %) | 30 (30 %) | 15 (15 %) | 25 (25 %) | 100 | 20 |"),
            "{s}"
        );
        let mut s = String::new();
        phases_section(&mut s, &Results::default());
        assert!(s.is_empty(), "{s}");
    }
}
