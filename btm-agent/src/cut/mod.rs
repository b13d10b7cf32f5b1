//! The cut: capture exactly what changed up to height H, crash-consistently, and append it.
//!
//! Two phases keep the freeze short:
//! 1. *Unfrozen*: flip the epoch, `syncfs` (every folio clean, every shared PTE write-protected,
//!    so any later change fires a fresh event), then read what the previous epoch marked (or
//!    everything, for a baseline).
//! 2. *Frozen* (`FIFREEZE`): flip again, walk the namespace, re-read only what changed since
//!    phase 1, thaw. Compression, hashing and the fsync happen after the thaw, in
//!    [`Log::append`]; the height is acknowledged only once it is durable.
//!
//! The first cut after start (and any cut after the tracker lost an event) captures every file
//! in full: the agent cannot know what changed while it was not tracking. Extents are cut at
//! 1 MiB-aligned pieces, so the unchanged ones deduplicate against the log by blake3.
pub mod capture;
pub mod crash_index;
pub mod freeze;
mod frozen;
mod idmap;
mod known;
mod lookup;
pub mod losses;
mod namespace;
pub mod nsevents;
mod record;
mod report;
pub mod resume;
mod rollback;
pub mod scan;
mod stat;
mod suspend;
mod want;

use std::{
    collections::{BTreeMap, BTreeSet, HashMap, HashSet},
    os::unix::fs::MetadataExt,
    path::{Path, PathBuf},
    time::{Duration, Instant, SystemTime},
};

use anyhow::{Context, Result, bail};
use capture::{CaptureStats, read_identity};
pub use freeze::{Freeze, NodeCgroup, syncfs};
pub use idmap::IdMap;
use lookup::Files;
use losses::Losses;
use nsevents::NsWatch;
pub use record::namespace_ops;
use report::Lap;
pub use report::{CutReport, PhaseTimes};
use resume::Resume;
use scan::{Identity, Kind, Scan, ScanEntry, ancestors};
pub use suspend::Suspended;
use want::{Want, ranges_of};

use crate::{
    log::{
        Draft, Entry, ExtentData, FileId, HeightInfo, Log, LogError, NsOp, RecordOps, RelPath,
        TreeState,
    },
    tracker::{DirtySet, Tracker},
    volume::Mount,
};

/// A height whose capture keeps losing events fails after this many full retries.
const MAX_FULL_RETRIES: u32 = 2;

/// A record of more namespace operations than this (about 20 MiB of them) leaves enough
/// freed heap behind for the cut to hand it back (see [`crate::heap`]).
const LARGE_RECORD_OPS: usize = 100_000;

pub struct Cutter {
    mount: Mount,
    tracker: Tracker,
    /// Always Some, except while [`Cutter::transform_log`] has lent it out. Its tip (the
    /// state at the last height) is the namespace and sizes each cut diffs against: the
    /// cutter keeps no copy of them.
    log: Option<Log>,
    ids: IdMap,
    next_id: FileId,
    force_full: bool,
    /// The tracker's loss counters as the last cut saw them (see [`losses`]).
    seen: Losses,
    /// Full captures of the current height redone because events were lost meanwhile.
    full_retries: u32,
    /// What phase 2 freezes: the volume, the node's cgroup, or nothing (only when the caller
    /// pauses the node itself).
    pub freeze: Freeze,
    /// A clean stop leaves the tracker running for the next start (`BTM_HANDOVER=0`: not).
    pub leave_running: bool,
    /// Namespace changes since the last look at the tree, so neither phase walks it again.
    ns: Option<NsWatch>,
    /// The namespace as the last freeze left it, patched from events by the next cut instead
    /// of walking the tree again (see [`Cutter::namespace_now`]).
    kept: Option<Scan>,
    /// Heights cut since the unfrozen phase last walked the whole tree.
    since_walk: u64,
    /// Walk the whole tree unfrozen at least every this many heights, checking the
    /// namespace kept from events against it (`BTM_WALK_EVERY`, 64 by default).
    pub walk_every: u64,
    /// Paths where the namespace kept from events and this cut's walk differ: the frozen
    /// phase's events explain those changed meanwhile, the rest were missed.
    check: Option<Vec<RelPath>>,
    /// What a clean stop left for the first cut after this start (see [`resume`]).
    resume: Option<Resume>,
    /// Marked inode numbers no path of the volume leads to (see [`frozen`]).
    phantoms: HashSet<u64>,
    /// Tests: runs between the unfrozen phase and the freeze (changes made there are what
    /// the frozen phase must find).
    pub before_freeze: Option<Box<dyn FnMut() + Send>>,
    /// Tests: runs inside the freeze, before the frozen phase (what the tree holds there is
    /// what the height must replay to).
    pub while_frozen: Option<Box<dyn FnMut() + Send>>,
    /// The stat index for a start after a crash (see [`crash_index`]): when it was last
    /// written (height, time), how often, and when the last freeze ended (ns since the epoch).
    indexed: Option<(u64, Instant)>,
    pub index_every: Duration,
    /// The thread writing the stat index, while it runs (see [`crash_index`]).
    index_writer: Option<std::thread::JoinHandle<()>>,
    thawed_at: i64,
    /// The tracker's count of truncations by path when the last cut looked: a rise means a
    /// file may have a new size that neither the tracker nor an event names.
    truncates_seen: u64,
    /// Report writes through fanotify between heights too (`BTM_WRITE_EVENTS=always`): no
    /// truncation by path then makes a cut walk, at a notification per write of the node.
    pub write_events_always: bool,
}

