//! Retention for the log: heights removed by retention are recorded at once in
//! `LOGDIR/dropped` (a few bytes, fsynced: a cut never pays for a rewrite) and folded away later by
//! [`Log::compact`], which rewrites only the segments from the first one holding a dropped
//! record to the end. Format and crash safety: `docs/FORMAT.md`, "Retention and compaction".
//!
//! A run of dropped records followed by a kept record K becomes one record at height K whose
//! metadata is the difference between the state before the run and the state at K (removes,
//! puts, sizes, and only the byte ranges that differ), so the state at K, and so every later
//! kept height, is unchanged. Payloads that dropped records stored and that something kept
//! still needs are copied (verbatim) into the first record that needs them; the rest is freed.

use std::collections::BTreeSet;
use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use super::state::{Focus, TreeState, Undo};
use super::{Log, LogError, Segment, fsync_dir, seg_name};
use rewrite::Writer;

mod diff;
mod moved;
mod rewrite;

/// Heights removed by retention, one decimal height per line.
pub const DROPPED_FILE: &str = "dropped";
/// Where a compaction writes its new segments; removed on open if it was never committed.
const NEW_DIR: &str = "compact.new";
/// A committed compaction (renamed from [`NEW_DIR`]); its segments replace the old ones.
const READY_DIR: &str = "compact.ready";
const MANIFEST: &str = "manifest";

/// What [`Log::compact`] did.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct CompactReport {
    /// Dropped records folded into the next kept record.
    pub dropped_records: usize,
    /// Kept records that absorbed a run of dropped ones.
    pub merged_records: usize,
    /// First segment rewritten (`None`: nothing to do).
    pub from_segment: Option<u64>,
    /// Bytes of all segments before and after.
    pub bytes_before: u64,
    pub bytes_after: u64,
    /// Payloads copied out of dropped records, and new payloads cut from partly visible ones.
    pub copied_payloads: u64,
    pub sliced_payloads: u64,
}

/// Appends `heights` to `LOGDIR/dropped` and fsyncs it. Used by the agent, whose open log
/// keeps appending meanwhile (dropped records stay in place until compaction).
pub fn record_dropped(dir: &Path, heights: &[u64]) -> Result<(), LogError> {
    if heights.is_empty() {
        return Ok(());
    }
    let path = dir.join(DROPPED_FILE);
    let created = !path.exists();
    let mut f = OpenOptions::new()
        .append(true)
        .read(true)
        .create(true)
        .open(&path)
        .map_err(|e| LogError::io(&path, e))?;
    // A torn last line (a crash mid-append) would join the first height written now (12 and
    // 130 would read as 12130): cut it off first, as a reader ignores it anyway.
    let text = fs::read(&path).map_err(|e| LogError::io(&path, e))?;
    if text.last().is_some_and(|&b| b != b'\n') {
        let keep = text.iter().rposition(|&b| b == b'\n').map_or(0, |i| i + 1);
        f.set_len(keep as u64).map_err(|e| LogError::io(&path, e))?;
    }
    let text: String = heights.iter().map(|h| format!("{h}\n")).collect();
    f.write_all(text.as_bytes())
        .and_then(|()| f.sync_data())
        .map_err(|e| LogError::io(&path, e))?;
    if created {
        fsync_dir(dir)?;
    }
    Ok(())
}

/// The heights in `LOGDIR/dropped` (a last line without its newline is a torn append: ignored).
pub(super) fn read_dropped(dir: &Path) -> Result<BTreeSet<u64>, LogError> {
    let path = dir.join(DROPPED_FILE);
    let text = match fs::read_to_string(&path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(BTreeSet::new()),
        Err(e) => return Err(LogError::io(&path, e)),
    };
    let complete = text.rfind('\n').map_or("", |i| &text[..i]);
    Ok(complete
        .lines()
        .filter_map(|l| l.trim().parse().ok())
        .collect())
}

