//! `rollback --dry-run` and `compact --dry-run`: what would be done, and nothing done. The log
//! is opened as a reader (as `list` does), so a dry run works while an agent appends, and no
//! file of the log changes; the volume is not touched.
use std::path::PathBuf;

use anyhow::Result;
use serde::Serialize;

use super::logs::{CompactArgs, RollbackArgs};
use super::report;
use super::run::Mode;
use super::size::human;
use crate::log::Log;
use crate::retention::Policy;
use crate::snapshot::{self, SnapshotBackend};

/// What `rollback` would do.
#[derive(Serialize)]
struct RollbackPlan {
    dry_run: bool,
    /// The height the volume would be rolled back to.
    height: u64,
    volume: PathBuf,
    /// `ebpf` (the log) or the native snapshots' kind.
    mode: String,
    /// The log, in eBPF mode.
    #[serde(skip_serializing_if = "Option::is_none")]
    log: Option<PathBuf>,
    /// Heights above the target that would leave the log (or whose snapshots would go).
    removed: Vec<u64>,
    /// Bytes of every record above the target, those of heights already removed by retention
    /// included: what the rollback deletes from the log (eBPF mode).
    #[serde(skip_serializing_if = "Option::is_none")]
    removed_bytes: Option<u64>,
    /// Heights above the target already removed by retention whose records would go too.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    removed_dropped: Vec<u64>,
    /// Globs of paths the rollback would leave as they are (`--preserve`).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    preserve: Vec<String>,
}

pub fn rollback(a: &RollbackArgs) -> Result<()> {
    let preserve = a.preserve.globs()?;
    match (a.mode, &a.log) {
        (Mode::Zfs | Mode::Btrfs, _) | (Mode::Auto, None) => {
            super::logs::native_preserve(&preserve, "native snapshot")?
        }
        _ => {}
    }
    let dir = match (a.mode, &a.log) {
        (Mode::Zfs, _) => return native(a, Box::new(snapshot::Zfs::open(&a.volume)?)),
        (Mode::Btrfs, _) => return native(a, Box::new(snapshot::Btrfs::open(&a.volume)?)),
        (Mode::Auto, None) => return native(a, super::logs::native(Some(&a.volume))?),
        (Mode::Ebpf, None) => PathBuf::from(super::run::DEFAULT_LOG),
        (Mode::Auto | Mode::Ebpf, Some(dir)) => dir.clone(),
    };
    let log = Log::open_read(&dir)?;
    let h = log.resolve(a.to, a.exact)?;
    let newer: Vec<_> = log.heights().into_iter().filter(|i| i.height > h).collect();
    let newer_heights: Vec<u64> = newer.iter().map(|i| i.height).collect();
    crate::pins::refuse_removing(&dir, &newer_heights, &format!("rolling back to {h}"))?;
    let removed_bytes = log
        .records_info()
        .iter()
        .filter(|(i, _)| i.height > h)
        .map(|(i, _)| i.stored_bytes)
        .sum();
    let removed_dropped = dropped_records(&log)?
        .into_iter()
        .filter(|&x| x > h)
        .collect();
    print_rollback(
        a.json,
        RollbackPlan {
            dry_run: true,
            height: h,
            volume: a.volume.clone(),
            mode: "ebpf".into(),
            log: Some(dir),
            removed: newer.iter().map(|i| i.height).collect(),
            removed_bytes: Some(removed_bytes),
            removed_dropped,
            preserve: preserve.patterns().to_vec(),
        },
    )
}

fn native(a: &RollbackArgs, b: Box<dyn SnapshotBackend>) -> Result<()> {
    let hs = b.list()?;
    let h = snapshot::resolve_target(&b.describe(), &hs, a.to, a.exact)?;
    print_rollback(
        a.json,
        RollbackPlan {
            dry_run: true,
            height: h,
            volume: a.volume.clone(),
            mode: b.name().into(),
            log: None,
            removed: hs.into_iter().filter(|&x| x > h).collect(),
            removed_bytes: None,
            removed_dropped: Vec::new(),
            preserve: Vec::new(),
        },
    )
}

