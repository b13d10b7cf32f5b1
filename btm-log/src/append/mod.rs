//! Appending a height as it is captured: a [`Draft`] takes extents one at a time, chunks,
//! hashes, deduplicates and compresses them in bounded batches and writes the payloads to
//! their final place in the segment; [`Draft::commit`] adds the namespace operations and the
//! metadata, fsyncs and acknowledges. Memory is the batch (`LogOptions::batch_bytes`; compressed
//! [`COMPRESS_WINDOW`] at a time, its metadata rows encoded once its payloads are placed) plus
//! one dedup entry per new payload. The metadata (the rows, and the operations in a
//! [`RecordOps`]) is encoded as it comes, spilling to an unnamed file beside the log past a few
//! MiB: a baseline of 10^6 files held 2·10^6 operations and 10^6 rows as values (~300 MiB).
//!
//! A draft dropped without commit (an error, a cut that starts over) is undone: the segment is
//! cut back to where the record began, or removed if the record started it.

use std::collections::{HashMap, HashSet};

use super::error::LogError;
use super::format::{self, Codec, MetaExtent, PayloadRef, SEG_HEADER_LEN};
use super::meta::MetaStream;
use super::record::{
    CutRecord, Entry, ExtentBytes, ExtentData, FileId, NsOp, check_path, check_symlink_target,
    display_path,
};
use super::unchanged::Unchanged;
use super::writer::{RecordWriter, SegmentIo};
use super::{HeightInfo, Log, TreeState};

mod commit;
#[cfg(test)]
mod tests;

/// Raw bytes of a batch compressed at a time (then written): what the compressed copies cost.
const COMPRESS_WINDOW: usize = 8 << 20;

/// Rows held before they are encoded: rows of payloads the log already has (or of holes) do
/// not fill the batch.
const ROWS_MAX: usize = 64 << 10;

/// A record being appended. See the module documentation.
pub struct Draft<'a> {
    log: &'a mut Log,
    height: u64,
    new_segment: bool,
    seg_no: u64,
    start: u64,
    w: Option<RecordWriter>,
    /// Rows since the last flush (in order; those of pending payloads wait for their place).
    rows: Vec<MetaExtent>,
    /// The rows flushed, encoded.
    ext: MetaStream,
    /// The file of each run of rows (to leave out files gone before the commit).
    row_files: Vec<FileId>,
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
        let ext = MetaStream::new(&self.dir, height);
        Ok(Draft {
            log: self,
            height,
            new_segment,
            seg_no,
            start,
            w: Some(w),
            rows: Vec::new(),
            ext,
            row_files: Vec::new(),
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
        let mut record_ops = d.ops();
        for op in &ops {
            record_ops.push(op)?;
        }
        d.sizes_from(&ops);
        drop(ops);
        for e in extents {
            d.extent(e)?;
        }
        d.commit_ops(time_unix_ms, record_ops)
    }
}

/// A record's namespace operations ([`NsOp`]), encoded as they are made, in a buffer that
/// spills to an unnamed file beside the log. Taken from [`Draft::ops`] and given to
/// [`Draft::commit_ops`]; apart from the draft, so that the cutter can diff against the tip the
/// draft holds while it adds them.
pub struct RecordOps {
    stream: MetaStream,
    height: u64,
    check: bool,
}

impl RecordOps {
    /// Adds an operation (applied in order, before every extent). Its path and symlink target
    /// are checked here, so that an unsafe one fails before anything is written.
    pub fn push(&mut self, op: &NsOp) -> Result<(), LogError> {
        if self.check {
            check_op(self.height, op)?;
        }
        self.stream.op(op)
    }

    /// Operations added.
    pub fn len(&self) -> u64 {
        self.stream.counts().0
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// The cheap checks of an operation's path and symlink target.
fn check_op(height: u64, op: &NsOp) -> Result<(), LogError> {
    let (path, target) = match op {
        NsOp::Put { path, entry } => (
            path,
            match entry {
                Entry::Symlink { target, .. } => Some(target),
                _ => None,
            },
        ),
        NsOp::Remove { path } => (path, None),
        NsOp::SetSize { .. } => return Ok(()),
    };
    let bad = check_path(path)
        .err()
        .or_else(|| target.and_then(|t| check_symlink_target(t).err()));
    match bad {
        Some(why) => Err(LogError::UnsafePath {
            height,
            path: display_path(path),
            reason: why.to_string(),
        }),
        None => Ok(()),
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

    /// An empty set of operations for this record (see [`RecordOps`]).
    pub fn ops(&self) -> RecordOps {
        RecordOps {
            stream: MetaStream::new(&self.log.dir, self.height),
            height: self.height,
            check: self.check,
        }
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
        if self.row_files.last() != Some(&e.id) {
            self.row_files.push(e.id);
        }
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
        if self.pending_bytes >= self.log.opts.batch_bytes || self.rows.len() >= ROWS_MAX {
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

    /// Compresses what is pending (on several threads), writes it out and encodes the rows;
    /// the batch is then empty (the cut empties it before the freeze, so the frozen phase only
    /// buffers).
    pub fn flush(&mut self) -> Result<(), LogError> {
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
        for row in self.rows.drain(..) {
            self.ext.extent(&row)?;
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
    /// unused. Rows already encoded are copied without them (rare: a file must vanish during
    /// the cut).
    pub fn retain_files(
        &mut self,
        keep: impl Fn(&TreeState, FileId) -> bool,
    ) -> Result<(), LogError> {
        let tip = self.log.tip.as_ref().expect("begin builds the tip");
        let gone: HashSet<FileId> = (self.row_files.iter())
            .filter(|&&id| !keep(tip, id))
            .copied()
            .collect();
        if gone.is_empty() {
            return Ok(());
        }
        self.row_files.retain(|id| !gone.contains(id));
        if self.ext.counts().1 > 0 {
            self.ext.retain_extents(|id| !gone.contains(&id))?;
        }
        // Where each kept row of the batch goes; re-point pending payloads at the new places.
        let mut kept = 0;
        let place: Vec<Option<usize>> = self
            .rows
            .iter()
            .map(|r| {
                (!gone.contains(&r.id())).then(|| {
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
        Ok(())
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
