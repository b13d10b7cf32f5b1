//! A record's metadata encoded as it is produced, for writers that make a record too large to
//! hold decoded: a compaction's diff over a baseline of 10^6 files held its operations, rows and
//! extent table at once (over 500 MiB). The operations and the extent table are encoded into
//! two spills (a buffer, then an unnamed file beside the log once the buffer is full), and
//! written out in block order once the record's payloads are.

use std::fs::File;
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use super::{encode_extent, encode_op};
use crate::LogError;
use crate::format::MetaExtent;
use crate::record::{FileId, NsOp};

/// Bytes a spill keeps in memory before it goes to its file.
pub(crate) const SPILL_BUF: usize = 4 << 20;

/// Encoded items, in memory up to [`SPILL_BUF`], then in an unnamed file.
struct Spill {
    buf: Vec<u8>,
    file: Option<File>,
    /// Bytes in `file`.
    spilled: u64,
    count: u64,
}

impl Spill {
    fn new() -> Spill {
        Spill {
            buf: Vec::new(),
            file: None,
            spilled: 0,
            count: 0,
        }
    }

    fn len(&self) -> u64 {
        self.spilled + self.buf.len() as u64
    }

    /// Counts one item just encoded into `buf`, and spills when the buffer is full.
    fn added(&mut self, dir: &Path) -> Result<(), LogError> {
        self.count += 1;
        if self.buf.len() < SPILL_BUF {
            return Ok(());
        }
        let f = match &mut self.file {
            Some(f) => f,
            None => self
                .file
                .insert(tempfile::tempfile_in(dir).map_err(|e| LogError::io(dir, e))?),
        };
        f.write_all(&self.buf).map_err(|e| LogError::io(dir, e))?;
        self.spilled += self.buf.len() as u64;
        self.buf.clear();
        Ok(())
    }

    /// The item count, then every encoded byte, handed to `sink` in pieces of at most
    /// [`SPILL_BUF`].
    fn drain(
        self,
        dir: &Path,
        sink: &mut dyn FnMut(&[u8]) -> Result<(), LogError>,
    ) -> Result<(), LogError> {
        let count = u32::try_from(self.count).expect("checked when added");
        sink(&count.to_le_bytes())?;
        self.drain_items(dir, sink)
    }

    /// Every encoded byte, without the count.
    fn drain_items(
        mut self,
        dir: &Path,
        sink: &mut dyn FnMut(&[u8]) -> Result<(), LogError>,
    ) -> Result<(), LogError> {
        if let Some(mut f) = self.file.take() {
            let io = |e| LogError::io(dir, e);
            f.seek(SeekFrom::Start(0)).map_err(io)?;
            let mut chunk = vec![0u8; SPILL_BUF];
            let mut left = self.spilled;
            while left > 0 {
                let n = left.min(SPILL_BUF as u64) as usize;
                f.read_exact(&mut chunk[..n]).map_err(io)?;
                sink(&chunk[..n])?;
                left -= n as u64;
            }
        }
        if !self.buf.is_empty() {
            sink(&self.buf)?;
        }
        Ok(())
    }
}

/// The metadata block of one record, encoded as its operations and extents come (in any
/// interleaving: operations precede extents in the block).
pub(crate) struct MetaStream {
    dir: PathBuf,
    height: u64,
    ops: Spill,
    extents: Spill,
}

impl MetaStream {
    /// Spills go to unnamed files in `dir`; `height` names the record in errors.
    pub fn new(dir: &Path, height: u64) -> MetaStream {
        MetaStream {
            dir: dir.to_path_buf(),
            height,
            ops: Spill::new(),
            extents: Spill::new(),
        }
    }

    /// The height of the record.
    pub fn height(&self) -> u64 {
        self.height
    }

    fn too_large(&self, spill: &Spill) -> Result<(), LogError> {
        if spill.count >= u64::from(u32::MAX) {
            return Err(LogError::InvalidRecord {
                height: self.height,
                reason: "more than 2^32 operations or extents in one record".into(),
            });
        }
        Ok(())
    }

    pub fn op(&mut self, op: &NsOp) -> Result<(), LogError> {
        self.too_large(&self.ops)?;
        encode_op(&mut self.ops.buf, op);
        self.ops.added(&self.dir)
    }

