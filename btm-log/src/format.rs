//! The on-disk layout, byte by byte. `docs/FORMAT.md` is the specification; this file is its
//! implementation. All integers are little-endian.

use super::record::{FileId, NsOp};

/// The format version written into every new segment header and record header.
///
/// Version 2 puts a record's payloads before its metadata (header, payloads, metadata, trailer),
/// so a writer streams payloads to their final offsets before it knows how many extents the
/// record has; version 1 put the metadata first. Both are read.
pub const FORMAT_VERSION: u16 = 2;
/// The oldest format version this code still reads.
pub const OLDEST_FORMAT_VERSION: u16 = 1;

fn known_version(v: u16) -> bool {
    (OLDEST_FORMAT_VERSION..=FORMAT_VERSION).contains(&v)
}

pub const SEG_MAGIC: [u8; 8] = *b"btm.seg\n";
pub const REC_MAGIC: [u8; 8] = *b"btm.rec\n";
pub const END_MAGIC: [u8; 8] = *b"btm.end\n";

pub const SEG_HEADER_LEN: u64 = 32;
pub const REC_HEADER_LEN: u64 = 128;
pub const TRAILER_LEN: u64 = 48;

/// Largest raw payload a reader accepts (the writer cuts data into chunks of at most
/// `LogOptions::chunk_size`, 1 MiB by default). Bounds memory when reading a hostile log.
pub const MAX_PAYLOAD_RAW: u64 = 64 << 20;

/// Every stored payload starts with a table of `TABLE_ENTRY`-byte truncated blake3 hashes, one
/// per `TABLE_BLOCK` bytes of its raw data, so that replay can compare part of a payload with a
/// file without reading the payload.
pub const TABLE_BLOCK: u64 = 4096;
pub const TABLE_ENTRY: u64 = 16;

/// Bytes of the block table of a payload of `raw_len` raw bytes.
pub fn table_len(raw_len: u64) -> u64 {
    raw_len.div_ceil(TABLE_BLOCK) * TABLE_ENTRY
}

/// The block table of raw bytes.
pub fn block_table(raw: &[u8]) -> Vec<u8> {
    let mut t = Vec::with_capacity(table_len(raw.len() as u64) as usize);
    for block in raw.chunks(TABLE_BLOCK as usize) {
        t.extend_from_slice(&blake3::hash(block).as_bytes()[..TABLE_ENTRY as usize]);
    }
    t
}

/// Payload codecs (of the bytes after the block table).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Codec {
    /// Stored as is (used when zstd does not make it smaller).
    Raw = 0,
    /// One zstd frame.
    Zstd = 1,
}

/// Where a payload lives and what it holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct PayloadRef {
    /// Segment number (the `<n>` of `seg-<n>.btm`).
    pub seg: u64,
    /// Absolute offset of the stored bytes in that segment file.
    pub offset: u64,
    /// Length of the stored bytes: block table, then the (possibly compressed) data.
    pub stored_len: u64,
    /// Length of the raw bytes.
    pub raw_len: u64,
    pub codec: Codec,
    /// blake3 of the raw bytes.
    pub hash: [u8; 32],
}

impl PayloadRef {
    /// Stands in for a payload whose location is not known yet: metadata has a fixed size per
    /// extent, so its length can be computed before payloads are placed.
    pub(crate) const PLACEHOLDER: PayloadRef = PayloadRef {
        seg: 0,
        offset: 0,
        stored_len: 0,
        raw_len: 0,
        codec: Codec::Raw,
        hash: [0; 32],
    };
}

/// One row of a record's extent table.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum MetaExtent {
    Zero {
        id: FileId,
        offset: u64,
        len: u64,
    },
    Data {
        id: FileId,
        offset: u64,
        payload: PayloadRef,
    },
}

impl MetaExtent {
    pub fn id(&self) -> FileId {
        match self {
            MetaExtent::Zero { id, .. } | MetaExtent::Data { id, .. } => *id,
        }
    }
    pub fn offset(&self) -> u64 {
        match self {
            MetaExtent::Zero { offset, .. } | MetaExtent::Data { offset, .. } => *offset,
        }
    }
    pub fn len(&self) -> u64 {
        match self {
            MetaExtent::Zero { len, .. } => *len,
            MetaExtent::Data { payload, .. } => payload.raw_len,
        }
    }