impl Cutter {
    pub fn new(mount: Mount, tracker: Tracker, mut log: Log) -> Result<Cutter> {
        let vol_dev = std::fs::metadata(&mount.mount_point)?.dev();
        if std::fs::metadata(log.dir())?.dev() == vol_dev {
            bail!(
                "the log {} is on the tracked volume {}: the volume is frozen during cuts, so the \
                 log must live on another filesystem",
                log.dir().display(),
                mount.mount_point.display()
            );
        }
        // A clean stop's index: the first cut reads only what changed (see resume.rs).
        let mut resume = Resume::take(log.dir(), log.last_height());
        let after_crash = resume.is_none();
        if after_crash {
            resume = Resume::take_index(log.dir(), log.last_height());
        }
        if let Some(r) = &mut resume {
            r.kept_running = r
                .running
                .is_some_and(|run| tracker.adopted() == Some(run.handover.token));
        }
        let tip = log.tip()?;
        let ids: IdMap = resume
            .iter()
            .flat_map(|r| r.files.iter())
            .filter(|(_, k, _)| tip.file(k.id).is_some())
            .map(|(i, k, _)| (i, k.id))
            .collect();
        if let (Some(r), true) = (&resume, after_crash) {
            tracing::info!(
                "no clean stop at height {:?}: the stat index of height {} knows {} files; \
                 only those whose stat changed since are read",
                log.last_height(),
                r.height,
                ids.len()
            );
        } else if let Some(r) = &resume {
            tracing::info!(
                "resuming after a clean stop at height {}: {} files known, only what changed \
                 since is read ({})",
                r.height,
                ids.len(),
                if r.kept_running {
                    "the tracker kept marking meanwhile"
                } else {
                    "files whose stat changed are read whole"
                }
            );
        }
        let next_id = log.max_file_id().map_or(1, |m| m + 1);
        // Losses while no agent ran (from the counters before the stop's last flip to those
        // the taken-over programs left) force what they force on the first cut; this start's
        // own counts (calibration faults) are part of its baseline, as on any start.
        let stats = tracker.stats()?;
        let now = Losses::of(&stats);
        let seen = match (
            resume.as_ref().filter(|r| r.kept_running),
            tracker.taken_over_at(),
        ) {
            (Some(r), Some(at)) => {
                let stop = r.running.expect("kept running").seen;
                let down = Losses::of(&at);
                if down.force_full(&stop) || down.rose(&stop) {
                    tracing::info!(
                        "the tracker could not follow every write while no agent ran: the first \
                         cut reads more"
                    );
                    stop
                } else {
                    now
                }
            }
            _ => now,
        };
        // BTM_FREEZE_WALK=1: walk the whole tree in every freeze (no namespace events).
        let walk = std::env::var("BTM_FREEZE_WALK").is_ok_and(|v| v == "1");
        let ns = (!walk)
            .then(|| NsWatch::new(&mount.mount_point))
            .transpose()
            .inspect_err(|e| {
                tracing::warn!(
                    "no namespace events on {} ({e}): every freeze walks the whole tree",
                    mount.mount_point.display()
                )
            })
            .ok()
            .flatten();
        Ok(Cutter {
            mount,
            tracker,
            log: Some(log),
            force_full: resume.is_none(),
            ids,
            next_id,
            resume,
            seen,
            full_retries: 0,
            freeze: Freeze::Volume,
            leave_running: crate::tracker::handover::enabled(),
            ns,
            kept: None,
            since_walk: 0,
            walk_every: walk_every(),
            check: None,
            phantoms: HashSet::new(),
            before_freeze: None,
            while_frozen: None,
            indexed: None,
            index_every: crash_index::index_every(),
            index_writer: None,
            thawed_at: 0,
            truncates_seen: stats.path_truncates,
            write_events_always: namespace::write_events_always()?,
        })
    }

