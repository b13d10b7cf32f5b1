//! The one record writer, shared by the appender and compaction.
//!
//! Two layers: [`SegmentIo`] is the only place that writes segment bytes (and the one fault
//! seam: a simulated full disk), and [`RecordWriter`] lays out one record of the current format
//! (header, payloads, metadata, trailer) on top of it. Payloads go to their final offsets as
//! they come, so a record of any size is written with a bounded buffer; the header is written
//! last, once the metadata is known, and the caller makes the record durable with one fsync.

use std::{
    fs::File,
    os::unix::fs::FileExt,
    path::{Path, PathBuf},
};

use super::error::LogError;
use super::format::{
    Codec, FORMAT_VERSION, PayloadRef, REC_HEADER_LEN, RecHeader, TRAILER_LEN, Trailer, v2_hash,
};

/// Writes are gathered up to this size before they go to the file.
const WRITE_BUF: usize = 4 << 20;
/// A record's metadata is encoded, hashed and written in pieces of this size.
pub(crate) const META_CHUNK: usize = 1 << 20;

/// A segment file opened for writing.
pub(crate) struct SegmentIo {
    pub file: File,
    pub path: PathBuf,
    /// Tests: writes that would end beyond this offset fail like a full disk (ENOSPC), after
    /// writing what fits, as the kernel does.
    pub fail_beyond: Option<u64>,
}

impl SegmentIo {
    pub fn new(file: &File, path: &Path, fail_beyond: Option<u64>) -> Result<SegmentIo, LogError> {
        Ok(SegmentIo {
            file: file.try_clone().map_err(|e| LogError::io(path, e))?,
            path: path.to_path_buf(),
            fail_beyond,
        })
    }

    /// `write_all_at`, through the fault seam.
    pub fn write_at(&self, bytes: &[u8], at: u64) -> Result<(), LogError> {
        let io = |e| LogError::io(&self.path, e);
        if let Some(limit) = self.fail_beyond
            && at + bytes.len() as u64 > limit
        {
            let n = limit.saturating_sub(at).min(bytes.len() as u64) as usize;
            self.file.write_all_at(&bytes[..n], at).map_err(io)?;
            return Err(io(std::io::Error::from_raw_os_error(libc::ENOSPC)));
        }
        self.file.write_all_at(bytes, at).map_err(io)
    }
}

/// One record being written at `start` of segment `seg_no`.
pub(crate) struct RecordWriter {
    io: SegmentIo,
    seg_no: u64,
    start: u64,
    /// Where the next payload byte goes.
    pos: u64,
    buf: Vec<u8>,
    payloads: blake3::Hasher,
}

impl RecordWriter {
    pub fn new(io: SegmentIo, seg_no: u64, start: u64) -> RecordWriter {
        RecordWriter {
            io,
            seg_no,
            start,
            pos: start + REC_HEADER_LEN,
            buf: Vec::new(),
            payloads: blake3::Hasher::new(),
        }
    }

    /// Bytes of payload written so far.
    pub fn payload_len(&self) -> u64 {
        self.pos - self.start - REC_HEADER_LEN
    }

    /// Stores a new payload (its block table, then its data as `codec` says) and returns where.
    pub fn payload(
        &mut self,
        table: &[u8],
        body: &[u8],
        raw_len: u64,
        codec: Codec,
        hash: [u8; 32],
    ) -> Result<PayloadRef, LogError> {
        let p = PayloadRef {
            seg: self.seg_no,
            offset: self.pos,
            stored_len: (table.len() + body.len()) as u64,
            raw_len,
            codec,
            hash,
        };
        self.put(table)?;
        self.put(body)?;
        Ok(p)
    }

    /// Stores a payload's stored bytes as they are (compaction moving a payload), returning its
    /// new place.
    pub fn copied(&mut self, stored: &[u8], like: &PayloadRef) -> Result<PayloadRef, LogError> {
        let p = PayloadRef {
            seg: self.seg_no,
            offset: self.pos,
            ..*like
        };
        self.put(stored)?;
        Ok(p)
    }

    fn put(&mut self, b: &[u8]) -> Result<(), LogError> {
        self.payloads.update(b);
        if b.len() >= WRITE_BUF / 2 {
            // Large pieces go straight to the file, after what is buffered before them.
            self.flush()?;
            self.io.write_at(b, self.pos)?;
            self.pos += b.len() as u64;
            return Ok(());
        }
        if self.buf.len() + b.len() > WRITE_BUF {
            self.flush()?;
        }
        if self.buf.capacity() == 0 {
            self.buf.reserve(WRITE_BUF);
        }
        self.buf.extend_from_slice(b);
        self.pos += b.len() as u64;
        Ok(())
    }

    /// Writes what is buffered; `pos` already counts it.
    fn flush(&mut self) -> Result<(), LogError> {
        if !self.buf.is_empty() {
            let at = self.pos - self.buf.len() as u64;
            self.io.write_at(&self.buf, at)?;
            self.buf.clear();
        }
        Ok(())
    }

    /// Writes the metadata, the trailer and, last, the header: a metadata block of `meta_len`
    /// bytes that `encode` hands to its sink in pieces (a [`crate::meta::MetaStream`], or a
    /// `Meta` encoded as it goes). Returns the header and the record hash; the record is
    /// complete on disk but not yet durable (the caller fsyncs).
    pub fn finish_with(
        mut self,
        height: u64,
        time_unix_ms: u64,
        prev_hash: [u8; 32],
        meta_len: u64,
        encode: impl FnOnce(&mut dyn FnMut(&[u8]) -> Result<(), LogError>) -> Result<(), LogError>,
    ) -> Result<(RecHeader, [u8; 32]), LogError> {
        self.flush()?;
        let mut header = RecHeader {
            version: FORMAT_VERSION,
            height,
            time_unix_ms,
            meta_len,
            payload_len: self.payload_len(),
            prev_hash,
            meta_hash: [0; 32],
        };
        let record_len = header.record_len().ok_or_else(|| LogError::InvalidRecord {
            height,
            reason: "the record is too large".into(),
        })?;
        // Written and hashed in pieces as it is encoded: the metadata of a baseline of 10^6
        // files is 140 MiB.
        let meta_at = self.start + header.meta_start();
        let (mut at, mut hasher) = (meta_at, blake3::Hasher::new());
        encode(&mut |c| {
            hasher.update(c);
            self.io.write_at(c, at)?;
            at += c.len() as u64;
            Ok(())
        })?;
        if at - meta_at != meta_len {
            return Err(LogError::InvalidRecord {
                height,
                reason: format!(
                    "its metadata took {} bytes, not the {meta_len} announced",
                    at - meta_at
                ),
            });
        }
        header.meta_hash = *hasher.finalize().as_bytes();
        let encoded = header.encode();
        let hash = v2_hash(&encoded, self.payloads.finalize().as_bytes());
        let trailer = Trailer { record_len, hash }.encode();
        let trailer_at = self.start + record_len - TRAILER_LEN;
        self.io.write_at(&trailer, trailer_at)?;
        self.io.write_at(&encoded, self.start)?;
        Ok((header, hash))
    }
}
