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

use std::collections::{BTreeSet, HashMap};
use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use super::append::compress_all;
use super::format::{Codec, Meta, MetaExtent, PayloadRef, SEG_HEADER_LEN, SegHeader};
use super::record::{FileId, NsOp, parent_of};
use super::replay::PayloadSource;
use super::state::{FileState, TreeState};
use super::writer::{RecordWriter, SegmentIo};
use super::{Log, LogError, fsync_dir, seg_name};

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

/// A row of a rewritten record before payload locations are known.
enum Row {
    Zero {
        id: FileId,
        offset: u64,
        len: u64,
    },
    /// An existing payload (moved if it lives in a rewritten segment).
    Ref {
        id: FileId,
        offset: u64,
        p: PayloadRef,
    },
    /// New bytes (part of a payload still visible at the kept height).
    Fresh {
        id: FileId,
        offset: u64,
        raw: Vec<u8>,
    },
}

/// Writes the new segments into `compact.new`.
struct Writer<'a> {
    log: &'a Log,
    tmp: PathBuf,
    first_seg: u64,
    files: Vec<(u64, File)>,
    len: u64,
    prev_hash: [u8; 32],
    /// Old location of a payload in a rewritten segment -> its new location.
    moved: HashMap<(u64, u64), PayloadRef>,
    rep: CompactReport,
}

impl Writer<'_> {
    fn new_segment(&mut self) -> Result<(), LogError> {
        let no = self.files.last().map_or(self.first_seg, |(n, _)| n + 1);
        let path = self.tmp.join(seg_name(no));
        let f = OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .open(&path)
            .map_err(|e| LogError::io(&path, e))?;
        f.write_all_at(&SegHeader { seg: no }.encode(), 0)
            .map_err(|e| LogError::io(&path, e))?;
        self.files.push((no, f));
        self.len = SEG_HEADER_LEN;
        Ok(())
    }

    fn emit(
        &mut self,
        height: u64,
        time_unix_ms: u64,
        ops: Vec<NsOp>,
        rows: Vec<Row>,
    ) -> Result<(), LogError> {
        if self.files.is_empty()
            || (self.len >= self.log.opts.segment_size && self.len > SEG_HEADER_LEN)
        {
            self.new_segment()?;
        }
        let (seg_no, file) = self.files.last().expect("segment");
        let seg_no = *seg_no;
        let path = self.tmp.join(seg_name(seg_no));
        let io = SegmentIo::new(file, &path, self.log.fail_beyond())?;
        let mut w = RecordWriter::new(io, seg_no, self.len);
        let fresh: Vec<&[u8]> = rows
            .iter()
            .filter_map(|r| match r {
                Row::Fresh { raw, .. } => Some(raw.as_slice()),
                _ => None,
            })
            .collect();
        let opts = &self.log.opts;
        let mut stored = compress_all(&fresh, opts.zstd_level, opts.compress_threads)
            .map_err(|e| LogError::io(&self.tmp, e))?
            .into_iter();
        let mut extents = Vec::with_capacity(rows.len());
        for r in rows {
            let (id, offset, payload) = match r {
                Row::Zero { id, offset, len } => {
                    extents.push(MetaExtent::Zero { id, offset, len });
                    continue;
                }
                Row::Ref { id, offset, p } if p.seg < self.first_seg => (id, offset, p),
                Row::Ref { id, offset, p } => match self.moved.get(&(p.seg, p.offset)) {
                    Some(n) => (id, offset, *n),
                    None => {
                        let seg = self.log.segment(p.seg).expect("checked at open");
                        let mut b = vec![0u8; p.stored_len as usize];
                        seg.file
                            .read_exact_at(&mut b, p.offset)
                            .map_err(|e| LogError::io(&seg.path, e))?;
                        // Never carry damage into the new log.
                        super::check_payload(&p, &b).map_err(|what| LogError::Corrupt {
                            segment: seg.path.clone(),
                            offset: p.offset,
                            height: None,
                            what: format!("payload copied by compaction: {what}"),
                        })?;
                        let n = w.copied(&b, &p)?;
                        self.moved.insert((p.seg, p.offset), n);
                        self.rep.copied_payloads += 1;
                        (id, offset, n)
                    }
                },
                Row::Fresh { id, offset, raw } => {
                    let (table, zstd) = stored.next().expect("one per fresh row");
                    let (codec, body) = match &zstd {
                        Some(c) => (Codec::Zstd, c.as_slice()),
                        None => (Codec::Raw, raw.as_slice()),
                    };
                    let hash = *blake3::hash(&raw).as_bytes();
                    let n = w.payload(&table, body, raw.len() as u64, codec, hash)?;
                    self.rep.sliced_payloads += 1;
                    (id, offset, n)
                }
            };
            extents.push(MetaExtent::Data {
                id,
                offset,
                payload,
            });
        }
        let meta = Meta { ops, extents }.encode();
        let start = self.len;
        let (header, hash) = w.finish(height, time_unix_ms, self.prev_hash, &meta)?;
        self.len = start + header.record_len().expect("fits");
        self.prev_hash = hash;
        test_pause();
        Ok(())
    }
}