    pub fn log(&self) -> &Log {
        self.log.as_ref().expect("log lent out")
    }

    /// The log, for changes the cutter does not make itself (retention's tombstones).
    pub fn log_mut(&mut self) -> &mut Log {
        self.log.as_mut().expect("log lent out")
    }

    /// Hands the log to `f`, which consumes and returns it (compaction), while tracking goes
    /// on: the next cut stays incremental. Compaction keeps the state of the last height, which
    /// is all the cutter remembers; should the last height change, the next cut is full. If
    /// `f` fails the log is reopened as it was.
    pub fn transform_log<R>(
        &mut self,
        f: impl FnOnce(Log) -> Result<(Log, R), LogError>,
    ) -> Result<R> {
        let log = self.log.take().expect("log lent out");
        let (dir, last) = (log.dir().to_path_buf(), log.last_height());
        match f(log) {
            Ok((log, r)) => {
                if log.last_height() != last {
                    // Rolled back: continue from the log's new last height, in full.
                    self.ids.clear();
                    self.force_full = true;
                }
                self.log = Some(log);
                Ok(r)
            }
            Err(e) => {
                self.log = Some(Log::open_append(&dir)?);
                Err(e.into())
            }
        }
    }

    pub fn tracker(&self) -> &Tracker {
        &self.tracker
    }

    pub fn root(&self) -> &Path {
        &self.mount.mount_point
    }

    /// Forget what is known about the volume: the next cut captures everything (after a
    /// rollback or replay into the volume, which the tracker sees as ordinary writes).
    pub fn resync(&mut self) {
        self.force_full = true;
    }

    /// Cuts height `height`; returns once it is durable in the log. After a failure (the
    /// tracker's epochs are already drained) the next cut captures everything.
    pub fn cut(&mut self, height: u64) -> Result<(CutReport, HeightInfo)> {
        // Refused before anything is drained: the next cut stays incremental.
        if let Some(last) = self.log().last_height()
            && height <= last
        {
            return Err(LogError::HeightNotIncreasing { last, got: height }.into());
        }
        self.full_retries = 0;
        // The record is written while the cut goes on: the log is held here for its duration.
        let mut log = self.log.take().expect("log lent out");
        let res = self.try_cut(&mut log, height);
        self.log = Some(log);
        if res.is_err() {
            self.force_full = true;
        }
        // What a clean stop recorded serves the first cut after the start only.
        self.resume = None;
        res
    }