/// (first new segment, last new segment, last old segment) of a committed compaction.
fn read_manifest(ready: &Path) -> Result<Option<(u64, u64, u64)>, LogError> {
    let path = ready.join(MANIFEST);
    let text = match fs::read_to_string(&path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(LogError::io(&path, e)),
    };
    let v: Vec<u64> = text
        .split_whitespace()
        .filter_map(|w| w.parse().ok())
        .collect();
    match v[..] {
        [a, b, c] => Ok(Some((a, b, c))),
        _ => Err(LogError::Corrupt {
            segment: path,
            offset: 0,
            height: None,
            what: format!("unreadable compaction manifest {text:?}"),
        }),
    }
}

/// Readers' view of a committed compaction not yet rolled forward: its segments replace the
/// old ones of the same number, and old segments past its last one are gone.
pub(super) fn overlay(dir: &Path, found: &mut Vec<(u64, PathBuf)>) -> Result<(), LogError> {
    let ready = dir.join(READY_DIR);
    let Some((first, last, _)) = read_manifest(&ready)? else {
        return Ok(());
    };
    found.retain(|(n, _)| *n < first || *n > last);
    found.retain(|(n, _)| *n <= last);
    for n in first..=last {
        let p = ready.join(seg_name(n));
        found.push((n, if p.exists() { p } else { dir.join(seg_name(n)) }));
    }
    Ok(())
}

/// Finishes a committed compaction, or throws away one that never reached its commit point.
/// Idempotent: a crash inside leaves a state it finishes next time.
pub(super) fn recover(dir: &Path) -> Result<(), LogError> {
    let new = dir.join(NEW_DIR);
    if new.exists() {
        tracing::warn!(
            "{}: removing an interrupted compaction (the log is as before it)",
            dir.display()
        );
        fs::remove_dir_all(&new).map_err(|e| LogError::io(&new, e))?;
        fsync_dir(dir)?;
    }
    let ready = dir.join(READY_DIR);
    if !ready.exists() {
        return Ok(());
    }
    if let Some((first, last, old_last)) = read_manifest(&ready)? {
        for n in first..=last {
            let src = ready.join(seg_name(n));
            if src.exists() {
                let dst = dir.join(seg_name(n));
                fs::rename(&src, &dst).map_err(|e| LogError::io(&dst, e))?;
                test_pause();
            }
        }
        fsync_dir(dir)?;
        for n in last + 1..=old_last {
            let p = dir.join(seg_name(n));
            if p.exists() {
                fs::remove_file(&p).map_err(|e| LogError::io(&p, e))?;
            }
        }
        fsync_dir(dir)?;
        let m = ready.join(MANIFEST);
        fs::remove_file(&m).map_err(|e| LogError::io(&m, e))?;
    }
    fs::remove_dir_all(&ready).map_err(|e| LogError::io(&ready, e))?;
    fsync_dir(dir)
}

/// Tests slow compaction down (`BTM_TEST_COMPACT_DELAY_MS`) to kill it at every stage.
fn test_pause() {
    if let Some(ms) = std::env::var("BTM_TEST_COMPACT_DELAY_MS")
        .ok()
        .and_then(|v| v.parse().ok())
    {
        std::thread::sleep(Duration::from_millis(ms));
    }
}

/// A compaction whose new segments are written aside (in `compact.new`) for the records the
/// log held when it was prepared ([`Log::prepare_compaction`], on any thread, from a
/// [`Log::view`]); [`Log::finish_compaction`] copies what was appended since and commits.
/// Dropping it throws the new segments away.
pub struct Prepared {
    w: Option<Writer>,
    /// Records covered: the prepared-on log's record count.
    upto: usize,
    /// Hash of the last covered record: the log it is finished on must still hold it.
    last_hash: [u8; 32],
}

