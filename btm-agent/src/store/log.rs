//! eBPF mode's store: the cutter (tracker + log) and the log's kept heights, with retention
//! tombstoning heights at once and compaction folding them away once they weigh enough.
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};

use super::HeightStore;
use super::compaction::{Background, Progress, tenths_since};
use crate::cut::Cutter;
use crate::log::{CompactReport, Log};
use crate::metrics::Metrics;
use crate::retention::Policy;
use crate::tracker::Tracker;
use crate::tracker::prefault::Prefaulter;
use crate::volume::Mount;

/// Compact the log (tracking goes on meanwhile) once dropped records hold 1/COMPACT_SHARE of
/// it (and `--compact-min-bytes`).
const COMPACT_SHARE: u64 = 4;
/// How long to wait after a postponed or failed compaction.
const COMPACT_RETRY: Duration = Duration::from_secs(600);

pub struct LogStore {
    cutter: Box<Cutter>,
    dir: PathBuf,
    kept: Kept,
    compact_min_bytes: u64,
    /// Bytes per second a background compaction reads and writes at most (0: no limit).
    compact_rate: u64,
    /// A compaction being prepared beside the cuts.
    compaction: Option<Background>,
    /// How the last compaction ended, for `status` (an operator, or the scale benchmark,
    /// must not take a failed one for a finished one).
    last_compaction: Option<serde_json::Value>,
    /// Read-faulting the node's mappings after cuts (None: switched off).
    prefault: Option<Prefaulter>,
}

/// The log's kept heights (retention's input) and the byte counts that decide compaction,
/// tracked here so that a cut never re-reads the log.
struct Kept {
    /// Kept height -> bytes its record takes.
    sizes: std::collections::BTreeMap<u64, u64>,
    dropped_bytes: u64,
    total_bytes: u64,
    /// After a postponed or failed compaction: not before this.
    retry_after: Option<Instant>,
}

impl Kept {
    fn of(log: &Log) -> Kept {
        Kept {
            sizes: log
                .heights()
                .iter()
                .map(|h| (h.height, h.stored_bytes))
                .collect(),
            dropped_bytes: log.dropped_bytes(),
            total_bytes: log.total_bytes(),
            retry_after: None,
        }
    }

    fn heights(&self) -> Vec<u64> {
        self.sizes.keys().copied().collect()
    }

    fn wants_compaction(&self, min_bytes: u64) -> bool {
        self.retry_after.is_none_or(|t| Instant::now() >= t)
            && self.dropped_bytes >= min_bytes.max(1)
            && self.dropped_bytes * COMPACT_SHARE >= self.total_bytes
    }
}

/// Whether nobody holds `readers.lock` right now (probed with a non-blocking exclusive lock).
fn readers_idle(dir: &Path) -> bool {
    std::fs::File::open(dir.join("readers.lock"))
        .map(|f| f.try_lock().is_ok())
        .unwrap_or(true)
}

/// Logs a compaction's report, each count as a number.
fn log_compacted(rep: &CompactReport, started: Option<Instant>) {
    tracing::info!(
        secs = started.map_or(0.0, tenths_since),
        dropped_records = rep.dropped_records,
        merged_records = rep.merged_records,
        bytes_before = rep.bytes_before,
        bytes_after = rep.bytes_after,
        "compacted the log"
    );
}

/// `status`'s record of how a compaction ended: `result`, its seconds, when it ended (Unix
/// seconds) and `extra`'s fields.
fn outcome(result: &str, started: Option<Instant>, extra: serde_json::Value) -> serde_json::Value {
    let mut v = serde_json::json!({
        "result": result,
        "secs": started.map(tenths_since),
        "ended_unix": std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs()),
    });
    if let (Some(o), serde_json::Value::Object(e)) = (v.as_object_mut(), extra) {
        o.extend(e);
    }
    v
}