    /// True for a row of no bytes.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// A record's metadata block: namespace operations, then the extent table.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Meta {
    pub ops: Vec<NsOp>,
    pub extents: Vec<MetaExtent>,
}

fn check8(bytes: &[u8]) -> [u8; 8] {
    let h = blake3::hash(bytes);
    let mut out = [0u8; 8];
    out.copy_from_slice(&h.as_bytes()[..8]);
    out
}

fn u16_at(b: &[u8], at: usize) -> u16 {
    u16::from_le_bytes(b[at..at + 2].try_into().unwrap())
}
fn u32_at(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(b[at..at + 4].try_into().unwrap())
}
fn u64_at(b: &[u8], at: usize) -> u64 {
    u64::from_le_bytes(b[at..at + 8].try_into().unwrap())
}
fn hash_at(b: &[u8], at: usize) -> [u8; 32] {
    b[at..at + 32].try_into().unwrap()
}

/// Why a header could not be decoded.
#[derive(Debug, PartialEq, Eq)]
pub enum HeaderError {
    /// Not a header at all: wrong magic, failed check, impossible lengths. At the end of a log,
    /// this is a torn tail.
    Garbage(&'static str),
    /// The magic is right but the version is one this code does not know.
    Version(u16),
}

/// Segment header (32 bytes).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SegHeader {
    pub seg: u64,
}

impl SegHeader {
    pub fn encode(&self) -> [u8; SEG_HEADER_LEN as usize] {
        let mut b = [0u8; SEG_HEADER_LEN as usize];
        b[0..8].copy_from_slice(&SEG_MAGIC);
        b[8..10].copy_from_slice(&FORMAT_VERSION.to_le_bytes());
        b[10..12].copy_from_slice(&(SEG_HEADER_LEN as u16).to_le_bytes());
        // 12..16 flags: 0
        b[16..24].copy_from_slice(&self.seg.to_le_bytes());
        let c = check8(&b[0..24]);
        b[24..32].copy_from_slice(&c);
        b
    }

    pub fn decode(b: &[u8]) -> Result<SegHeader, HeaderError> {
        if b.len() < SEG_HEADER_LEN as usize {
            return Err(HeaderError::Garbage("incomplete segment header"));
        }
        if b[0..8] != SEG_MAGIC {
            return Err(HeaderError::Garbage("bad segment magic"));
        }
        if check8(&b[0..24]) != b[24..32] {
            return Err(HeaderError::Garbage("segment header check mismatch"));
        }
        let version = u16_at(b, 8);
        if !known_version(version) {
            return Err(HeaderError::Version(version));
        }
        if u16_at(b, 10) as u64 != SEG_HEADER_LEN || u32_at(b, 12) != 0 {
            return Err(HeaderError::Garbage(
                "unexpected segment header length or flags",
            ));
        }
        Ok(SegHeader { seg: u64_at(b, 16) })
    }
}

/// Record header (128 bytes).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RecHeader {
    /// The record's layout: 1 (metadata before payloads) or 2 (payloads before metadata).
    pub version: u16,
    pub height: u64,
    pub time_unix_ms: u64,
    pub meta_len: u64,
    pub payload_len: u64,
    /// blake3 of the previous record (zeros for the first record of a log).
    pub prev_hash: [u8; 32],
    /// blake3 of this record's metadata block.
    pub meta_hash: [u8; 32],
}

impl RecHeader {
    /// Header + metadata + payload + trailer.
    pub fn record_len(&self) -> Option<u64> {
        REC_HEADER_LEN
            .checked_add(self.meta_len)?
            .checked_add(self.payload_len)?
            .checked_add(TRAILER_LEN)
    }

    /// Offset of the payload section from the start of the record.
    pub fn payload_start(&self) -> u64 {
        match self.version {
            1 => REC_HEADER_LEN + self.meta_len,
            _ => REC_HEADER_LEN,
        }
    }

    /// Offset of the metadata block from the start of the record.
    pub fn meta_start(&self) -> u64 {
        match self.version {
            1 => REC_HEADER_LEN,
            _ => REC_HEADER_LEN + self.payload_len,
        }
    }