impl Drop for Prepared {
    fn drop(&mut self) {
        if let Some(w) = self.w.take() {
            let tmp = w.tmp.clone();
            drop(w);
            let _ = fs::remove_dir_all(tmp);
        }
    }
}

impl Log {
    /// A read-only copy of this log as it is now (records, dropped heights) sharing its
    /// segment files, for work on another thread while this log keeps appending: records are
    /// never rewritten in place, only cut off by a rollback (which must stop that work first).
    pub fn view(&self) -> Result<Log, LogError> {
        let mut v = Log::empty(&self.dir, false, self.opts.clone(), Vec::new());
        for s in &self.segments {
            v.segments.push(Segment {
                no: s.no,
                path: s.path.clone(),
                file: s.file.try_clone().map_err(|e| LogError::io(&s.path, e))?,
                len: s.len,
            });
        }
        v.records = self.records.clone();
        v.max_file_id = self.max_file_id;
        v.dropped = self.dropped.clone();
        Ok(v)
    }

    /// (index of the first record a compaction rewrites, index of the last kept record), or
    /// `None` when no dropped record is followed by a kept one.
    fn compaction_span(&self) -> Option<(usize, usize)> {
        let is_dropped = |i: usize| self.dropped.contains(&self.records[i].header.height);
        let last_kept = (0..self.records.len()).rev().find(|&i| !is_dropped(i))?;
        let first = (0..last_kept).find(|&i| is_dropped(i))?;
        let first_seg = self.records[first].seg_no;
        let s = self.records.iter().position(|r| r.seg_no == first_seg)?;
        Some((s, last_kept))
    }

    /// At most how many bytes a compaction would write now (the segments from the first it
    /// rewrites, less the dropped records in them); `None`: nothing to fold.
    pub fn compaction_estimate(&self) -> Option<u64> {
        let (s, _) = self.compaction_span()?;
        let first_seg = self.records[s].seg_no;
        let old: u64 = self
            .segments
            .iter()
            .filter(|g| g.no >= first_seg)
            .map(|g| g.len)
            .sum();
        let dropped: u64 = self.records[s..]
            .iter()
            .filter(|r| self.dropped.contains(&r.header.height))
            .map(|r| r.info.stored_bytes)
            .sum();
        Some(old.saturating_sub(dropped))
    }

    /// Refuses to start a compaction the filesystem has no room for (it writes its new
    /// segments before it frees the old ones).
    fn check_space(&self, need: u64) -> Result<(), LogError> {
        let st = nix::sys::statvfs::statvfs(&self.dir)
            .map_err(|e| LogError::io(&self.dir, std::io::Error::from(e)))?;
        let free = st.blocks_available() as u64 * st.fragment_size() as u64;
        // Some room left for the cuts that go on meanwhile.
        let need = need + need / 16 + (16 << 20);
        if free < need {
            return Err(LogError::NoSpace {
                dir: self.dir.clone(),
                need,
                free,
            });
        }
        Ok(())
    }