impl LogStore {
    /// Opens (or creates) the log at `dir` for the tracked volume. The policy may have changed
    /// since the last run: it is applied at once, and what it drops is compacted in the
    /// background with the same threshold as after cuts.
    pub fn open(
        mount: Mount,
        tracker: Tracker,
        dir: &Path,
        policy: &Policy,
        compaction: CompactSettings,
        freeze: crate::cut::Freeze,
    ) -> Result<LogStore> {
        std::fs::create_dir_all(dir)
            .with_context(|| format!("creating log dir {}", dir.display()))?;
        let mut log = Log::open_append(dir)?;
        let hs: Vec<u64> = log.heights().iter().map(|h| h.height).collect();
        log.drop_heights(&policy.to_delete_unpinned(&hs, &crate::pins::pinned(dir)?))?;
        let kept = Kept::of(&log);
        let mut cutter = Cutter::new(mount, tracker, log)?;
        cutter.freeze = freeze;
        let mut store = LogStore {
            cutter: Box::new(cutter),
            dir: dir.to_path_buf(),
            kept,
            compact_min_bytes: compaction.min_bytes,
            compact_rate: compaction.bytes_per_sec,
            compaction: None,
            last_compaction: None,
            prefault: None,
        };
        // What the policy drops now starts compacting at once, beside the first cuts.
        store.maintain()?;
        Ok(store)
    }

    /// Read-faults the node's shared mappings of the volume after each cut (see
    /// [`crate::tracker::prefault`]), or not.
    pub fn with_prefault(mut self, on: bool) -> LogStore {
        self.prefault = on.then(Prefaulter::default);
        self
    }

    /// Stops a compaction being prepared, throwing its work away.
    fn stop_compaction(&mut self) {
        if let Some(bg) = self.compaction.take() {
            tracing::info!("stopping the log compaction in progress");
            bg.stop();
        }
    }

    /// Records a compaction that failed (or could not start) and waits before the next try.
    fn compaction_failed(&mut self, started: Option<Instant>, e: &anyhow::Error) {
        tracing::warn!(
            "log compaction failed, retrying in {} s: {e:#}",
            COMPACT_RETRY.as_secs()
        );
        self.kept.retry_after = Some(Instant::now() + COMPACT_RETRY);
        self.last_compaction = Some(outcome(
            "failed",
            started,
            serde_json::json!({ "error": format!("{e:#}"), "retry_in_secs": COMPACT_RETRY.as_secs() }),
        ));
    }

    /// Finishes a prepared compaction (copying the heights cut meanwhile) once no reader
    /// holds the log; until then it waits, and cuts go on.
    fn finish_compaction(&mut self, p: crate::log::Prepared) {
        let started = self.compaction.as_ref().map(|b| b.started);
        self.compaction = None;
        match self.cutter.transform_log(|log| log.finish_compaction(p)) {
            Ok(rep) => {
                log_compacted(&rep, started);
                self.last_compaction = Some(outcome(
                    "compacted",
                    started,
                    serde_json::json!({
                        "bytes_before": rep.bytes_before,
                        "bytes_after": rep.bytes_after,
                        "dropped_records": rep.dropped_records,
                    }),
                ));
                // Compaction folds a state of its own: hundreds of MiB at 10^6 files.
                crate::heap::give_back();
                self.kept = Kept::of(self.cutter.log());
            }
            Err(e) => {
                self.kept = Kept::of(self.cutter.log());
                self.compaction_failed(started, &e);
            }
        }
    }
}

/// When eBPF mode compacts its log (`run --compact-min-bytes`, `--compact-rate`).
#[derive(Clone, Copy, Debug)]
pub struct CompactSettings {
    pub min_bytes: u64,
    pub bytes_per_sec: u64,
}