fn print_rollback(json: bool, p: RollbackPlan) -> Result<()> {
    if json {
        return report::print_json(&p);
    }
    let from = match &p.log {
        Some(l) => format!("the log {}", l.display()),
        None => format!("its {} snapshots", p.mode),
    };
    println!(
        "dry run: would roll {} back to height {} from {from}",
        p.volume.display(),
        p.height
    );
    let bytes = p
        .removed_bytes
        .map_or(String::new(), |b| format!(" ({} of records)", human(b)));
    println!(
        "dry run: would remove {} newer heights{bytes}: {}",
        p.removed.len(),
        heights_text(&p.removed)
    );
    if !p.removed_dropped.is_empty() {
        println!(
            "dry run: and the records of {} heights above it already removed by retention",
            p.removed_dropped.len()
        );
    }
    if !p.preserve.is_empty() {
        println!(
            "dry run: paths matching {} would be left as they are",
            p.preserve.join(", ")
        );
    }
    println!("dry run: nothing changed");
    Ok(())
}

/// What `compact` would do.
#[derive(Serialize)]
struct CompactPlan {
    dry_run: bool,
    log: PathBuf,
    /// Heights whose records would be folded into the next kept ones: removed by retention
    /// already, or by `--cap` now.
    folded: Vec<u64>,
    /// Of those, the heights `--cap/--itv/--algo` would remove first.
    removed_by_cap: Vec<u64>,
    /// Heights left afterwards.
    kept: usize,
    /// Bytes of all segments now.
    bytes_before: u64,
    /// Bytes of the folded records: at most this much is returned (data a kept height still
    /// needs moves into it).
    bytes_freed_at_most: u64,
}

pub fn compact(a: &CompactArgs) -> Result<()> {
    let log = Log::open_read(&a.log)?;
    let heights = log.heights();
    let removed_by_cap = match a.cap {
        Some(cap) => {
            let hs: Vec<u64> = heights.iter().map(|h| h.height).collect();
            Policy::new(a.itv, cap, a.algo)?.to_delete_unpinned(&hs, &crate::pins::pinned(&a.log)?)
        }
        None => Vec::new(),
    };
    let mut folded = dropped_records(&log)?;
    folded.extend(&removed_by_cap);
    folded.sort_unstable();
    folded.dedup();
    let cap_bytes: u64 = heights
        .iter()
        .filter(|h| removed_by_cap.contains(&h.height))
        .map(|h| h.stored_bytes)
        .sum();
    let p = CompactPlan {
        dry_run: true,
        log: a.log.clone(),
        kept: heights.len() - removed_by_cap.len(),
        folded,
        removed_by_cap,
        bytes_before: log.total_bytes(),
        bytes_freed_at_most: log.dropped_bytes() + cap_bytes,
    };
    if a.json {
        return report::print_json(&p);
    }
    println!(
        "dry run: compacting {} would fold {} removed heights into the next kept ones{}: {}",
        p.log.display(),
        p.folded.len(),
        if p.removed_by_cap.is_empty() {
            String::new()
        } else {
            format!(
                " ({} of them removed by --cap first)",
                p.removed_by_cap.len()
            )
        },
        heights_text(&p.folded)
    );
    println!(
        "dry run: it would return at most {} of {}; {} heights would stay",
        human(p.bytes_freed_at_most),
        human(p.bytes_before),
        p.kept
    );
    println!("dry run: nothing changed");
    Ok(())
}

/// Heights of the records still in the log that retention removed (not yet compacted).
fn dropped_records(log: &Log) -> Result<Vec<u64>> {
    let mut out = Vec::new();
    for i in 0..log.record_count() {
        let v = log.record_view(i)?;
        if v.dropped {
            out.push(v.height);
        }
    }
    Ok(out)
}

/// `1, 2, 5` or, for many, the first and last few.
fn heights_text(hs: &[u64]) -> String {
    let s = |v: &[u64]| v.iter().map(u64::to_string).collect::<Vec<_>>().join(", ");
    match hs.len() {
        0 => "none".into(),
        n if n <= 12 => s(hs),
        n => format!("{}, ... {}", s(&hs[..5]), s(&hs[n - 5..])),
    }
}
