//! The writer of a compaction: new segments in `compact.new`, one record at a time, through
//! the log's one record writer. It outlives the log it was filled from: a compaction prepared
//! on a read-only view ([`Log::view`]) is finished on the appending log.
use std::fs::{File, OpenOptions};
use std::os::unix::fs::FileExt;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use super::diff::DiffOut;
use super::moved::Moved;
use super::{CompactReport, test_pause};
use crate::append::compress_all;
use crate::format::{Codec, Meta, MetaExtent, PayloadRef, SEG_HEADER_LEN, SegHeader};
use crate::meta::MetaStream;
use crate::record::{FileId, NsOp};
use crate::replay::PayloadSource;
use crate::writer::{META_CHUNK, RecordWriter, SegmentIo};
use crate::{Log, LogError, seg_name};

/// A row of a rewritten record before payload locations are known.
#[derive(Debug, PartialEq)]
pub(super) enum Row {
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
    /// New bytes: `len` bytes from `skip` of the raw bytes of `src` (the part of a payload
    /// still visible at the kept height), cut out when written.
    Fresh {
        id: FileId,
        offset: u64,
        src: PayloadRef,
        skip: u64,
        len: u64,
    },
}

/// Writes the new segments into `compact.new`.
pub(super) struct Writer {
    pub(super) tmp: PathBuf,
    pub(super) first_seg: u64,
    pub(super) files: Vec<(u64, File)>,
    len: u64,
    prev_hash: [u8; 32],
    /// Old location (segment, offset) of a payload in a rewritten segment -> its new one. Only
    /// the location: the rest of the payload's reference does not change when it moves, and
    /// it holds every payload of the rewritten segments (32 bytes each, not 88: at 2·10^6
    /// payloads whole references took 560 MiB at the peak).
    moved: Moved,
    pub(super) rep: CompactReport,
    throttle: Throttle,
}

impl Writer {
    pub(super) fn new(
        tmp: PathBuf,
        first_seg: u64,
        prev_hash: [u8; 32],
        rep: CompactReport,
        bytes_per_sec: u64,
    ) -> Writer {
        Writer {
            tmp,
            first_seg,
            files: Vec::new(),
            len: 0,
            prev_hash,
            moved: Moved::default(),
            rep,
            throttle: Throttle::new(bytes_per_sec),
        }
    }

    /// The catch-up of [`Log::finish_compaction`] runs while cuts wait: at full speed.
    pub(super) fn unthrottled(&mut self) {
        self.throttle.bytes_per_sec = 0;
    }

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

    /// A record writer at the end of the current segment (a new one once it is full).
    fn record_writer(&mut self, log: &Log) -> Result<RecordWriter, LogError> {
        if self.files.is_empty() || (self.len >= log.opts.segment_size && self.len > SEG_HEADER_LEN)
        {
            self.new_segment()?;
        }
        let (seg_no, file) = self.files.last().expect("segment");
        let path = self.tmp.join(seg_name(*seg_no));
        let io = SegmentIo::new(file, &path, log.fail_beyond())?;
        Ok(RecordWriter::new(io, *seg_no, self.len))
    }

    /// Where payload `p` is in the new log: where it was (a segment not rewritten), where an
    /// earlier record's copy put it, or copied now from `log` (checked first).
    fn place(
        &mut self,
        log: &Log,
        w: &mut RecordWriter,
        p: PayloadRef,
    ) -> Result<PayloadRef, LogError> {
        if p.seg < self.first_seg {
            return Ok(p);
        }
        if let Some((seg, offset)) = self.moved.get((p.seg, p.offset)) {
            return Ok(PayloadRef { seg, offset, ..p });
        }
        let seg = log.segment(p.seg).expect("checked at open");
        let mut b = vec![0u8; p.stored_len as usize];
        seg.file
            .read_exact_at(&mut b, p.offset)
            .map_err(|e| LogError::io(&seg.path, e))?;
        // Never carry damage into the new log.
        crate::check_payload(&p, &b).map_err(|what| LogError::Corrupt {
            segment: seg.path.clone(),
            offset: p.offset,
            height: None,
            what: format!("payload copied by compaction: {what}"),
        })?;
        let n = w.copied(&b, &p)?;
        self.moved.insert((p.seg, p.offset), (n.seg, n.offset));
        self.rep.copied_payloads += 1;
        self.throttle.account(2 * p.stored_len);
        Ok(n)
    }