    fn try_cut(&mut self, log: &mut Log, height: u64) -> Result<(CutReport, HeightInfo)> {
        let t_start = Instant::now();
        let root = self.mount.mount_point.clone();
        let full = self.force_full;
        if full {
            // A full cut may give files other ids than the stat index holds.
            self.remove_index(log.dir())?;
        }
        let mut rep = CutReport {
            height,
            full,
            ..Default::default()
        };

        // Phase 1: unfrozen pre-read.
        // Drain after writeback: partial-folio records must outlive the dirty folios.
        let mut lap = Lap(Instant::now());
        // Every write from here to the thaw is named by an event (see [`nsevents`]); those
        // made since the last thaw are in the marks this flip drains.
        self.watch_writes(true);
        let stats1 = self.tracker.stats()?;
        let losses1 = Losses::of(&stats1);
        // Read after the watch began: a truncation counted before it is seen by the walk, one
        // counted after it is named by its event.
        let truncated = std::mem::replace(&mut self.truncates_seen, stats1.path_truncates)
            != stats1.path_truncates
            && !self.write_events_always;
        if truncated && !full {
            tracing::info!(
                "a program on this host truncated a file by path since the last height: this \
                 cut walks the whole tree (if it happens at most heights, set \
                 BTM_WRITE_EVENTS=always)"
            );
        }
        let idx = self.tracker.flip()?;
        let dev = (self.mount.major, self.mount.minor);
        let written = report::device_written(dev.0, dev.1);
        syncfs(&root)?;
        rep.synced_bytes = written
            .zip(report::device_written(dev.0, dev.1))
            .map(|(a, b)| b.saturating_sub(a));
        rep.phases_ms.syncfs = lap.next();
        let mut d1 = self.tracker.drain(idx)?;
        let widened1 = losses1.force_widen(&self.seen);
        if widened1 {
            d1.widen_to_folios();
        }
        rep.phases_ms.drain = lap.next();
        let (scan1, walked1, reread1) = self.namespace_now(&root, full || truncated, &d1)?;
        rep.phases_ms.namespace = lap.next();
        rep.unfrozen_walk = walked1;
        // Kept from events, the files to look at are those at the paths re-read: the others
        // are as the last height recorded them (found by inode number should the frozen
        // phase see them marked).
        let files1 = if walked1 {
            scan1.owned_files()
        } else {
            scan1.files_at(&reread1)
        };
        // Captured data goes straight into the record: memory stays at the log's batch.
        let mut draft = log.begin(height)?;
        let mut ids = CutIds::default();
        // Files phase 1 found changed at read time (gone, or another file at the path): the
        // frozen phase reads them by the rules for files new since phase 1.
        let mut missed1: HashSet<Identity> = HashSet::new();
        let mut st1 = CaptureStats::default();
        let bar = full.then(|| baseline_bar(files1.values().map(|f| f.1).sum()));
        for (ident, (path, size1)) in &files1 {
            // Kept from events: a file neither marked nor named by an event since the last
            // height has its size and bytes as recorded (nothing to read, no lookups).
            if !walked1 && !d1.files.contains_key(&ident.0) && !reread1.contains(path) {
                continue;
            }
            let id = self.id_for(ident, path, full, &mut ids, draft.tip());
            let stat = self.stat_for_resume(&scan1, path, *size1);
            let want = self.ranges_for(ident, id, stat, &d1, full, draft.tip());
            // Nothing to read: not even opened.
            if !matches!(&want, Want::Ranges(r) if r.is_empty()) {
                let mut sink = |e: ExtentData| Ok(draft.extent(e)?);
                if !read_identity(&root, &scan1, path, ident, id, &want, &mut st1, &mut sink)? {
                    missed1.insert(*ident);
                }
            }
            if let Some(b) = &bar {
                b.inc(*size1);
            }
        }
        if let Some(b) = bar {
            b.finish_and_clear();
        }
        rep.read_unfrozen = st1.bytes_read;
        // What phase 2 reads stays buffered until the thaw (up to the batch size).
        draft.flush()?;
        rep.phases_ms.read = lap.next();

        // Phase 2: frozen.
        if !matches!(self.freeze, Freeze::Off) {
            rep.presync_ms = freeze::presync(&root)?;
        }
        if let Some(f) = &mut self.before_freeze {
            f();
        }
        // The node's writers block from the moment the freeze starts (see `freeze`) until the
        // thaw returns: that whole window is the freeze the node pays.
        let t_enter = Instant::now();
        let held = self.freeze.hold(&root)?;
        let t_freeze = Instant::now();
        let enter_time = t_freeze - t_enter;
        if let Some(f) = &mut self.while_frozen {
            f();
        }
        hold_frozen_for_tests();
        let phase2 = self.phase2(
            &root,
            (scan1, &d1, &files1, &missed1),
            (&mut draft, &mut ids),
            full,
            (losses1, widened1),
        );
        let work_time = t_freeze.elapsed();
        held.release()?;
        let freeze_time = t_enter.elapsed();
        self.thawed_at = crash_index::now_ns();
        if !self.write_events_always {
            self.watch_writes(false);
        }
        rep.phases_ms.frozen = lap.next();
        let (mut scan2, st2, phase2_losses, work) = phase2?;
        // What phase 1 read is no longer needed (a copy of every path on a full cut): freed
        // before the record is built.
        drop((files1, missed1, d1, reread1));
        (
            rep.frozen_walk,
            rep.frozen_entries,
            rep.frozen_opens,
            rep.namespace_missed,
        ) = work;
        if rep.namespace_missed > 0 {
            tracing::warn!(
                missed = rep.namespace_missed,
                "the namespace kept from events differed from the tree in {} paths no event \
                 named; this height used the walk, which corrected it",
                rep.namespace_missed
            );
        }
        rep.freeze_ms = ms(freeze_time);
        rep.freeze_enter_ms = ms(enter_time);
        rep.frozen_work_ms = ms(work_time);
        rep.read_frozen = st2.bytes_read;
        rep.data_bytes = st1.data_bytes + st2.data_bytes;

        let (before, losses2) = (self.seen, phase2_losses);
        self.seen = losses2;
        if losses2.force_full(&before) {
            // Even a full cut: what changed during it is only known from the marks.
            if self.full_retries >= MAX_FULL_RETRIES {
                bail!(
                    "the tracker lost events during {MAX_FULL_RETRIES} full captures of height \
                     {height} in a row ({losses2:?}): its maps are too small for this write rate"
                );
            }
            self.full_retries += 1;
            tracing::warn!(
                "the tracker lost events or skipped program runs ({before:?} -> {losses2:?}); \
                 capturing height {height} in full"
            );
            self.force_full = true;
            drop(draft); // undone
            return self.try_cut(log, height);
        }

        // The record takes the operations as they are made (on a full cut, one per path of
        // the volume).
        let mut ops = draft.ops();
        let next = self.next_namespace(&scan2, full, &mut ids, draft.tip(), &mut ops)?;
        // Files that vanished between the phases leave nothing in the record.
        draft.retain_files(|tip, id| next.holds(tip, id))?;
        rep.ops = ops.len() as usize;
        rep.record_paths = next.paths;
        rep.unchanged_bytes = draft.unchanged_bytes();
        let info = draft.commit_ops(now_ms(), ops)?;
        rep.files_changed = info.files_changed;
        rep.stored_bytes = info.stored_bytes;
        rep.phases_ms.record = lap.next();
        rep.total_ms = ms(t_start.elapsed());

        self.adopt(next, ids, full);
        self.force_full = false;
        self.since_walk = if walked1 { 0 } else { self.since_walk + 1 };
        scan2.release_root();
        scan2.track_changes();
        scan2.settle();
        self.kept = Some(scan2);
        if rep.full || rep.unfrozen_walk || rep.frozen_walk || rep.ops > LARGE_RECORD_OPS {
            crate::heap::give_back();
        }
        Ok((rep, info))
    }