    pub fn encode(&self) -> [u8; REC_HEADER_LEN as usize] {
        let mut b = [0u8; REC_HEADER_LEN as usize];
        b[0..8].copy_from_slice(&REC_MAGIC);
        b[8..10].copy_from_slice(&self.version.to_le_bytes());
        b[10..12].copy_from_slice(&(REC_HEADER_LEN as u16).to_le_bytes());
        // 12..16 flags: 0
        b[16..24].copy_from_slice(&self.height.to_le_bytes());
        b[24..32].copy_from_slice(&self.time_unix_ms.to_le_bytes());
        b[32..40].copy_from_slice(&self.meta_len.to_le_bytes());
        b[40..48].copy_from_slice(&self.payload_len.to_le_bytes());
        b[48..80].copy_from_slice(&self.prev_hash);
        b[80..112].copy_from_slice(&self.meta_hash);
        // 112..120 reserved: 0
        let c = check8(&b[0..120]);
        b[120..128].copy_from_slice(&c);
        b
    }

    pub fn decode(b: &[u8]) -> Result<RecHeader, HeaderError> {
        if b.len() < REC_HEADER_LEN as usize {
            return Err(HeaderError::Garbage("incomplete record header"));
        }
        if b[0..8] != REC_MAGIC {
            return Err(HeaderError::Garbage("bad record magic"));
        }
        if check8(&b[0..120]) != b[120..128] {
            return Err(HeaderError::Garbage("record header check mismatch"));
        }
        let version = u16_at(b, 8);
        if !known_version(version) {
            return Err(HeaderError::Version(version));
        }
        if u16_at(b, 10) as u64 != REC_HEADER_LEN || u32_at(b, 12) != 0 || u64_at(b, 112) != 0 {
            return Err(HeaderError::Garbage(
                "unexpected record header length, flags or reserved bytes",
            ));
        }
        let h = RecHeader {
            version,
            height: u64_at(b, 16),
            time_unix_ms: u64_at(b, 24),
            meta_len: u64_at(b, 32),
            payload_len: u64_at(b, 40),
            prev_hash: hash_at(b, 48),
            meta_hash: hash_at(b, 80),
        };
        if h.record_len().is_none() {
            return Err(HeaderError::Garbage("record length overflows"));
        }
        Ok(h)
    }
}

/// Record trailer (48 bytes).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Trailer {
    pub record_len: u64,
    /// The record hash (see [`RecordHash`]).
    pub hash: [u8; 32],
}

/// The record hash, fed in the same order for every version: header, metadata, then the
/// payload section's bytes in file order.
///
/// Version 1: blake3(header ‖ metadata ‖ payload section). Version 2: blake3(header ‖
/// blake3(payload section)); the metadata is covered by the header's `meta_hash`. A version-2
/// writer hashes payloads as it streams them, before the header exists.
pub enum RecordHash {
    V1(blake3::Hasher),
    V2 {
        header: [u8; REC_HEADER_LEN as usize],
        payloads: blake3::Hasher,
    },
}

impl RecordHash {
    pub fn new(header: &RecHeader) -> RecordHash {
        let encoded = header.encode();
        match header.version {
            1 => {
                let mut h = blake3::Hasher::new();
                h.update(&encoded);
                RecordHash::V1(h)
            }
            _ => RecordHash::V2 {
                header: encoded,
                payloads: blake3::Hasher::new(),
            },
        }
    }

    pub fn meta(&mut self, meta: &[u8]) {
        if let RecordHash::V1(h) = self {
            h.update(meta);
        }
    }

    pub fn payload(&mut self, bytes: &[u8]) {
        match self {
            RecordHash::V1(h) => h.update(bytes),
            RecordHash::V2 { payloads, .. } => payloads.update(bytes),
        };
    }

    pub fn finish(self) -> [u8; 32] {
        match self {
            RecordHash::V1(h) => *h.finalize().as_bytes(),
            RecordHash::V2 { header, payloads } => v2_hash(&header, payloads.finalize().as_bytes()),
        }
    }
}

/// A version-2 record hash from its encoded header and the blake3 of its payload section.
pub fn v2_hash(header: &[u8; REC_HEADER_LEN as usize], payloads: &[u8; 32]) -> [u8; 32] {
    let mut h = blake3::Hasher::new();
    h.update(header);
    h.update(payloads);
    *h.finalize().as_bytes()
}

