//! Reading stored payloads back: decoding and the checks a payload must pass.

use std::os::unix::fs::FileExt;

use super::format::{self, Codec, PayloadRef};
use super::{Log, LogError};

/// Where replay gets payload bytes: the local log's segments, or an offsite copy
/// (`crate::remote`). Everything else about replay is the same for both.
pub trait PayloadSource {
    /// The raw bytes of `p`, decoded and checked against its blake3 and block table.
    /// `Err(Ok(why))`: the stored bytes are bad; `Err(Err(e))`: they could not be read.
    fn load_payload(&self, p: &PayloadRef) -> Result<Vec<u8>, Result<String, LogError>>;
    /// [`PayloadSource::load_payload`], maybe without the blake3 check (then `false`): replay
    /// checks on its writer thread, before writing, while this thread decodes the next one.
    fn load_payload_unchecked(
        &self,
        p: &PayloadRef,
    ) -> Result<(Vec<u8>, bool), Result<String, LogError>> {
        self.load_payload(p).map(|raw| (raw, true))
    }
    /// The block table of `p` (unchecked: a wrong entry only makes replay read the payload,
    /// whose blake3 is checked).
    fn load_table(&self, p: &PayloadRef) -> Result<Vec<u8>, LogError>;
    /// The height whose record stored `p`, for error messages.
    fn payload_height(&self, _p: &PayloadRef) -> Option<u64> {
        None
    }
    /// Replay will load these payloads next, in this order: a source where each load is a
    /// round trip (an offsite copy) starts fetching them together.
    fn prefetch(&self, _next: &[PayloadRef]) {}
}

/// The log's own segments as replay's payload source.
impl PayloadSource for Log {
    fn load_payload(&self, p: &PayloadRef) -> Result<Vec<u8>, Result<String, LogError>> {
        let (raw, _) = self.load_payload_unchecked(p)?;
        check_data(p, &raw).map_err(Ok)?;
        Ok(raw)
    }

    /// Reads the data after the block table straight into its own buffer (a raw payload is
    /// then not copied again) and leaves the blake3 check to the caller.
    fn load_payload_unchecked(
        &self,
        p: &PayloadRef,
    ) -> Result<(Vec<u8>, bool), Result<String, LogError>> {
        let Some(seg) = self.segment(p.seg) else {
            return Err(Ok(format!("segment {} is not part of the log", p.seg)));
        };
        if p.offset.saturating_add(p.stored_len) > seg.len {
            return Err(Ok("payload lies beyond the end of its segment".into()));
        }
        let tl = format::table_len(p.raw_len);
        if p.stored_len < tl {
            return Err(Ok("payload shorter than its block table".into()));
        }
        let body = read_new(&seg.file, (p.stored_len - tl) as usize, p.offset + tl)
            .map_err(|e| Err(LogError::io(&seg.path, e)))?;
        match p.codec {
            Codec::Raw => Ok((body, false)),
            Codec::Zstd => Ok((unzstd(p, &body).map_err(Ok)?, false)),
        }
    }

    fn load_table(&self, p: &PayloadRef) -> Result<Vec<u8>, LogError> {
        let tl = format::table_len(p.raw_len);
        let seg = self.payload_segment(p)?;
        let mut t = vec![0u8; tl as usize];
        if p.offset.saturating_add(tl) <= seg.len {
            seg.file
                .read_exact_at(&mut t, p.offset)
                .map_err(|e| LogError::io(&seg.path, e))?;
        }
        Ok(t)
    }

    fn payload_height(&self, p: &PayloadRef) -> Option<u64> {
        let i = self
            .records
            .partition_point(|r| (r.seg_no, r.offset) <= (p.seg, p.offset));
        (i > 0).then(|| self.records[i - 1].header.height)
    }
}

