//! The tracking-overhead table: fio IOPS without and with the agent, run in alternated rounds.
//! One pair of runs per round gives one overhead; the report states the median of those and
//! their spread, since on this shared 2-core machine a single pair moved by 20 % and more.
use std::fmt::Write as _;

use super::Results;
use super::report::{bytes, pct};

/// One engine's rounds: median IOPS without and with the agent, and the overhead of each
/// round's pair (percent of the IOPS without) as median, lowest and highest.
#[derive(Clone, Debug, PartialEq)]
pub struct Overhead {
    pub without: f64,
    pub with: f64,
    pub median: f64,
    pub low: f64,
    pub high: f64,
}

impl Overhead {
    /// From the rounds' IOPS without (`off`) and with (`on`) the agent, paired in order.
    pub fn of(off: &[f64], on: &[f64]) -> Overhead {
        let pairs: Vec<f64> = off
            .iter()
            .zip(on)
            .filter(|(o, _)| **o > 0.0)
            .map(|(o, w)| (o - w) / o * 100.0)
            .collect();
        let lo_hi = |f: fn(f64, f64) -> f64, start: f64| pairs.iter().copied().fold(start, f);
        Overhead {
            without: pct(off, 50.0),
            with: pct(on, 50.0),
            median: pct(&pairs, 50.0),
            low: if pairs.is_empty() {
                0.0
            } else {
                lo_hi(f64::min, f64::INFINITY)
            },
            high: if pairs.is_empty() {
                0.0
            } else {
                lo_hi(f64::max, f64::NEG_INFINITY)
            },
        }
    }
}

/// The worst engine by median overhead, and that overhead; `None` without fio runs.
pub fn worst(r: &Results) -> Option<(String, f64)> {
    r.fio
        .iter()
        .map(|(e, off, on)| (e.clone(), Overhead::of(off, on).median))
        .max_by(|a, b| a.1.total_cmp(&b.1))
}

/// Writes the section's table.
pub fn overhead_section(s: &mut String, r: &Results) {
    let rounds = r.fio.first().map_or(0, |f| f.1.len());
    let _ = writeln!(
        s,
        "## Tracking overhead (fio 4 KiB randwrite, {} file, {} s per run, {rounds} rounds of \
         without/with alternated)\n\n| engine | IOPS without agent (median) | IOPS with agent \
         tracking (median) | overhead (median of the rounds) | spread (lowest to highest round) \
         |\n|---|---:|---:|---:|---:|",
        bytes(r.fio_size as f64),
        r.fio_secs
    );
    for (e, off, on) in &r.fio {
        let o = Overhead::of(off, on);
        let what = match e.as_str() {
            "buffered" => "buffered (psync, end_fsync)",
            "direct" => "O_DIRECT (psync)",
            _ => "mmap (shared mapping, end_fsync)",
        };
        let _ = writeln!(
            s,
            "| {what} | {:.0} | {:.0} | {:+.1} % | {:+.1} to {:+.1} % |",
            o.without, o.with, o.median, o.low, o.high
        );
    }
    let _ = writeln!(
        s,
        "\nEach round runs every engine without the agent, then with it (started afresh); a \
         round's overhead compares its two runs. The spread is this machine's noise as much as \
         the agent's cost: a negative overhead is noise.\n"
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rounds_pair_in_order_and_the_median_is_of_the_pairs() {
        let o = Overhead::of(&[100.0, 200.0, 100.0], &[90.0, 150.0, 101.0]);
        // Pairs: +10 %, +25 %, -1 %.
        assert_eq!((o.median, o.low, o.high), (10.0, -1.0, 25.0));
        assert_eq!((o.without, o.with), (100.0, 101.0));
        let none = Overhead::of(&[], &[]);
        assert_eq!((none.median, none.low, none.high), (0.0, 0.0, 0.0));
    }
}
