//! The metadata block of a record, byte by byte (`docs/FORMAT.md`, "Metadata block"):
//! namespace operations, then the extent table.

use crate::format::{Codec, MAX_PAYLOAD_RAW, Meta, MetaExtent, PayloadRef, table_len};
use crate::record::{Entry, NsOp, check_path, check_symlink_target};

mod read;
mod stream;
pub(crate) use read::{Item, ReadError, StreamErr, for_each_item};
pub(crate) use stream::MetaStream;
#[cfg(test)]
pub(crate) use stream::SPILL_BUF;

const OP_PUT: u8 = 1;
const OP_REMOVE: u8 = 2;
const OP_SET_SIZE: u8 = 3;
const ENTRY_DIR: u8 = 1;
const ENTRY_FILE: u8 = 2;
const ENTRY_SYMLINK: u8 = 3;
const EXT_ZERO: u8 = 1;
const EXT_DATA: u8 = 2;

/// Bytes one op takes in the metadata block.
fn op_len(op: &NsOp) -> usize {
    match op {
        NsOp::Put { path, entry } => {
            1 + 4
                + path.len()
                + 1
                + match entry {
                    Entry::Dir { .. } => 12,
                    Entry::File { .. } => 20,
                    Entry::Symlink { target, .. } => 4 + target.len() + 8,
                }
        }
        NsOp::Remove { path } => 1 + 4 + path.len(),
        NsOp::SetSize { .. } => 1 + 16,
    }
}

const ZERO_EXT_LEN: usize = 8 + 8 + 1 + 8;
const DATA_EXT_LEN: usize = 8 + 8 + 1 + 8 + 32 + 1 + 8 + 8 + 8;

/// Appends the encoding of one namespace operation.
fn encode_op(b: &mut Vec<u8>, op: &NsOp) {
    let bytes = |b: &mut Vec<u8>, v: &[u8]| {
        b.extend_from_slice(&(v.len() as u32).to_le_bytes());
        b.extend_from_slice(v);
    };
    match op {
        NsOp::Put { path, entry } => {
            b.push(OP_PUT);
            bytes(b, path);
            match entry {
                Entry::Dir { mode, uid, gid } => {
                    b.push(ENTRY_DIR);
                    for v in [mode, uid, gid] {
                        b.extend_from_slice(&v.to_le_bytes());
                    }
                }
                Entry::File { id, mode, uid, gid } => {
                    b.push(ENTRY_FILE);
                    b.extend_from_slice(&id.to_le_bytes());
                    for v in [mode, uid, gid] {
                        b.extend_from_slice(&v.to_le_bytes());
                    }
                }
                Entry::Symlink { target, uid, gid } => {
                    b.push(ENTRY_SYMLINK);
                    bytes(b, target);
                    for v in [uid, gid] {
                        b.extend_from_slice(&v.to_le_bytes());
                    }
                }
            }
        }
        NsOp::Remove { path } => {
            b.push(OP_REMOVE);
            bytes(b, path);
        }
        NsOp::SetSize { id, size } => {
            b.push(OP_SET_SIZE);
            b.extend_from_slice(&id.to_le_bytes());
            b.extend_from_slice(&size.to_le_bytes());
        }
    }
}

/// Appends the encoding of one extent row.
fn encode_extent(b: &mut Vec<u8>, e: &MetaExtent) {
    match e {
        MetaExtent::Zero { id, offset, len } => {
            b.extend_from_slice(&id.to_le_bytes());
            b.extend_from_slice(&offset.to_le_bytes());
            b.push(EXT_ZERO);
            b.extend_from_slice(&len.to_le_bytes());
        }
        MetaExtent::Data {
            id,
            offset,
            payload: p,
        } => {
            b.extend_from_slice(&id.to_le_bytes());
            b.extend_from_slice(&offset.to_le_bytes());
            b.push(EXT_DATA);
            b.extend_from_slice(&p.raw_len.to_le_bytes());
            b.extend_from_slice(&p.hash);
            b.push(p.codec as u8);
            b.extend_from_slice(&p.seg.to_le_bytes());
            b.extend_from_slice(&p.offset.to_le_bytes());
            b.extend_from_slice(&p.stored_len.to_le_bytes());
        }
    }
}