/// The kind of bytes at a file position: a hole, or payload bytes (by content).
fn piece_at(f: &FileState, limit: u64, x: u64) -> Option<([u8; 32], u64)> {
    if x >= limit {
        return None;
    }
    let (&s, p) = f.pieces.range(..=x).next_back()?;
    (x < s + p.len).then(|| (p.payload.hash, p.skip + (x - s)))
}

/// Byte ranges of `[0, cur.size)` where `cur` differs from `base` (clipped to `base_limit`).
fn differing(base: Option<&FileState>, base_limit: u64, cur: &FileState) -> Vec<(u64, u64)> {
    let mut cuts = BTreeSet::from([0, cur.size]);
    let add = |cuts: &mut BTreeSet<u64>, f: &FileState| {
        for (&s, p) in &f.pieces {
            cuts.insert(s.min(cur.size));
            cuts.insert((s + p.len).min(cur.size));
        }
    };
    add(&mut cuts, cur);
    if let Some(b) = base {
        add(&mut cuts, b);
        cuts.insert(base_limit.min(cur.size));
    }
    let cuts: Vec<u64> = cuts.into_iter().collect();
    let mut out: Vec<(u64, u64)> = Vec::new();
    for w in cuts.windows(2) {
        let (a, b) = (w[0], w[1]);
        if a >= b {
            continue;
        }
        let old = base.and_then(|f| piece_at(f, base_limit, a));
        if old == piece_at(cur, cur.size, a) {
            continue;
        }
        match out.last_mut() {
            Some(last) if last.1 == a => last.1 = b,
            _ => out.push((a, b)),
        }
    }
    out
}

impl Log {
    /// The record at `height` of the diff from `prev` to `cur`: applied to `prev` it gives a
    /// tree with `cur`'s namespace, metadata and bytes.
    fn diff(&self, prev: &TreeState, cur: &TreeState) -> Result<(Vec<NsOp>, Vec<Row>), LogError> {
        let mut ops = Vec::new();
        for p in prev.nodes.keys() {
            let parent_gone = parent_of(p).is_some_and(|q| !cur.nodes.contains_key(q));
            if !cur.nodes.contains_key(p) && !parent_gone {
                ops.push(NsOp::Remove { path: p.clone() });
            }
        }
        for (p, e) in cur.entries() {
            if prev.entry(p).as_ref() != Some(&e) {
                ops.push(NsOp::Put {
                    path: p.clone(),
                    entry: e,
                });
            }
        }
        let mut ids: Vec<FileId> = cur.files.keys().copied().collect();
        ids.sort_unstable();
        let mut rows = Vec::new();
        let mut cache: Option<(PayloadRef, Vec<u8>)> = None;
        for id in ids {
            let f = &cur.files[&id];
            let base = prev.files.get(&id);
            let base_size = base.map_or(0, |b| b.size);
            if base_size != f.size {
                ops.push(NsOp::SetSize { id, size: f.size });
            }
            for (a, b) in differing(base, base_size.min(f.size), f) {
                let mut x = a;
                while x < b {
                    let Some((&s, piece)) = f
                        .pieces
                        .range(..=x)
                        .next_back()
                        .filter(|(s, p)| x < **s + p.len)
                    else {
                        // A hole up to the next piece (or the range end).
                        let next = f.pieces.range(x..).next().map_or(b, |(s, _)| (*s).min(b));
                        rows.push(Row::Zero {
                            id,
                            offset: x,
                            len: next - x,
                        });
                        x = next;
                        continue;
                    };
                    let end = (s + piece.len).min(b);
                    let skip = piece.skip + (x - s);
                    if skip == 0 && end - x == piece.payload.raw_len {
                        rows.push(Row::Ref {
                            id,
                            offset: x,
                            p: piece.payload,
                        });
                    } else {
                        if cache.as_ref().is_none_or(|(p, _)| *p != piece.payload) {
                            let raw = self.load_payload(&piece.payload).map_err(|e| match e {
                                Ok(what) => LogError::Corrupt {
                                    segment: self.dir.clone(),
                                    offset: piece.payload.offset,
                                    height: None,
                                    what: format!(
                                        "payload of segment {} read by compaction: {what}",
                                        piece.payload.seg
                                    ),
                                },
                                Err(e) => e,
                            })?;
                            cache = Some((piece.payload, raw));
                        }
                        let raw = &cache.as_ref().expect("loaded").1;
                        rows.push(Row::Fresh {
                            id,
                            offset: x,
                            raw: raw[skip as usize..(skip + end - x) as usize].to_vec(),
                        });
                    }
                    x = end;
                }
            }
        }
        Ok((ops, rows))
    }