    /// Writes the new segments of a compaction into `compact.new`, reading at most
    /// `bytes_per_sec` (0: no limit), without changing the log: safe on a [`Log::view`] on
    /// another thread while the log it came from appends. `None`: nothing to fold. Stops with
    /// [`LogError::Abandoned`] soon after `cancel` is set.
    pub fn prepare_compaction(
        &self,
        bytes_per_sec: u64,
        cancel: &AtomicBool,
    ) -> Result<Option<Prepared>, LogError> {
        let Some((s, last_kept)) = self.compaction_span() else {
            return Ok(None);
        };
        self.check_space(self.compaction_estimate().unwrap_or(0))?;
        let is_dropped = |i: usize| self.dropped.contains(&self.records[i].header.height);
        let first_seg = self.records[s].seg_no;
        let tmp = self.dir.join(NEW_DIR);
        if tmp.exists() {
            fs::remove_dir_all(&tmp).map_err(|e| LogError::io(&tmp, e))?;
        }
        fs::create_dir(&tmp).map_err(|e| LogError::io(&tmp, e))?;
        let rep = CompactReport {
            from_segment: Some(first_seg),
            ..Default::default()
        };
        let prev_hash = s
            .checked_sub(1)
            .map_or([0; 32], |i| self.records[i].info.hash);
        let upto = self.records.len();
        let mut p = Prepared {
            w: Some(Writer::new(tmp, first_seg, prev_hash, rep, bytes_per_sec)),
            upto,
            last_hash: self.records[upto - 1].info.hash,
        };
        let w = p.w.as_mut().expect("just made");
        let focus = self.focus(s, upto, last_kept, cancel)?;
        let mut state = TreeState::default();
        for r in &self.records[..s] {
            if cancel.load(Ordering::Relaxed) {
                return Err(self.abandoned("the agent asked it to stop"));
            }
            self.apply_record(&mut state, r, Some(&focus), None)?;
        }
        // What the current run of dropped records replaced, to diff the state before it.
        let mut run: Option<Undo> = None;
        for i in s..upto {
            if cancel.load(Ordering::Relaxed) {
                return Err(self.abandoned("the agent asked it to stop"));
            }
            let r = &self.records[i];
            let (h, t) = (r.header.height, r.header.time_unix_ms);
            let merge = is_dropped(i) && i < last_kept;
            if merge && run.is_none() {
                run = Some(Undo::default());
            }
            if run.is_none() {
                // Copied as it is: its metadata is needed whole.
                let meta = self.read_meta(r)?;
                state.apply_focused(h, &meta.ops, &meta.extents, &focus, None)?;
                w.emit_as_is(self, h, t, meta)?;
                continue;
            }
            // In a run, or the kept record that ends it: applied as it is read.
            self.apply_record(&mut state, r, Some(&focus), run.as_mut())?;
            if merge {
                w.rep.dropped_records += 1;
                continue;
            }
            let undo = run.take().expect("a run");
            w.rep.merged_records += 1;
            let mut rec = w.rows_record(self, h)?;
            diff::diff_into(&undo, &state, &mut rec)?;
            drop(undo);
            rec.finish(t)?;
        }
        Ok(Some(p))
    }

    /// What the runs of dropped records among records `s..upto` touch (each run with the kept
    /// record that ends it): the only pieces the compaction's state keeps (see [`Focus`]).
    fn focus(
        &self,
        s: usize,
        upto: usize,
        last_kept: usize,
        cancel: &AtomicBool,
    ) -> Result<Focus, LogError> {
        let mut focus = Focus::default();
        let mut in_run = false;
        for i in s..upto {
            if cancel.load(Ordering::Relaxed) {
                return Err(self.abandoned("the agent asked it to stop"));
            }
            let merge = self.dropped.contains(&self.records[i].header.height) && i < last_kept;
            if merge || in_run {
                let meta = self.read_meta(&self.records[i])?;
                focus.add(&meta.ops, &meta.extents);
            }
            in_run = merge;
        }
        focus.merge();
        tracing::debug!(
            "compaction: the dropped runs touch {} byte ranges",
            focus.ranges()
        );
        Ok(focus)
    }

    fn abandoned(&self, why: &str) -> LogError {
        LogError::Abandoned {
            dir: self.dir.clone(),
            why: why.to_string(),
        }
    }