    /// The id of a file this cut captures (kept across cuts while the inode lives).
    fn id_for(
        &mut self,
        ident: &Identity,
        path: &[u8],
        full: bool,
        ids: &mut CutIds,
        tip: &TreeState,
    ) -> FileId {
        if let Some(id) = ids.map.get(ident) {
            return *id;
        }
        if let Some(id) = self.ids.get(ident) {
            // Only a full cut keeps every id it hands out (the others keep `self.ids`).
            if full {
                ids.insert(*ident, *id);
            }
            return *id;
        }
        // On a full cut after start, keep the id the log has at this path (content is
        // rewritten in full anyway), unless another inode already took it.
        let id = match tip.entry(path) {
            Some(Entry::File { id, .. }) if full && !ids.taken.contains(&id) => id,
            _ => {
                self.next_id += 1;
                self.next_id - 1
            }
        };
        ids.insert(*ident, id);
        id
    }
}

/// The file ids a cut has handed out, by identity, and the set of them: "is this id taken
/// already" is asked once per file of a full cut, so it must not scan the map (with 10^6
/// files that made the first cut after a crash take an hour).
#[derive(Clone, Default)]
pub(crate) struct CutIds {
    map: FastMap<Identity, FileId>,
    taken: FastSet<FileId>,
}

impl CutIds {
    fn insert(&mut self, ident: Identity, id: FileId) {
        self.map.insert(ident, id);
        self.taken.insert(id);
    }
}

/// The unfrozen phase walks the whole tree at least every this many heights
/// (`BTM_WALK_EVERY`, 64 by default; 1 walks at every height).
fn walk_every() -> u64 {
    std::env::var("BTM_WALK_EVERY")
        .ok()
        .and_then(|v| v.parse().ok())
        .filter(|&n| n >= 1)
        .unwrap_or(64)
}

/// The cutter's per-file maps hold every file of the volume and are looked up for each at
/// every height: a fast hash for integer keys (inode numbers and ids the filesystem and the
/// log assign, not chosen by a writer).
pub(crate) type FastMap<K, V> = HashMap<K, V, rustc_hash::FxBuildHasher>;
pub(crate) type FastSet<K> = HashSet<K, rustc_hash::FxBuildHasher>;

/// A progress bar for the baseline (a full copy can take hours on a large volume), drawn only
/// when stderr is a terminal.
fn baseline_bar(total: u64) -> indicatif::ProgressBar {
    use std::io::IsTerminal;
    if !std::io::stderr().is_terminal() {
        return indicatif::ProgressBar::hidden();
    }
    let bar = indicatif::ProgressBar::new(total);
    bar.set_style(
        indicatif::ProgressStyle::with_template(
            "baseline {bar:40} {bytes}/{total_bytes} {bytes_per_sec} eta {eta}",
        )
        .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
    );
    bar
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

/// Tests keep the volume frozen this long (`BTM_TEST_HOLD_FROZEN_MS`) to kill the agent there.
fn hold_frozen_for_tests() {
    if let Some(ms) = std::env::var("BTM_TEST_HOLD_FROZEN_MS")
        .ok()
        .and_then(|v| v.parse().ok())
    {
        std::thread::sleep(Duration::from_millis(ms));
    }
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

#[cfg(test)]
mod tests;