impl HeightStore for LogStore {
    fn mode(&self) -> &'static str {
        "ebpf"
    }

    fn describe(&self) -> String {
        format!(
            "volume {}, log {}",
            self.cutter.root().display(),
            self.dir.display()
        )
    }

    fn heights(&self) -> Result<Vec<u64>> {
        Ok(self.kept.heights())
    }

    fn last_height(&self) -> Option<u64> {
        self.cutter.log().last_height()
    }

    fn keep(&mut self, height: u64, metrics: &Metrics) -> Result<serde_json::Value> {
        let (rep, info) = self.cutter.cut(height)?;
        if let Some(p) = &mut self.prefault {
            let t = self.cutter.tracker();
            let m = t.mount();
            p.kick(t.mapper_pids(), m.major, m.minor);
        }
        let stats = self.cutter.tracker().stats().ok();
        metrics.record_cut(&rep, info.stored_bytes, stats.as_ref());
        tracing::info!(
            height,
            freeze_ms = (rep.freeze_ms * 10.0).round() / 10.0,
            freeze_enter_ms = (rep.freeze_enter_ms * 10.0).round() / 10.0,
            frozen_entries = rep.frozen_entries,
            frozen_walk = rep.frozen_walk,
            unfrozen_walk = rep.unfrozen_walk,
            record_paths = rep.record_paths,
            total_ms = rep.total_ms.round(),
            read = rep.read_unfrozen + rep.read_frozen,
            stored = info.stored_bytes,
            files = rep.files_changed,
            "height durable"
        );
        self.kept.sizes.insert(height, info.stored_bytes);
        self.kept.total_bytes += info.stored_bytes;
        Ok(serde_json::to_value(&rep)?)
    }

    fn remove(&mut self, heights: &[u64]) -> Result<()> {
        self.cutter.log_mut().drop_heights(heights)?;
        for h in heights {
            self.kept.dropped_bytes += self.kept.sizes.remove(h).unwrap_or(0);
        }
        Ok(())
    }

    fn rollback(
        &mut self,
        height: Option<u64>,
        exact: bool,
        preserve: &crate::log::PathGlobs,
    ) -> Result<serde_json::Value> {
        // `kept` knows what this agent dropped since it opened the log.
        let h = crate::log::resolve_height(&self.kept.heights(), height, exact)?;
        let removed: Vec<u64> = self.kept.heights().into_iter().filter(|&x| x > h).collect();
        crate::pins::refuse_removing(&self.dir, &removed, &format!("rolling back to {h}"))?;
        // A compaction prepared from the records a rollback cuts off would bring them back.
        self.stop_compaction();
        let stats = self.cutter.rollback(h, preserve)?;
        self.kept = Kept::of(self.cutter.log());
        Ok(serde_json::json!({ "height": h, "removed": removed, "stats": stats }))
    }

    fn pinned(&self) -> Result<std::collections::BTreeSet<u64>> {
        crate::pins::pinned(&self.dir)
    }

    fn status(&self) -> Result<serde_json::Value> {
        Ok(serde_json::json!({
            "mode": "ebpf",
            "volume": self.cutter.root(),
            "last_height": self.cutter.log().last_height(),
            "heights": self.kept.sizes.len(),
            "tracker": self.cutter.tracker().stats().ok(),
            "programs": self.cutter.tracker().program_costs(),
            "prefault": self.prefault.as_ref().map(Prefaulter::stats),
            "compaction": self.compaction.as_ref().map(Background::describe),
            "last_compaction": self.last_compaction,
        }))
    }

    /// Compacts the log once dropped records take enough of it: starts preparing it on a
    /// thread, and finishes it on a later call once it is prepared. Cuts go on meanwhile and
    /// the next cut stays incremental (compaction keeps the last height's state). An error
    /// leaves the log as it was; compaction is retried later.
    fn maintain(&mut self) -> Result<()> {
        self.cutter.maintain_index();
        if let Some(bg) = &mut self.compaction {
            match bg.poll() {
                Progress::Running => {}
                Progress::Nothing => {
                    let started = Some(bg.started);
                    self.compaction = None;
                    self.last_compaction =
                        Some(outcome("nothing to fold", started, serde_json::json!({})));
                }
                Progress::Failed(e) => {
                    let started = Some(bg.started);
                    self.compaction = None;
                    self.compaction_failed(started, &anyhow::Error::from(e));
                }
                // Readers (replay, list) hold readers.lock shared; the commit needs it
                // exclusively. The prepared work waits for them (and cuts go on).
                Progress::Prepared(p) if readers_idle(&self.dir) => self.finish_compaction(*p),
                Progress::Prepared(p) => bg.park(p),
            }
            return Ok(());
        }
        if !self.kept.wants_compaction(self.compact_min_bytes) {
            return Ok(());
        }
        match Background::start(self.cutter.log(), self.compact_rate) {
            Ok(bg) => {
                tracing::info!(
                    dropped_bytes = self.kept.dropped_bytes,
                    total_bytes = self.kept.total_bytes,
                    "log compaction started in the background"
                );
                self.compaction = Some(bg);
            }
            Err(e) => self.compaction_failed(None, &e),
        }
        Ok(())
    }

    fn suspend(&mut self) -> Result<()> {
        self.stop_compaction();
        self.cutter.suspend().map(drop)
    }

    fn log_dir(&self) -> Option<&Path> {
        Some(&self.dir)
    }
}