    pub fn extent(&mut self, e: &MetaExtent) -> Result<(), LogError> {
        self.too_large(&self.extents)?;
        encode_extent(&mut self.extents.buf, e);
        self.extents.added(&self.dir)
    }

    /// Operations and extents added so far.
    pub fn counts(&self) -> (u64, u64) {
        (self.ops.count, self.extents.count)
    }

    /// This stream's operations with the extents of `other` (a record whose operations and
    /// extents are made by different hands: the appender's draft and the cutter).
    pub fn with_extents_of(mut self, other: MetaStream) -> MetaStream {
        self.extents = other.extents;
        self
    }

    /// Leaves out the extents of files `keep` refuses, copying the others to a new spill. Only
    /// the file id and the kind of each are read: an extent's length follows from its kind.
    pub fn retain_extents(&mut self, keep: impl Fn(FileId) -> bool) -> Result<(), LogError> {
        let old = std::mem::replace(&mut self.extents, Spill::new());
        let (dir, mut carry) = (self.dir.clone(), Vec::new());
        old.drain_items(&dir, &mut |chunk| {
            carry.extend_from_slice(chunk);
            let mut at = 0;
            while carry.len() - at > 16 {
                let len = if carry[at + 16] == super::EXT_ZERO {
                    super::ZERO_EXT_LEN
                } else {
                    super::DATA_EXT_LEN
                };
                if carry.len() - at < len {
                    break;
                }
                let id = FileId::from_le_bytes(carry[at..at + 8].try_into().expect("8 bytes"));
                if keep(id) {
                    self.extents.buf.extend_from_slice(&carry[at..at + len]);
                    self.extents.added(&dir)?;
                }
                at += len;
            }
            carry.drain(..at);
            Ok(())
        })?;
        debug_assert!(carry.is_empty(), "a spill holds whole extents");
        Ok(())
    }

    #[cfg(test)]
    pub fn extents_spilled(&self) -> bool {
        self.extents.file.is_some()
    }

    /// Bytes of the encoded block.
    pub fn encoded_len(&self) -> u64 {
        4 + self.ops.len() + 4 + self.extents.len()
    }

    /// The encoded block, in order, handed to `sink` in pieces.
    pub fn write(
        self,
        sink: &mut dyn FnMut(&[u8]) -> Result<(), LogError>,
    ) -> Result<(), LogError> {
        let MetaStream {
            dir, ops, extents, ..
        } = self;
        ops.drain(&dir, sink)?;
        extents.drain(&dir, sink)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::format::{Codec, Meta, PayloadRef};
    use crate::record::Entry;

    /// The streamed block is byte for byte the block of the same `Meta`, in memory or spilled,
    /// whatever the interleaving of operations and extents.
    #[test]
    fn same_bytes_as_meta_encode() {
        let dir = tempfile::tempdir().unwrap();
        for n in [0u64, 3, 200_000] {
            let mut meta = Meta::default();
            let mut s = MetaStream::new(dir.path(), 1);
            for i in 0..n {
                let op = NsOp::Put {
                    path: format!("d/f{i}").into_bytes(),
                    entry: Entry::File {
                        id: i,
                        mode: 0o644,
                        uid: 1,
                        gid: 2,
                    },
                };
                let e = MetaExtent::Data {
                    id: i,
                    offset: i * 4096,
                    payload: PayloadRef {
                        seg: 1,
                        offset: i,
                        stored_len: 9,
                        raw_len: 4096,
                        codec: Codec::Zstd,
                        hash: [i as u8; 32],
                    },
                };
                s.extent(&e).unwrap();
                s.op(&op).unwrap();
                meta.ops.push(op);
                meta.extents.push(e);
            }
            assert_eq!(s.encoded_len(), meta.encoded_len() as u64);
            if n == 200_000 {
                assert!(s.extents.file.is_some(), "a large block spills");
            }
            let mut out = Vec::new();
            s.write(&mut |c| {
                out.extend_from_slice(c);
                Ok(())
            })
            .unwrap();
            // Not assert_eq: a failure would print megabytes.
            assert!(out == meta.encode(), "{n} items: the blocks differ");
        }
    }
}