    /// Finishes a prepared compaction on this (appending) log: copies the records appended
    /// since it was prepared, commits, and returns the reopened log. Takes `readers.lock`
    /// exclusively (waits up to a minute for readers to finish). Crash-safe: the new segments
    /// are durable before one rename commits them, and the next open finishes or discards an
    /// interrupted compaction.
    pub fn finish_compaction(mut self, mut p: Prepared) -> Result<(Log, CompactReport), LogError> {
        if !self.writable {
            return Err(LogError::ReadOnly {
                dir: self.dir.clone(),
            });
        }
        let still_there =
            p.upto <= self.records.len() && self.records[p.upto - 1].info.hash == p.last_hash;
        if !still_there {
            return Err(self.abandoned("the log was rolled back while it was prepared"));
        }
        let rl_path = self.dir.join("readers.lock");
        let rl = super::open_lock_file(&rl_path).map_err(|e| LogError::io(&rl_path, e))?;
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            match rl.try_lock() {
                Ok(()) => break,
                Err(fs::TryLockError::WouldBlock) if Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(100));
                }
                Err(e) => return Err(super::lock_error(&rl_path, e)),
            }
        }
        let total = |l: &Log| l.segments.iter().map(|s| s.len).sum::<u64>();
        let mut w = p.w.take().expect("prepared");
        let tmp = w.tmp.clone();
        // What was cut meanwhile is copied as it is (its dropped heights wait for next time).
        w.unthrottled();
        for i in p.upto..self.records.len() {
            let r = &self.records[i];
            let meta = self.read_meta(r)?;
            w.emit_as_is(&self, r.header.height, r.header.time_unix_ms, meta)?;
        }
        // Commit: new segments and manifest durable, then one rename.
        for (no, f) in &w.files {
            f.sync_all()
                .map_err(|e| LogError::io(tmp.join(seg_name(*no)), e))?;
        }
        let first_seg = w.first_seg;
        let new_last = w.files.last().map_or(first_seg - 1, |(n, _)| *n);
        let old_last = self.segments.last().map_or(0, |s| s.no);
        let mpath = tmp.join(MANIFEST);
        fs::write(&mpath, format!("{first_seg} {new_last} {old_last}\n"))
            .and_then(|()| File::open(&mpath)?.sync_all())
            .map_err(|e| LogError::io(&mpath, e))?;
        fsync_dir(&tmp)?;
        let mut rep = std::mem::take(&mut w.rep);
        rep.bytes_before = total(&self);
        drop(w);
        test_pause();
        let ready = self.dir.join(READY_DIR);
        fs::rename(&tmp, &ready).map_err(|e| LogError::io(&ready, e))?;
        fsync_dir(&self.dir)?;
        test_pause();
        recover(&self.dir)?;

        // Reopen with the same locks (old segment files are closed, so their space is freed).
        let dir = self.dir.clone();
        let opts = self.opts.clone();
        let locks = std::mem::take(&mut self._locks);
        drop(self);
        let mut log = Log::empty(&dir, true, opts, locks);
        log.scan()?;
        drop(rl);
        rep.bytes_after = total(&log);
        Ok((log, rep))
    }

    /// Folds every dropped record that a kept record follows into that kept record, rewriting
    /// the segments from the first one holding a dropped record; returns the reopened log.
    /// Both halves at once: [`Log::prepare_compaction`] with no rate limit, then
    /// [`Log::finish_compaction`].
    pub fn compact(self) -> Result<(Log, CompactReport), LogError> {
        if !self.writable {
            return Err(LogError::ReadOnly {
                dir: self.dir.clone(),
            });
        }
        match self.prepare_compaction(0, &AtomicBool::new(false))? {
            Some(p) => self.finish_compaction(p),
            None => {
                let bytes = self.total_bytes();
                let rep = CompactReport {
                    bytes_before: bytes,
                    bytes_after: bytes,
                    ..Default::default()
                };
                Ok((self, rep))
            }
        }
    }

    /// Bytes held by records of dropped heights that compaction would fold away (an upper
    /// bound on what it frees).
    pub fn dropped_bytes(&self) -> u64 {
        self.records
            .iter()
            .filter(|r| self.dropped.contains(&r.header.height))
            .map(|r| r.info.stored_bytes)
            .sum()
    }

    /// Bytes of all segments.
    pub fn total_bytes(&self) -> u64 {
        self.segments.iter().map(|s| s.len).sum()
    }
}

#[cfg(test)]
mod tests;
