//! What verify, replay and rollback print: a sentence for people (sizes in KiB/MiB/GiB), or
//! with `--json` one object (`"v": 1`, exact byte counts) for programs.
use crate::log::{ReplayStats, VerifyReport};

use super::size::human;

/// Prints `value` as one JSON object with `"v": 1` in front.
pub fn print_json(value: impl serde::Serialize) -> anyhow::Result<()> {
    let mut v = serde_json::to_value(value)?;
    if let Some(o) = v.as_object_mut() {
        let mut out = serde_json::Map::new();
        out.insert("v".into(), 1.into());
        out.append(o);
        v = out.into();
    }
    println!("{}", serde_json::to_string_pretty(&v)?);
    Ok(())
}

/// `wrote 1.0 MiB, compared 3.0 MiB, read 512.0 KiB of the log (4 payloads); 7 entries
/// touched, 1 removed, 0 holes punched`.
pub fn replay_summary(s: &ReplayStats) -> String {
    format!(
        "wrote {}, compared {}, read {} of the log ({} payloads); {} entries touched, {} \
         removed, {} holes punched",
        human(s.bytes_written),
        human(s.bytes_compared),
        human(s.log_bytes_read),
        s.payloads_read,
        s.files_touched,
        s.entries_removed,
        s.holes_punched
    )
}

/// `ok: 12 records (heights 3..=14) in 1 segment, 40 payloads checked (9.0 MiB), 2.1 MiB read; the
/// last height has 5 files (8.0 MiB)`.
pub fn verify_summary(r: &VerifyReport) -> String {
    let range = match (r.first_height, r.last_height) {
        (Some(a), Some(b)) => format!(" (heights {a}..={b})"),
        _ => String::new(),
    };
    let torn = r.torn_tail.as_ref().map_or(String::new(), |t| {
        format!(
            "; a torn tail of {} was {} ({})",
            human(t.bytes),
            if t.cut { "cut off" } else { "ignored" },
            t.reason
        )
    });
    format!(
        "ok: {} records{range} in {} segments, {} payloads checked ({}), {} read; the last \
         height has {} files ({}){torn}",
        r.records,
        r.segments,
        r.payloads,
        human(r.raw_bytes),
        human(r.bytes_read),
        r.files_at_last,
        human(r.data_bytes_at_last)
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn summaries_read_as_sentences() {
        let s = ReplayStats {
            bytes_written: 1 << 20,
            payloads_read: 4,
            ..Default::default()
        };
        let t = replay_summary(&s);
        assert!(
            t.starts_with("wrote 1.0 MiB") && t.contains("(4 payloads)"),
            "{t}"
        );
        assert!(!t.contains('{'), "{t}");
        let r = VerifyReport {
            records: 2,
            segments: 1,
            first_height: Some(3),
            last_height: Some(4),
            ..Default::default()
        };
        assert!(verify_summary(&r).starts_with("ok: 2 records (heights 3..=4) in 1 segments"));
    }
}