    /// Writes a record copied as it is: its extents are kept and changed in place (their
    /// payloads move), never turned into rows (a record of 10^6 extents held both).
    pub(super) fn emit_as_is(
        &mut self,
        log: &Log,
        height: u64,
        time_unix_ms: u64,
        meta: Meta,
    ) -> Result<(), LogError> {
        let Meta { ops, mut extents } = meta;
        let mut w = self.record_writer(log)?;
        for e in &mut extents {
            if let MetaExtent::Data { payload, .. } = e {
                *payload = self.place(log, &mut w, *payload)?;
            }
        }
        let meta = Meta { ops, extents };
        self.finish(w, height, time_unix_ms, meta.encoded_len() as u64, |sink| {
            meta.encode_in_chunks(META_CHUNK, sink)
        })
    }

    /// A record made of rows (a run's diff), written as they come: see [`RowRecord`].
    pub(super) fn rows_record<'a>(
        &'a mut self,
        log: &'a Log,
        height: u64,
    ) -> Result<RowRecord<'a>, LogError> {
        let rec = self.record_writer(log)?;
        let meta = MetaStream::new(&self.tmp, height);
        Ok(RowRecord {
            w: self,
            log,
            rec,
            meta,
            pending: Vec::new(),
            batch: Vec::new(),
            batch_bytes: 0,
        })
    }

    /// Writes the record's metadata (`meta_len` bytes, from `encode`) and header after its
    /// payloads.
    fn finish(
        &mut self,
        w: RecordWriter,
        height: u64,
        time_unix_ms: u64,
        meta_len: u64,
        encode: impl FnOnce(&mut dyn FnMut(&[u8]) -> Result<(), LogError>) -> Result<(), LogError>,
    ) -> Result<(), LogError> {
        let start = self.len;
        let (header, hash) =
            w.finish_with(height, time_unix_ms, self.prev_hash, meta_len, encode)?;
        self.len = start + header.record_len().expect("fits");
        self.prev_hash = hash;
        self.throttle.account(2 * meta_len);
        self.throttle.pace();
        test_pause();
        Ok(())
    }
}

impl Writer {
    /// Cuts out, compresses (in parallel) and writes a batch of fresh rows, filling in their
    /// extents. Consecutive rows of one payload load it once.
    fn fresh(
        &mut self,
        log: &Log,
        w: &mut RecordWriter,
        batch: &mut Vec<(usize, FileId, u64, PayloadRef, u64, u64)>,
        extents: &mut [Option<MetaExtent>],
    ) -> Result<(), LogError> {
        if batch.is_empty() {
            return Ok(());
        }
        let mut cache: Option<(PayloadRef, Vec<u8>)> = None;
        let mut raws = Vec::with_capacity(batch.len());
        for &(_, _, _, src, skip, len) in batch.iter() {
            if cache.as_ref().is_none_or(|(p, _)| *p != src) {
                let raw = log.load_payload(&src).map_err(|e| match e {
                    Ok(what) => LogError::Corrupt {
                        segment: log.dir.clone(),
                        offset: src.offset,
                        height: None,
                        what: format!("payload of segment {} read by compaction: {what}", src.seg),
                    },
                    Err(e) => e,
                })?;
                self.throttle.account(src.stored_len);
                cache = Some((src, raw));
            }
            let raw = &cache.as_ref().expect("loaded").1;
            raws.push(raw[skip as usize..(skip + len) as usize].to_vec());
        }
        drop(cache);
        let refs: Vec<&[u8]> = raws.iter().map(|r| r.as_slice()).collect();
        let opts = &log.opts;
        let stored = compress_all(&refs, opts.zstd_level, opts.compress_threads)
            .map_err(|e| LogError::io(&self.tmp, e))?;
        for ((&(at, id, offset, ..), raw), (table, zstd)) in batch.iter().zip(&raws).zip(stored) {
            let (codec, body) = match &zstd {
                Some(c) => (Codec::Zstd, c.as_slice()),
                None => (Codec::Raw, raw.as_slice()),
            };
            let hash = *blake3::hash(raw).as_bytes();
            let n = w.payload(&table, body, raw.len() as u64, codec, hash)?;
            self.rep.sliced_payloads += 1;
            self.throttle.account(body.len() as u64);
            extents[at] = Some(MetaExtent::Data {
                id,
                offset,
                payload: n,
            });
        }
        batch.clear();
        self.throttle.pace();
        Ok(())
    }
}