impl Meta {
    /// Size of the encoded block (independent of payload locations, which are fixed-width).
    pub fn encoded_len(&self) -> usize {
        4 + self.ops.iter().map(op_len).sum::<usize>()
            + 4
            + self
                .extents
                .iter()
                .map(|e| match e {
                    MetaExtent::Zero { .. } => ZERO_EXT_LEN,
                    MetaExtent::Data { .. } => DATA_EXT_LEN,
                })
                .sum::<usize>()
    }

    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(self.encoded_len());
        let done: Result<(), std::convert::Infallible> = self.encode_in_chunks(usize::MAX, |c| {
            out.extend_from_slice(c);
            Ok(())
        });
        done.unwrap_or_else(|e| match e {});
        debug_assert_eq!(out.len(), self.encoded_len());
        out
    }

    /// The encoding, handed to `sink` in pieces of about `chunk` bytes as they fill: the
    /// metadata of a baseline of 10^6 files is 140 MiB, written and hashed without being held
    /// whole.
    pub fn encode_in_chunks<E>(
        &self,
        chunk: usize,
        mut sink: impl FnMut(&[u8]) -> Result<(), E>,
    ) -> Result<(), E> {
        let mut b = Vec::with_capacity(chunk.min(self.encoded_len()));
        let flush = |b: &mut Vec<u8>, sink: &mut dyn FnMut(&[u8]) -> Result<(), E>| {
            if b.len() >= chunk {
                sink(b)?;
                b.clear();
            }
            Ok(())
        };
        b.extend_from_slice(&(self.ops.len() as u32).to_le_bytes());
        for op in &self.ops {
            encode_op(&mut b, op);
            flush(&mut b, &mut sink)?;
        }
        b.extend_from_slice(&(self.extents.len() as u32).to_le_bytes());
        for e in &self.extents {
            encode_extent(&mut b, e);
            flush(&mut b, &mut sink)?;
        }
        if b.is_empty() { Ok(()) } else { sink(&b) }
    }

    /// Decodes and checks a metadata block: structure, path safety, symlink targets, payload
    /// bounds. Errors are (kind, message) so the caller can add the location.
    pub fn decode(b: &[u8]) -> Result<Meta, MetaError> {
        // Every op takes at least 9 bytes: do not trust the count for allocation.
        let n_ops = b
            .get(..4)
            .map_or(0, |n| u32::from_le_bytes(n.try_into().unwrap()));
        let mut meta = Meta {
            ops: Vec::with_capacity((n_ops as usize).min(b.len() / 9)),
            extents: Vec::new(),
        };
        for_each_in(b, |item| {
            match item {
                Item::Op(op) => meta.ops.push(op),
                Item::Extent(e) => meta.extents.push(e),
            }
            Ok::<(), MetaError>(())
        })?;
        Ok(meta)
    }
}

/// Hands each item of the metadata block `b` (in memory) to `each`, with the checks of
/// [`Meta::decode`], which collects them.
pub(crate) fn for_each_in<E: From<MetaError>>(
    b: &[u8],
    mut each: impl FnMut(Item) -> Result<(), E>,
) -> Result<(), E> {
    let mut c = Cursor { b, at: 0 };
    let n_ops = c.u32()?;
    for _ in 0..n_ops {
        each(Item::Op(decode_op(&mut c)?))?;
    }
    let n_ext = c.u32()?;
    for _ in 0..n_ext {
        each(Item::Extent(decode_extent(&mut c)?))?;
    }
    if c.at != b.len() {
        let left = b.len() - c.at;
        return Err(MetaError::Malformed(format!("{left} trailing bytes")).into());
    }
    Ok(())
}

/// Decodes and checks one namespace operation.
fn decode_op(c: &mut impl Take) -> Result<NsOp, MetaError> {
    Ok(match c.u8()? {
        OP_PUT => {
            let path = c.path()?;
            let entry = match c.u8()? {
                ENTRY_DIR => Entry::Dir {
                    mode: c.u32()?,
                    uid: c.u32()?,
                    gid: c.u32()?,
                },
                ENTRY_FILE => Entry::File {
                    id: c.u64()?,
                    mode: c.u32()?,
                    uid: c.u32()?,
                    gid: c.u32()?,
                },
                ENTRY_SYMLINK => {
                    let target = c.bytes()?;
                    if let Err(why) = check_symlink_target(&target) {
                        return Err(MetaError::UnsafePath(path, why.to_string()));
                    }
                    Entry::Symlink {
                        target,
                        uid: c.u32()?,
                        gid: c.u32()?,
                    }
                }
                k => return Err(MetaError::Malformed(format!("unknown entry kind {k}"))),
            };
            NsOp::Put { path, entry }
        }
        OP_REMOVE => NsOp::Remove { path: c.path()? },
        OP_SET_SIZE => NsOp::SetSize {
            id: c.u64()?,
            size: c.u64()?,
        },
        k => return Err(MetaError::Malformed(format!("unknown op kind {k}"))),
    })
}

