//! Appending a height as it is captured: a [`Draft`] takes extents one at a time, chunks,
//! hashes, deduplicates and compresses them in bounded batches and writes the payloads to
//! their final place in the segment; [`Draft::commit`] adds the namespace operations and the
//! metadata, fsyncs and acknowledges. Memory is the batch (`LogOptions::batch_bytes`; compressed
//! [`COMPRESS_WINDOW`] at a time) plus one metadata row per stored extent and one dedup entry
//! per new payload.
//!
//! A draft dropped without commit (an error, a cut that starts over) is undone: the segment is
//! cut back to where the record began, or removed if the record started it.

use std::collections::HashMap;
use std::fs::{self, File, OpenOptions};

use super::error::LogError;
use super::format::{self, Codec, MetaExtent, PayloadRef, SEG_HEADER_LEN, SegHeader};
use super::record::{
    CutRecord, Entry, ExtentBytes, ExtentData, FileId, NsOp, check_path, check_symlink_target,
    display_path,
};
use super::unchanged::Unchanged;
use super::writer::{RecordWriter, SegmentIo};
use super::{HeightInfo, Log, Meta, RecordLoc, Segment, Tally, TreeState, fsync_dir, seg_name};

/// Raw bytes of a batch compressed at a time (then written): what the compressed copies cost.
const COMPRESS_WINDOW: usize = 8 << 20;

/// A record being appended. See the module documentation.
pub struct Draft<'a> {
    log: &'a mut Log,
    height: u64,
    new_segment: bool,
    seg_no: u64,
    start: u64,
    w: Option<RecordWriter>,
    rows: Vec<MetaExtent>,
    /// New payloads waiting for compression, in order of first use.
    pending: Vec<Pending>,
    pending_by_hash: HashMap<[u8; 32], usize>,
    pending_bytes: usize,
    unchanged: Option<Unchanged>,
    check: bool,
}

struct Pending {
    raw: Vec<u8>,
    hash: [u8; 32],
    rows: Vec<usize>,
}

impl Log {
    /// Starts the record of `height` (above the last one). Nothing is acknowledged until
    /// [`Draft::commit`]; dropping the draft undoes it.
    pub fn begin(&mut self, height: u64) -> Result<Draft<'_>, LogError> {
        if !self.writable {
            return Err(LogError::ReadOnly {
                dir: self.dir.clone(),
            });
        }
        if let Some(reason) = &self.poisoned {
            return Err(LogError::Poisoned {
                dir: self.dir.clone(),
                reason: reason.clone(),
            });
        }
        if let Some(last) = self.last_height()
            && height <= last
        {
            return Err(LogError::HeightNotIncreasing { last, got: height });
        }
        #[cfg(test)]
        let check = !self.skip_checks;
        #[cfg(not(test))]
        let check = true;
        // The state this record builds on: its checks, and the blocks it already holds.
        if self.tip.is_none() {
            self.tip = Some(if check {
                self.fold_to(self.records.len())?
            } else {
                TreeState::default()
            });
        }
        let new_segment = match self.segments.last() {
            None => true,
            Some(s) => s.len >= self.opts.segment_size && s.len > SEG_HEADER_LEN,
        };
        let (seg_no, start) = if new_segment {
            (self.segments.last().map_or(1, |s| s.no + 1), SEG_HEADER_LEN)
        } else {
            let s = self.segments.last().expect("segment");
            (s.no, s.len)
        };
        if new_segment {
            self.create_segment(seg_no)?;
        }
        let seg = self.segments.last().expect("segment");
        let io = SegmentIo::new(&seg.file, &seg.path, self.fail_beyond());
        let w = match io {
            Ok(io) => RecordWriter::new(io, seg_no, start),
            Err(e) => {
                self.undo_append(new_segment, start);
                return Err(e);
            }
        };
        let unchanged = (check && self.opts.drop_unchanged).then(Unchanged::default);
        Ok(Draft {
            log: self,
            height,
            new_segment,
            seg_no,
            start,
            w: Some(w),
            rows: Vec::new(),
            pending: Vec::new(),
            pending_by_hash: HashMap::new(),
            pending_bytes: 0,
            unchanged,
            check,
        })
    }

    /// zstd-compress + blake3 each extent, dedup identical payloads already in the log by
    /// blake3, append one record, fsync (file and, for new segment files, the directory), and
    /// only then return. On any error the log is left exactly as before.
    pub fn append(&mut self, record: CutRecord) -> Result<HeightInfo, LogError> {
        let CutRecord {
            height,
            time_unix_ms,
            ops,
            extents,
        } = record;
        let mut d = self.begin(height)?;
        d.check_paths(&ops)?;
        d.sizes_from(&ops);
        for e in extents {
            d.extent(e)?;
        }
        d.commit(time_unix_ms, ops)
    }
}