/// `len` bytes of `file` at `offset` in a new buffer that is not zero-filled first: replay
/// reads every payload into its own buffer, and the memset took 6 % of its CPU.
fn read_new(file: &std::fs::File, len: usize, offset: u64) -> std::io::Result<Vec<u8>> {
    let mut buf = Vec::with_capacity(len);
    while buf.len() < len {
        let at = offset + buf.len() as u64;
        // Reads into the spare capacity and grows the length by what it read; retried when a
        // signal interrupts it, as `read_exact_at` does.
        match rustix::io::pread(file, rustix::buffer::spare_capacity(&mut buf), at) {
            Ok(0) => return Err(std::io::ErrorKind::UnexpectedEof.into()),
            Ok(_) | Err(rustix::io::Errno::INTR) => {}
            Err(e) => return Err(e.into()),
        }
    }
    // The capacity may exceed `len` (the allocator's choice), so a read may have gone past it.
    buf.truncate(len);
    Ok(buf)
}

/// Decodes stored payload bytes (block table, then data) and checks the data against the
/// payload's blake3 and its block table.
pub fn decode_payload(p: &PayloadRef, stored: Vec<u8>) -> Result<Vec<u8>, String> {
    let tl = format::table_len(p.raw_len) as usize;
    let table = stored.get(..tl).map(<[u8]>::to_vec);
    let raw = decode_data(p, stored)?;
    if table.is_none_or(|t| format::block_table(&raw) != t) {
        return Err("block table does not match the data".into());
    }
    Ok(raw)
}

/// The raw bytes of stored payload bytes, checked against the payload's blake3 only: what a
/// local replay writes. The block table is left unchecked (hashing every 4 KiB block again
/// took as long as the rest of the decode); replay reads a table only to skip writing blocks
/// that already hold its hashes, and `verify` checks every table.
fn decode_data(p: &PayloadRef, mut stored: Vec<u8>) -> Result<Vec<u8>, String> {
    let tl = format::table_len(p.raw_len) as usize;
    if stored.len() < tl {
        return Err("payload shorter than its block table".into());
    }
    let raw = match p.codec {
        Codec::Raw => stored.split_off(tl),
        Codec::Zstd => unzstd(p, &stored[tl..])?,
    };
    check_data(p, &raw)?;
    Ok(raw)
}

/// [`decode_payload`]'s checks without keeping the raw bytes (nor copying raw ones).
pub fn check_payload(p: &PayloadRef, stored: &[u8]) -> Result<(), String> {
    let tl = format::table_len(p.raw_len) as usize;
    if stored.len() < tl {
        return Err("payload shorter than its block table".into());
    }
    match p.codec {
        Codec::Raw => check_raw(p, &stored[tl..], &stored[..tl]),
        Codec::Zstd => check_raw(p, &unzstd(p, &stored[tl..])?, &stored[..tl]),
    }
}

fn unzstd(p: &PayloadRef, body: &[u8]) -> Result<Vec<u8>, String> {
    let raw =
        crate::zstd_ctx::decompress(body, p.raw_len as usize).map_err(|e| format!("zstd: {e}"))?;
    if raw.len() as u64 != p.raw_len {
        return Err(format!(
            "decompressed to {} bytes, expected {}",
            raw.len(),
            p.raw_len
        ));
    }
    Ok(raw)
}

/// The raw bytes' length and blake3 against the payload's.
pub(crate) fn check_data(p: &PayloadRef, raw: &[u8]) -> Result<(), String> {
    if raw.len() as u64 != p.raw_len {
        return Err(format!(
            "holds {} raw bytes, expected {}",
            raw.len(),
            p.raw_len
        ));
    }
    if *blake3::hash(raw).as_bytes() != p.hash {
        return Err("blake3 mismatch".into());
    }
    Ok(())
}

fn check_raw(p: &PayloadRef, raw: &[u8], table: &[u8]) -> Result<(), String> {
    check_data(p, raw)?;
    if format::block_table(raw) != table {
        return Err("block table does not match the data".into());
    }
    Ok(())
}