/// Extents a [`RowRecord`] holds before it writes the fresh rows among them early.
const PENDING_MAX: usize = 1 << 16;

/// One record made of rows, written as the rows come: existing payloads are placed at once,
/// fresh ones are cut out and compressed batch by batch, and the metadata is encoded into a
/// [`MetaStream`]. Holds at most a batch of extents, whatever the size of the record.
pub(super) struct RowRecord<'a> {
    w: &'a mut Writer,
    log: &'a Log,
    rec: RecordWriter,
    meta: MetaStream,
    /// Extents not encoded yet: from the first fresh row of `batch` on, in order.
    pending: Vec<Option<MetaExtent>>,
    /// Fresh rows: (index in `pending`, id, offset, source payload, skip, len).
    batch: Vec<(usize, FileId, u64, PayloadRef, u64, u64)>,
    batch_bytes: u64,
}

impl RowRecord<'_> {
    fn extent(&mut self, e: MetaExtent) -> Result<(), LogError> {
        if self.pending.is_empty() {
            return self.meta.extent(&e);
        }
        self.pending.push(Some(e));
        if self.pending.len() >= PENDING_MAX {
            self.flush()?;
        }
        Ok(())
    }

    /// Writes the batch of fresh rows and encodes the extents held until then.
    fn flush(&mut self) -> Result<(), LogError> {
        let (log, rec) = (self.log, &mut self.rec);
        self.w.fresh(log, rec, &mut self.batch, &mut self.pending)?;
        self.batch_bytes = 0;
        for e in self.pending.drain(..) {
            self.meta.extent(&e.expect("every fresh row written"))?;
        }
        Ok(())
    }

    /// Writes the record's metadata and header.
    pub(super) fn finish(mut self, time_unix_ms: u64) -> Result<(), LogError> {
        self.flush()?;
        let RowRecord { w, rec, meta, .. } = self;
        let height = meta.height();
        w.finish(rec, height, time_unix_ms, meta.encoded_len(), |sink| {
            meta.write(sink)
        })
    }
}

impl DiffOut for RowRecord<'_> {
    fn op(&mut self, op: NsOp) -> Result<(), LogError> {
        self.meta.op(&op)
    }

    fn row(&mut self, row: Row) -> Result<(), LogError> {
        match row {
            Row::Zero { id, offset, len } => self.extent(MetaExtent::Zero { id, offset, len }),
            Row::Ref { id, offset, p } => {
                let payload = self.w.place(self.log, &mut self.rec, p)?;
                self.extent(MetaExtent::Data {
                    id,
                    offset,
                    payload,
                })
            }
            Row::Fresh {
                id,
                offset,
                src,
                skip,
                len,
            } => {
                let limit = (self.log.opts.batch_bytes as u64).max(1 << 20);
                if self.batch_bytes + len > limit && !self.batch.is_empty() {
                    self.flush()?;
                }
                self.batch
                    .push((self.pending.len(), id, offset, src, skip, len));
                self.batch_bytes += len;
                self.pending.push(None);
                Ok(())
            }
        }
    }
}

/// Keeps a compaction's reads and writes under a rate, so that it does not starve the node
/// (or the cuts) of disk bandwidth. `0`: no limit.
struct Throttle {
    bytes_per_sec: u64,
    start: Instant,
    bytes: u64,
}

impl Throttle {
    fn new(bytes_per_sec: u64) -> Throttle {
        Throttle {
            bytes_per_sec,
            start: Instant::now(),
            bytes: 0,
        }
    }

    fn account(&mut self, bytes: u64) {
        self.bytes += bytes;
    }

    /// Sleeps until the bytes so far fit the rate.
    fn pace(&self) {
        if self.bytes_per_sec == 0 {
            return;
        }
        let due = Duration::from_secs_f64(self.bytes as f64 / self.bytes_per_sec as f64);
        if let Some(ahead) = due.checked_sub(self.start.elapsed()) {
            std::thread::sleep(ahead);
        }
    }
}