impl Draft<'_> {
    /// The height being appended.
    pub fn height(&self) -> u64 {
        self.height
    }

    /// Bytes of raw data waiting for compression.
    pub fn buffered_bytes(&self) -> usize {
        self.pending_bytes
    }

    /// Bytes of captured data left out because the log already holds them at that place.
    pub fn unchanged_bytes(&self) -> u64 {
        self.unchanged.as_ref().map_or(0, |u| u.dropped)
    }

    /// Tells the draft every size the record's operations will set, when they are known before
    /// the extents (otherwise [`Draft::commit`] checks that they allow what was left out).
    pub fn sizes_from(&mut self, ops: &[NsOp]) {
        if let Some(u) = &mut self.unchanged {
            u.limit_by(ops);
        }
    }

    /// Adds an extent (applied after the operations, after every earlier extent: later wins).
    pub fn extent(&mut self, e: ExtentData) -> Result<(), LogError> {
        let len = e.bytes.len();
        let end = e.offset.checked_add(len).ok_or(LogError::InvalidRecord {
            height: self.height,
            reason: format!("extent of file id {} at {} overflows", e.id, e.offset),
        })?;
        match e.bytes {
            ExtentBytes::Zero(n) => {
                if n > 0 {
                    self.rows.push(MetaExtent::Zero {
                        id: e.id,
                        offset: e.offset,
                        len: n,
                    });
                }
            }
            ExtentBytes::Data(d) => {
                let runs = match (&mut self.unchanged, self.log.tip.as_ref()) {
                    (Some(u), Some(tip)) => u.changed(&*self.log, tip, e.id, e.offset, &d)?,
                    _ => std::iter::once(0..d.len()).collect(),
                };
                let chunk = self.log.opts.chunk_size.clamp(1, format::MAX_PAYLOAD_RAW);
                for run in runs {
                    let at = e.offset + run.start as u64;
                    for (offset, r) in format::split_range(at, run.len(), chunk) {
                        self.piece(e.id, offset, &d[run.start + r.start..run.start + r.end]);
                    }
                }
            }
        }
        // Only a file the tip has is ever compared: a new one needs no record of what the
        // record touched (with 10^6 new files that record was 200 MiB).
        if let (Some(u), Some(tip)) = (&mut self.unchanged, self.log.tip.as_ref())
            && tip.file(e.id).is_some()
        {
            u.cover(e.id, e.offset, end);
        }
        if self.pending_bytes >= self.log.opts.batch_bytes {
            self.flush()?;
        }
        Ok(())
    }

    fn piece(&mut self, id: FileId, offset: u64, raw: &[u8]) {
        let hash = *blake3::hash(raw).as_bytes();
        // Payloads this record stored are in the index already (see `flush`).
        let known = self.log.dedup.get(&hash);
        let row = self.rows.len();
        self.rows.push(MetaExtent::Data {
            id,
            offset,
            payload: known.unwrap_or(PayloadRef::PLACEHOLDER),
        });
        if known.is_none() {
            match self.pending_by_hash.get(&hash) {
                Some(&n) => self.pending[n].rows.push(row),
                None => {
                    self.pending_by_hash.insert(hash, self.pending.len());
                    self.pending_bytes += raw.len();
                    self.pending.push(Pending {
                        raw: raw.to_vec(),
                        hash,
                        rows: vec![row],
                    });
                }
            }
        }
    }

    /// Compresses what is pending (on several threads) and writes it out; the batch is then
    /// empty (the cut empties it before the freeze, so the frozen phase only buffers).
    pub fn flush(&mut self) -> Result<(), LogError> {
        if self.pending.is_empty() {
            return Ok(());
        }
        let mut pending = std::mem::take(&mut self.pending).into_iter().peekable();
        self.pending_by_hash.clear();
        self.pending_bytes = 0;
        while pending.peek().is_some() {
            // A window of the batch at a time: the compressed copies of the whole batch beside
            // its raw bytes doubled what the capture buffer's cap promises.
            let (mut window, mut bytes) = (Vec::new(), 0);
            while let Some(p) =
                pending.next_if(|p| window.is_empty() || bytes + p.raw.len() <= COMPRESS_WINDOW)
            {
                bytes += p.raw.len();
                window.push(p);
            }
            self.write_window(&window)?;
        }
        Ok(())
    }

    /// Compresses and writes `window`, and points its rows at where it went.
    fn write_window(&mut self, window: &[Pending]) -> Result<(), LogError> {
        let opts = &self.log.opts;
        let raws: Vec<&[u8]> = window.iter().map(|p| p.raw.as_slice()).collect();
        let stored = compress_all(&raws, opts.zstd_level, opts.compress_threads)
            .map_err(|e| LogError::io(&self.log.dir, e))?;
        let w = self.w.as_mut().expect("draft in progress");
        for (p, (table, zstd)) in window.iter().zip(stored) {
            let (codec, body) = match &zstd {
                Some(c) => (Codec::Zstd, c.as_slice()),
                None => (Codec::Raw, p.raw.as_slice()),
            };
            let r = w.payload(&table, body, p.raw.len() as u64, codec, p.hash)?;
            // Indexed now, so the rest of the record finds it; undone with the record (see
            // `Drop`). A map of the record's own payloads beside the index cost 220 MiB in a
            // baseline of 10^6 files.
            self.log.dedup.add(&r);
            for &row in &p.rows {
                if let MetaExtent::Data { payload, .. } = &mut self.rows[row] {
                    *payload = r;
                }
            }
        }
        Ok(())
    }

    /// The state at the last height, which this record builds on (the cutter diffs its
    /// namespace against it: one copy of every path, the log's).
    pub fn tip(&self) -> &TreeState {
        self.log.tip.as_ref().expect("begin builds the tip")
    }

    /// Leaves out the extents of files `keep` refuses (files gone before the record's
    /// namespace was taken); `keep` is given the tip too. Their payloads stay in the record,
    /// unused.
    pub fn retain_files(&mut self, keep: impl Fn(&TreeState, FileId) -> bool) {
        let tip = self.log.tip.as_ref().expect("begin builds the tip");
        // Where each kept row goes; re-point pending payloads at the new places.
        let mut kept = 0;
        let place: Vec<Option<usize>> = self
            .rows
            .iter()
            .map(|r| {
                keep(tip, r.id()).then(|| {
                    kept += 1;
                    kept - 1
                })
            })
            .collect();
        let mut i = 0;
        self.rows.retain(|_| {
            i += 1;
            place[i - 1].is_some()
        });
        for p in &mut self.pending {
            p.rows = p.rows.iter().filter_map(|&r| place[r]).collect();
        }
    }

    /// The cheap checks of the operations' paths.
    pub fn check_paths(&self, ops: &[NsOp]) -> Result<(), LogError> {
        for op in ops.iter().filter(|_| self.check) {
            let (path, target) = match op {
                NsOp::Put { path, entry } => (
                    path,
                    match entry {
                        Entry::Symlink { target, .. } => Some(target),
                        _ => None,
                    },
                ),
                NsOp::Remove { path } => (path, None),
                NsOp::SetSize { .. } => continue,
            };
            let bad = check_path(path)
                .err()
                .or_else(|| target.and_then(|t| check_symlink_target(t).err()));
            if let Some(why) = bad {
                return Err(LogError::UnsafePath {
                    height: self.height,
                    path: display_path(path),
                    reason: why.to_string(),
                });
            }
        }
        Ok(())
    }

    /// Adds the namespace operations (applied before every extent), checks the record against
    /// the state it builds on, writes the metadata, fsyncs, and acknowledges the height.
    pub fn commit(mut self, time_unix_ms: u64, ops: Vec<NsOp>) -> Result<HeightInfo, LogError> {
        self.check_paths(&ops)?;
        if let (Some(u), true) = (&self.unchanged, self.check)
            && let Err(reason) = u.allows(&ops)
        {
            return Err(LogError::InvalidRecord {
                height: self.height,
                reason,
            });
        }
        // Pending payloads whose rows were all dropped are not stored.
        self.pending.retain(|p| !p.rows.is_empty());
        self.flush()?;
        let meta = Meta {
            ops,
            extents: std::mem::take(&mut self.rows),
        };
        let tip = self.log.tip.as_mut().expect("tip");
        if let Err(e) = tip.apply(self.height, &meta.ops, &meta.extents)
            && self.check
        {
            self.log.tip = None; // partly applied: rebuild on the next append
            return Err(e);
        }
        let prev_hash = self.log.records.last().map_or([0; 32], |r| r.info.hash);
        let w = self.w.take().expect("draft in progress");
        let seg = self.log.segments.last().expect("segment");
        let written = w
            .finish(self.height, time_unix_ms, prev_hash, &meta)
            .and_then(|hw| {
                seg.file
                    .sync_data()
                    .map_err(|e| LogError::io(&seg.path, e))?;
                Ok(hw)
            });
        let (header, hash) = match written {
            Ok(hw) => hw,
            Err(e) => {
                self.log.tip = None;
                return Err(e); // Drop undoes the record
            }
        };
        let record_len = header.record_len().expect("fits");
        let seg_idx = self.log.segments.len() - 1;
        self.log.segments[seg_idx].len = self.start + record_len;
        let tally = Tally::of(&meta);
        let max_id = tally.max_id;
        let info = HeightInfo {
            height: self.height,
            time_unix_ms,
            stored_bytes: record_len,
            data_bytes: tally.data_bytes,
            files_changed: tally.files_changed(),
            hash,
        };
        let rec = RecordLoc {
            seg_no: self.seg_no,
            seg_idx,
            offset: self.start,
            header,
            info: info.clone(),
        };
        self.log.index_record(rec, max_id);
        self.new_segment = false;
        self.start = u64::MAX; // committed: nothing to undo
        Ok(info)
    }
}