/// Decodes and checks one extent row.
fn decode_extent(c: &mut impl Take) -> Result<MetaExtent, MetaError> {
    let id = c.u64()?;
    let offset = c.u64()?;
    let e = match c.u8()? {
        EXT_ZERO => MetaExtent::Zero {
            id,
            offset,
            len: c.u64()?,
        },
        EXT_DATA => {
            let raw_len = c.u64()?;
            let hash = c.hash()?;
            let codec = match c.u8()? {
                0 => Codec::Raw,
                1 => Codec::Zstd,
                k => return Err(MetaError::Malformed(format!("unknown codec {k}"))),
            };
            let p = PayloadRef {
                seg: c.u64()?,
                offset: c.u64()?,
                stored_len: c.u64()?,
                raw_len,
                codec,
                hash,
            };
            if raw_len == 0 || raw_len > MAX_PAYLOAD_RAW {
                return Err(MetaError::Malformed(format!(
                    "payload raw length {raw_len} outside 1..={MAX_PAYLOAD_RAW}"
                )));
            }
            let body = p.stored_len.checked_sub(table_len(raw_len));
            if codec == Codec::Raw && body != Some(raw_len) {
                return Err(MetaError::Malformed(
                    "raw payload with stored length != table + raw length".into(),
                ));
            }
            if codec == Codec::Zstd && !body.is_some_and(|b| b > 0 && b <= raw_len) {
                return Err(MetaError::Malformed(
                    "zstd payload not smaller than its raw bytes".into(),
                ));
            }
            MetaExtent::Data {
                id,
                offset,
                payload: p,
            }
        }
        k => return Err(MetaError::Malformed(format!("unknown extent kind {k}"))),
    };
    if offset.checked_add(e.len()).is_none() {
        return Err(MetaError::Malformed(format!(
            "extent of file id {id} at {offset} overflows"
        )));
    }
    Ok(e)
}

/// A metadata block that decodes badly.
#[derive(Debug)]
pub enum MetaError {
    Malformed(String),
    UnsafePath(Vec<u8>, String),
}

/// Where a decoder takes its bytes from: a block in memory ([`Cursor`]) or read from a
/// segment as it goes ([`read::BlockReader`]).
trait Take {
    /// The next `n` bytes of the block.
    fn take(&mut self, n: usize) -> Result<&[u8], MetaError>;

    fn u8(&mut self) -> Result<u8, MetaError> {
        Ok(self.take(1)?[0])
    }
    fn u32(&mut self) -> Result<u32, MetaError> {
        Ok(u32::from_le_bytes(self.take(4)?.try_into().unwrap()))
    }
    fn u64(&mut self) -> Result<u64, MetaError> {
        Ok(u64::from_le_bytes(self.take(8)?.try_into().unwrap()))
    }
    fn hash(&mut self) -> Result<[u8; 32], MetaError> {
        Ok(self.take(32)?.try_into().unwrap())
    }
    fn bytes(&mut self) -> Result<Vec<u8>, MetaError> {
        let n = self.u32()? as usize;
        Ok(self.take(n)?.to_vec())
    }
    fn path(&mut self) -> Result<Vec<u8>, MetaError> {
        let p = self.bytes()?;
        if let Err(why) = check_path(&p) {
            return Err(MetaError::UnsafePath(p, why.to_string()));
        }
        Ok(p)
    }
}

struct Cursor<'a> {
    b: &'a [u8],
    at: usize,
}

impl Take for Cursor<'_> {
    fn take(&mut self, n: usize) -> Result<&[u8], MetaError> {
        if self.b.len() - self.at < n {
            return Err(MetaError::Malformed("metadata block ends early".into()));
        }
        let s = &self.b[self.at..self.at + n];
        self.at += n;
        Ok(s)
    }
}