impl Trailer {
    pub fn encode(&self) -> [u8; TRAILER_LEN as usize] {
        let mut b = [0u8; TRAILER_LEN as usize];
        b[0..8].copy_from_slice(&END_MAGIC);
        b[8..16].copy_from_slice(&self.record_len.to_le_bytes());
        b[16..48].copy_from_slice(&self.hash);
        b
    }

    pub fn decode(b: &[u8]) -> Result<Trailer, HeaderError> {
        if b.len() < TRAILER_LEN as usize {
            return Err(HeaderError::Garbage("incomplete trailer"));
        }
        if b[0..8] != END_MAGIC {
            return Err(HeaderError::Garbage("bad trailer magic"));
        }
        Ok(Trailer {
            record_len: u64_at(b, 8),
            hash: hash_at(b, 16),
        })
    }
}

pub use crate::meta::MetaError;

/// `len` bytes of extent data at `offset`, cut into pieces at multiples of `chunk` (absolute
/// file offsets, so the same bytes at the same place always make the same payloads).
pub fn split_range(offset: u64, len: usize, chunk: u64) -> Vec<(u64, std::ops::Range<usize>)> {
    let mut out = Vec::new();
    let mut at = 0usize;
    while at < len {
        let abs = offset + at as u64;
        let room = chunk - abs % chunk;
        let n = (room as usize).min(len - at);
        out.push((abs, at..at + n));
        at += n;
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::record::Entry;

    #[test]
    fn headers_roundtrip() {
        let s = SegHeader { seg: 7 };
        assert_eq!(SegHeader::decode(&s.encode()).unwrap(), s);
        let h = RecHeader {
            version: FORMAT_VERSION,
            height: 42,
            time_unix_ms: 1_700_000_000_000,
            meta_len: 99,
            payload_len: 1234,
            prev_hash: [3; 32],
            meta_hash: [9; 32],
        };
        let mut e = h.encode();
        assert_eq!(RecHeader::decode(&e).unwrap(), h);
        e[20] ^= 1;
        assert!(matches!(
            RecHeader::decode(&e),
            Err(HeaderError::Garbage(_))
        ));
        let t = Trailer {
            record_len: 5,
            hash: [1; 32],
        };
        assert_eq!(Trailer::decode(&t.encode()).unwrap(), t);
    }

    #[test]
    fn meta_roundtrip() {
        let m = Meta {
            ops: vec![
                NsOp::Put {
                    path: b"d".to_vec(),
                    entry: Entry::Dir {
                        mode: 0o755,
                        uid: 1,
                        gid: 2,
                    },
                },
                NsOp::Put {
                    path: b"d/f \n\xff".to_vec(),
                    entry: Entry::File {
                        id: 5,
                        mode: 0o644,
                        uid: 0,
                        gid: 0,
                    },
                },
                NsOp::Put {
                    path: b"l".to_vec(),
                    entry: Entry::Symlink {
                        target: b"/etc".to_vec(),
                        uid: 0,
                        gid: 0,
                    },
                },
                NsOp::SetSize { id: 5, size: 10 },
                NsOp::Remove {
                    path: b"l".to_vec(),
                },
            ],
            extents: vec![
                MetaExtent::Zero {
                    id: 5,
                    offset: 0,
                    len: 3,
                },
                MetaExtent::Data {
                    id: 5,
                    offset: 3,
                    payload: PayloadRef {
                        seg: 1,
                        offset: 500,
                        stored_len: 20,
                        raw_len: 4,
                        codec: Codec::Raw,
                        hash: [7; 32],
                    },
                },
            ],
        };
        let b = m.encode();
        assert_eq!(b.len(), m.encoded_len());
        assert_eq!(Meta::decode(&b).unwrap(), m);
        for cut in 0..b.len() {
            assert!(Meta::decode(&b[..cut]).is_err());
        }
    }

    #[test]
    fn split() {
        let v = split_range(3, 10, 4);
        assert_eq!(v, vec![(3, 0..1), (4, 1..5), (8, 5..9), (12, 9..10)]);
        assert!(split_range(0, 0, 4).is_empty());
    }
}