impl Drop for Draft<'_> {
    fn drop(&mut self) {
        if self.start != u64::MAX {
            tracing::warn!(
                "the record of height {} was not committed; undoing it",
                self.height
            );
            self.log.tip = None;
            // The payloads this record indexed are cut off with it: nothing may point at them.
            self.log.dedup.forget_from(self.seg_no, self.start);
            self.log.undo_append(self.new_segment, self.start);
        }
    }
}

impl Log {
    // ---- appending (see append.rs) -------------------------------------------------------

    /// Creates segment `seg_no` (header, fsync, directory fsync) and makes it the last one.
    pub(super) fn create_segment(&mut self, seg_no: u64) -> Result<(), LogError> {
        let path = self.dir.join(seg_name(seg_no));
        let created = (|| -> Result<File, LogError> {
            let file = OpenOptions::new()
                .read(true)
                .write(true)
                .create_new(true)
                .open(&path)
                .map_err(|e| LogError::io(&path, e))?;
            let io = SegmentIo::new(&file, &path, self.fail_beyond())?;
            io.write_at(&SegHeader { seg: seg_no }.encode(), 0)?;
            file.sync_all().map_err(|e| LogError::io(&path, e))?;
            fsync_dir(&self.dir)?;
            Ok(file)
        })();
        match created {
            Ok(file) => {
                self.segments.push(Segment {
                    no: seg_no,
                    path,
                    file,
                    len: SEG_HEADER_LEN,
                });
                Ok(())
            }
            Err(e) => {
                if path.exists() {
                    let _ = fs::remove_file(&path);
                    let _ = fsync_dir(&self.dir);
                }
                Err(e)
            }
        }
    }

