//! A record's metadata block decoded as it is read from its segment, item by item: opening a
//! log whose baseline record names 10^6 files held the whole block (176 MiB) and its decoded
//! `Meta` (234 MiB) at once.

use std::fs::File;
use std::os::unix::fs::FileExt;

use super::{MetaError, Take, decode_extent, decode_op};
use crate::format::MetaExtent;
use crate::record::NsOp;

/// Bytes read from the segment at a time.
const CHUNK: usize = 1 << 20;

/// One item of a metadata block, in block order: every operation, then every extent.
pub(crate) enum Item {
    Op(NsOp),
    Extent(MetaExtent),
}

/// Why a streamed block could not be decoded.
#[derive(Debug)]
pub(crate) enum ReadError {
    Meta(MetaError),
    Io(std::io::Error),
}

/// An error while a streamed block is decoded ([`ReadError`]) or of what its items are handed
/// to (`E`).
pub(crate) enum StreamErr<E> {
    Read(ReadError),
    Item(E),
}

impl<E> From<ReadError> for StreamErr<E> {
    fn from(e: ReadError) -> StreamErr<E> {
        StreamErr::Read(e)
    }
}

impl From<MetaError> for ReadError {
    fn from(e: MetaError) -> ReadError {
        ReadError::Meta(e)
    }
}

/// The bytes `at..at + len` of a segment, read a chunk at a time.
struct BlockReader<'f> {
    file: &'f File,
    /// Where the next read from the file starts, and the block's end.
    next: u64,
    end: u64,
    buf: Vec<u8>,
    /// Bytes of `buf` already taken.
    pos: usize,
    /// The first read error (reported as such, not as a malformed block).
    io: Option<std::io::Error>,
}

impl Take for BlockReader<'_> {
    fn take(&mut self, n: usize) -> Result<&[u8], MetaError> {
        let held = self.buf.len() - self.pos;
        if held < n {
            let short = || MetaError::Malformed("metadata block ends early".into());
            if (n - held) as u64 > self.end - self.next {
                return Err(short());
            }
            self.buf.drain(..self.pos);
            self.pos = 0;
            // At least what is missing (an item longer than a chunk: a long path), at most
            // what the block has left.
            let want = ((n - held).max(CHUNK) as u64).min(self.end - self.next) as usize;
            let from = self.buf.len();
            self.buf.resize(from + want, 0);
            if let Err(e) = self.file.read_exact_at(&mut self.buf[from..], self.next) {
                self.io = Some(e);
                return Err(MetaError::Malformed(
                    "the metadata block could not be read".into(),
                ));
            }
            self.next += want as u64;
        }
        let s = &self.buf[self.pos..self.pos + n];
        self.pos += n;
        Ok(s)
    }
}

/// Decodes the metadata block at `at..at + len` of `file` item by item, handing each to
/// `each`, with the same checks as [`crate::format::Meta::decode`]. Memory: a chunk, and the
/// item at hand.
pub(crate) fn for_each_item<E: From<ReadError>>(
    file: &File,
    at: u64,
    len: u64,
    mut each: impl FnMut(Item) -> Result<(), E>,
) -> Result<(), E> {
    let mut r = BlockReader {
        file,
        next: at,
        end: at + len,
        buf: Vec::new(),
        pos: 0,
        io: None,
    };
    let fail = |r: &mut BlockReader, e: MetaError| match r.io.take() {
        Some(io) => E::from(ReadError::Io(io)),
        None => E::from(ReadError::Meta(e)),
    };
    let n_ops = r.u32().map_err(|e| fail(&mut r, e))?;
    for _ in 0..n_ops {
        let op = decode_op(&mut r).map_err(|e| fail(&mut r, e))?;
        each(Item::Op(op))?;
    }
    let n_ext = r.u32().map_err(|e| fail(&mut r, e))?;
    for _ in 0..n_ext {
        let e = decode_extent(&mut r).map_err(|e| fail(&mut r, e))?;
        each(Item::Extent(e))?;
    }
    let left = (r.buf.len() - r.pos) as u64 + (r.end - r.next);
    if left != 0 {
        let e = MetaError::Malformed(format!("{left} trailing bytes"));
        return Err(E::from(ReadError::Meta(e)));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::io::Write;

    use super::*;
    use crate::format::{Codec, Meta, PayloadRef};
    use crate::record::Entry;

    fn streamed(file: &File, at: u64, len: u64) -> Result<Meta, ReadError> {
        let mut m = Meta::default();
        for_each_item(file, at, len, |i| {
            match i {
                Item::Op(op) => m.ops.push(op),
                Item::Extent(e) => m.extents.push(e),
            }
            Ok::<(), ReadError>(())
        })?;
        Ok(m)
    }

    /// Streamed, a block decodes to what `Meta::decode` gives, across chunk boundaries and
    /// with an item longer than a chunk; a cut or padded block is refused as malformed.
    #[test]
    fn streamed_decode_is_meta_decode() {
        let mut meta = Meta::default();
        for i in 0..30_000u64 {
            meta.ops.push(NsOp::Put {
                path: format!("d/{i:08}").into_bytes(),
                entry: Entry::File {
                    id: i,
                    mode: 0o600,
                    uid: 0,
                    gid: 0,
                },
            });
            meta.extents.push(MetaExtent::Data {
                id: i,
                offset: 0,
                payload: PayloadRef {
                    seg: 1,
                    offset: 32 + i * 100,
                    stored_len: 4096 + 16,
                    raw_len: 4096,
                    codec: Codec::Raw,
                    hash: [7; 32],
                },
            });
        }
        // A symlink whose target is longer than a chunk.
        meta.ops.push(NsOp::Put {
            path: b"long".to_vec(),
            entry: Entry::Symlink {
                target: vec![b'a'; CHUNK + 5],
                uid: 0,
                gid: 0,
            },
        });
        let block = meta.encode();
        assert!(block.len() > 3 * CHUNK);
        let mut f = tempfile::tempfile().unwrap();
        f.write_all(b"0123456789").unwrap();
        f.write_all(&block).unwrap();
        f.write_all(b"tail").unwrap();
        let len = block.len() as u64;
        assert_eq!(
            streamed(&f, 10, len).unwrap(),
            Meta::decode(&block).unwrap()
        );
        for (at, len) in [(10, len - 1), (10, len + 4)] {
            match streamed(&f, at, len) {
                Err(ReadError::Meta(MetaError::Malformed(_))) => {}
                other => panic!("{len}: {:?}", other.map(|m| m.ops.len())),
            }
        }
    }
}
