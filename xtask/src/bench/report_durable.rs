//! "A durable writer": btm, `btrfs send -p`, restic and rsync when the node makes each height's writes
//! durable itself (as a node that syncs at every block commit does), so the cut's syncfs finds
//! little to write back. The main phases' writer never syncs, and there the syncfs writing
//! back its dirty folios is most of a small height (see "Where a height's time goes").
use std::fmt::Write as _;

use super::report::{bytes, mean, secs};
use super::{Durable, Results};

fn mean_of(hs: &[Durable], f: impl Fn(&Durable) -> f64) -> f64 {
    mean(hs.iter().map(f))
}

/// The section: one row per rate, means over its heights.
pub fn durable_section(s: &mut String, r: &Results) {
    if r.durable.is_empty() {
        return;
    }
    let _ = writeln!(
        s,
        "## A durable writer (the node syncs at its commit)\n\n\
         The main phases' writer never syncs: the cut's syncfs writes back what it dirtied, and \
         on xfs a 4 KiB store into a large page-cache folio dirties the whole folio, so that \
         write-back is most of a small height (\"Where a height's time goes\"). Here, after the \
         rate phases, the same writer made each height's writes durable itself before the tools \
         ran (a syncfs of its volume, timed apart as its commit), as a node does that syncs at \
         every block (MDBX and LMDB in their durable modes, LevelDB and Pebble with synced \
         writes). Same changes on both volumes; means over {} heights per rate. btm's time is \
         the request's wall time, as elsewhere.\n",
        r.durable.first().map_or(0, |(_, hs)| hs.len())
    );
    let _ = writeln!(
        s,
        "| rate | writer's commit on xfs / on btrfs | btm height | of which `syncfs` | written \
         back by the cut's syncfs | btm read | `btrfs send -p` | btm / btrfs send | restic \
         (x btm) | rsync (x btm) |\n\
         |---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"
    );
    for (rate, hs) in &r.durable {
        if hs.is_empty() {
            continue;
        }
        let btm = mean_of(hs, |d| d.btm.secs);
        let send = mean_of(hs, |d| d.btrfs.secs);
        let restic = mean_of(hs, |d| d.restic.secs);
        let rsync = mean_of(hs, |d| d.rsync.secs);
        let _ = writeln!(
            s,
            "| {:.1} % | {} / {} | {} | {:.0} ms | {} | {} | {} | {:.2}x | {} ({:.1}x) | {} \
             ({:.1}x) |",
            rate * 100.0,
            secs(mean_of(hs, |d| d.commit_xfs)),
            secs(mean_of(hs, |d| d.commit_btrfs)),
            secs(btm),
            mean_of(hs, |d| d.btm.phases[0]),
            bytes(mean_of(hs, |d| d.btm.synced as f64)),
            bytes(mean_of(hs, |d| d.btm.read as f64)),
            secs(send),
            btm / send.max(1e-9),
            secs(restic),
            restic / btm.max(1e-9),
            secs(rsync),
            rsync / btm.max(1e-9)
        );
    }
    let _ = writeln!(s);
}

/// Rows for issue 16's targets table: the cut-time goals with a durable writer.
pub fn durable_targets(s: &mut String, r: &Results) {
    let mark = |ok: bool| if ok { "met" } else { "**not met**" };
    for (rate, hs) in &r.durable {
        if hs.is_empty() {
            continue;
        }
        let btm = mean_of(hs, |d| d.btm.secs);
        let send = mean_of(hs, |d| d.btrfs.secs);
        let slower = |f: fn(&Durable) -> f64| mean_of(hs, f) / btm.max(1e-9);
        let (restic, rsync) = (slower(|d| d.restic.secs), slower(|d| d.rsync.secs));
        let _ = writeln!(
            s,
            "| a {:.1} % height at least 20x faster than restic and rsync, **durable writer** | \
             restic {restic:.1}x, rsync {rsync:.1}x slower than btm | {} |",
            rate * 100.0,
            mark(restic >= 20.0 && rsync >= 20.0)
        );
        if (*rate - super::RATES[1]).abs() < 1e-9 {
            let _ = writeln!(
                s,
                "| a 1 % height in at most half the time of `btrfs send -p`, **durable writer** \
                 | btm {}, btrfs send {} | {} (the writer synced at its commit: see \"A durable \
                 writer\") |",
                secs(btm),
                secs(send),
                mark(btm * 2.0 <= send)
            );
        } else if (*rate - super::RATES[0]).abs() < 1e-9 {
            let _ = writeln!(
                s,
                "| a 0.1 % height in at most 50 ms, **durable writer** | {} | {} (the writer \
                 synced at its commit) |",
                secs(btm),
                mark(btm <= 0.05)
            );
        }
    }
}