    /// Folds every dropped record that a kept record follows into that kept record, rewriting
    /// the segments from the first one holding a dropped record; returns the reopened log.
    /// Takes `readers.lock` exclusively (waits up to a minute for readers to finish). Crash-safe:
    /// the new segments are written aside and swapped in after a durable commit point, and the
    /// next open finishes or discards an interrupted compaction.
    pub fn compact(mut self) -> Result<(Log, CompactReport), LogError> {
        if !self.writable {
            return Err(LogError::ReadOnly {
                dir: self.dir.clone(),
            });
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
        let mut rep = CompactReport {
            bytes_before: total(&self),
            ..Default::default()
        };
        let is_dropped = |i: usize| self.dropped.contains(&self.records[i].header.height);
        let last_kept = (0..self.records.len()).rev().find(|&i| !is_dropped(i));
        let first = last_kept.and_then(|k| (0..k).find(|&i| is_dropped(i)));
        let Some(first) = first else {
            rep.bytes_after = rep.bytes_before;
            return Ok((self, rep));
        };
        let last_kept = last_kept.expect("a kept record follows");
        let first_seg = self.records[first].seg_no;
        let s = self
            .records
            .iter()
            .position(|r| r.seg_no == first_seg)
            .expect("record");
        rep.from_segment = Some(first_seg);

        let tmp = self.dir.join(NEW_DIR);
        if tmp.exists() {
            fs::remove_dir_all(&tmp).map_err(|e| LogError::io(&tmp, e))?;
        }
        fs::create_dir(&tmp).map_err(|e| LogError::io(&tmp, e))?;
        let mut state = self.fold_to(s)?;
        let mut w = Writer {
            log: &self,
            tmp: tmp.clone(),
            first_seg,
            files: Vec::new(),
            len: 0,
            prev_hash: s
                .checked_sub(1)
                .map_or([0; 32], |i| self.records[i].info.hash),
            moved: HashMap::new(),
            rep,
        };
        let mut run_base: Option<TreeState> = None;
        for i in s..self.records.len() {
            let r = &self.records[i];
            let meta = self.read_meta(r)?;
            let merge = is_dropped(i) && i < last_kept;
            if merge && run_base.is_none() {
                run_base = Some(state.clone());
            }
            state.apply(r.header.height, &meta.ops, &meta.extents)?;
            if merge {
                w.rep.dropped_records += 1;
                continue;
            }
            let (ops, rows) = match run_base.take() {
                Some(base) => {
                    w.rep.merged_records += 1;
                    self.diff(&base, &state)?
                }
                None => {
                    let rows = meta
                        .extents
                        .into_iter()
                        .map(|e| match e {
                            MetaExtent::Zero { id, offset, len } => Row::Zero { id, offset, len },
                            MetaExtent::Data {
                                id,
                                offset,
                                payload,
                            } => Row::Ref {
                                id,
                                offset,
                                p: payload,
                            },
                        })
                        .collect();
                    (meta.ops, rows)
                }
            };
            w.emit(r.header.height, r.header.time_unix_ms, ops, rows)?;
        }
        // Commit: new segments and manifest durable, then one rename.
        for (no, f) in &w.files {
            f.sync_all()
                .map_err(|e| LogError::io(tmp.join(seg_name(*no)), e))?;
        }
        let new_last = w.files.last().map_or(first_seg - 1, |(n, _)| *n);
        let old_last = self.segments.last().map_or(0, |s| s.no);
        let mpath = tmp.join(MANIFEST);
        fs::write(&mpath, format!("{first_seg} {new_last} {old_last}\n"))
            .and_then(|()| File::open(&mpath)?.sync_all())
            .map_err(|e| LogError::io(&mpath, e))?;
        fsync_dir(&tmp)?;
        let mut rep = std::mem::take(&mut w.rep);
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
