//! `btm-agent stats`: what a log holds and what it costs, from metadata alone (no payload is
//! read, so it is quick on any size and works beside a running agent): heights, records,
//! segments, the tree at the last height, bytes captured, after deduplication and stored, and
//! the files that take the most.
use std::path::PathBuf;

use anyhow::Result;

use super::report;
use super::size::human;
use crate::log::{Log, LogStats};

#[derive(clap::Args, Debug)]
pub struct StatsArgs {
    /// The log (or `log` in the configuration file).
    #[arg(long, env = "BTM_LOG_DIR")]
    pub log: PathBuf,
    /// How many of the files taking the most stored bytes to list (0: none).
    #[arg(long, default_value_t = 10)]
    pub top: usize,
    /// Print one JSON object (`"v": 1`, exact byte counts); errors too.
    #[arg(long)]
    pub json: bool,
}

pub fn run(a: StatsArgs) -> Result<()> {
    let log = Log::open_read(&a.log)?;
    let s = log.stats(a.top)?;
    if a.json {
        return report::print_json(serde_json::json!({ "log": a.log, "stats": s }));
    }
    print!("{}", text(&a.log, &s));
    Ok(())
}

fn text(log: &std::path::Path, s: &LogStats) -> String {
    let range = match (s.first_height, s.last_height) {
        (Some(a), Some(b)) => format!(" ({a}..={b})"),
        _ => String::new(),
    };
    let mut out = format!(
        "log {}: {} heights{range}, {} records ({} of removed heights), {} segments, {} on disk \
         ({} of removed heights)\n",
        log.display(),
        s.heights,
        s.records,
        s.dropped_records,
        s.segments,
        human(s.log_bytes),
        human(s.dropped_bytes)
    );
    if let Some(h) = s.last_height {
        out += &format!(
            "height {h}: {} files, {} ({} of data)\n",
            s.files_at_last,
            human(s.logical_bytes_at_last),
            human(s.data_bytes_at_last)
        );
    }
    out += &format!(
        "captured {} of data over all records; {} after deduplication ({:.2}x), {} stored in {} \
         payloads after compression ({:.2}x); {:.2}x in all\n",
        human(s.captured_bytes),
        human(s.unique_bytes),
        s.dedup_ratio,
        human(s.stored_bytes),
        s.payloads,
        s.compression_ratio,
        s.total_ratio
    );
    if !s.top_files.is_empty() {
        out += "files taking the most stored bytes:\n";
        for f in &s.top_files {
            out += &format!(
                "{:>12}  {}{}\n",
                human(f.stored_bytes),
                f.path,
                if f.live {
                    ""
                } else {
                    "  (not at the last height)"
                }
            );
        }
    }
    out
}