    /// Undoes a record that was not acknowledged: cuts the last segment back to `start`, or
    /// removes it when the record created it. A failure here poisons the log.
    pub(super) fn undo_append(&mut self, new_segment: bool, start: u64) {
        let seg = self.segments.last().expect("segment");
        let undo = if new_segment {
            fs::remove_file(&seg.path)
                .map_err(|e| LogError::io(&seg.path, e))
                .and_then(|()| fsync_dir(&self.dir))
        } else {
            seg.file
                .set_len(start)
                .and_then(|()| seg.file.sync_all())
                .map_err(|e| LogError::io(&seg.path, e))
        };
        if new_segment {
            self.segments.pop();
        }
        if let Err(u) = undo {
            self.poisoned = Some(u.to_string());
        }
    }

    /// Tests: where writes start failing like a full disk.
    pub(super) fn fail_beyond(&self) -> Option<u64> {
        #[cfg(test)]
        return self.fail_writes_beyond;
        #[cfg(not(test))]
        None
    }
}

/// Block table and zstd compression of every payload, on `threads` threads. The compressed
/// data is `None` where compression does not pay (the payload is then stored raw).
pub(super) type Stored = (Vec<u8>, Option<Vec<u8>>);

pub(super) fn compress_all(
    raw: &[&[u8]],
    level: i32,
    threads: usize,
) -> std::io::Result<Vec<Stored>> {
    let one = |d: &[u8]| -> std::io::Result<Stored> {
        let c = crate::zstd_ctx::compress(d, level)?;
        Ok((format::block_table(d), (c.len() < d.len()).then_some(c)))
    };
    let mut out: Vec<std::io::Result<Stored>> = Vec::with_capacity(raw.len());
    let total: usize = raw.iter().map(|d| d.len()).sum();
    if threads <= 1 || raw.len() < 2 || total < (256 << 10) {
        out.extend(raw.iter().map(|d| one(d)));
    } else {
        out.resize_with(raw.len(), || Ok((Vec::new(), None)));
        let per = raw.len().div_ceil(threads);
        std::thread::scope(|s| {
            for (inp, outp) in raw.chunks(per).zip(out.chunks_mut(per)) {
                s.spawn(move || {
                    for (d, o) in inp.iter().zip(outp.iter_mut()) {
                        *o = one(d);
                    }
                });
            }
        });
    }
    out.into_iter().collect()
}
