//! Small record builders for tests, here and in crates built on the log (feature `testing`).

use crate::{CutRecord, Entry, ExtentBytes, ExtentData, NsOp};

/// Puts a regular file with `id` at `path` (mode 0644, root-owned).
pub fn file_op(path: &[u8], id: u64) -> NsOp {
    NsOp::Put {
        path: path.to_vec(),
        entry: Entry::File {
            id,
            mode: 0o644,
            uid: 0,
            gid: 0,
        },
    }
}

/// Height `height`: file `f<id>` holding `data`.
pub fn record(height: u64, id: u64, data: Vec<u8>) -> CutRecord {
    let name = format!("f{id}").into_bytes();
    CutRecord {
        height,
        time_unix_ms: height,
        ops: vec![
            file_op(&name, id),
            NsOp::SetSize {
                id,
                size: data.len() as u64,
            },
        ],
        extents: vec![ExtentData {
            id,
            offset: 0,
            bytes: ExtentBytes::Data(data),
        }],
    }
}

/// Deterministic incompressible bytes (xorshift).
pub fn noise(seed: u64, n: usize) -> Vec<u8> {
    let mut x = seed | 1;
    (0..n)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

/// One record as whoever can write the log directory could write it: any metadata and payload
/// bytes, with every hash right. What such a record may hold is decided by the reader's checks
/// alone, which is what the forged-log fuzz target and the hostile-log tests exercise.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Forged {
    pub height: u64,
    pub payloads: Vec<u8>,
    pub meta: Vec<u8>,
}

/// Segment 1 (`seg-00000001.btm`) holding `records` in the current format, each chained to the
/// one before it, the first to nothing.
pub fn forged_segment(records: &[Forged]) -> Vec<u8> {
    use crate::format::{FORMAT_VERSION, RecHeader, SegHeader, Trailer, v2_hash};
    let mut out = SegHeader { seg: 1 }.encode().to_vec();
    let mut prev_hash = [0u8; 32];
    for r in records {
        let header = RecHeader {
            version: FORMAT_VERSION,
            height: r.height,
            time_unix_ms: r.height,
            meta_len: r.meta.len() as u64,
            payload_len: r.payloads.len() as u64,
            prev_hash,
            meta_hash: *blake3::hash(&r.meta).as_bytes(),
        };
        let encoded = header.encode();
        let hash = v2_hash(&encoded, blake3::hash(&r.payloads).as_bytes());
        let record_len = header.record_len().expect("test records are small");
        out.extend_from_slice(&encoded);
        out.extend_from_slice(&r.payloads);
        out.extend_from_slice(&r.meta);
        out.extend_from_slice(&Trailer { record_len, hash }.encode());
        prev_hash = hash;
    }
    out
}

/// The records of a version-2 segment as [`Forged`] parts (stops at the first that does not
/// decode): real records to start fuzzing from.
pub fn split_segment(seg: &[u8]) -> Vec<Forged> {
    use crate::format::{REC_HEADER_LEN, RecHeader, SEG_HEADER_LEN, TRAILER_LEN};
    let mut out = Vec::new();
    let mut p = SEG_HEADER_LEN as usize;
    while let Some(Ok(h)) = seg.get(p..).map(RecHeader::decode) {
        let Some(len) = h.record_len().map(|l| l as usize) else {
            break;
        };
        if h.version < 2 || p + len > seg.len() {
            break;
        }
        let ps = p + REC_HEADER_LEN as usize;
        let ms = ps + h.payload_len as usize;
        out.push(Forged {
            height: h.height,
            payloads: seg[ps..ms].to_vec(),
            meta: seg[ms..p + len - TRAILER_LEN as usize].to_vec(),
        });
        p += len;
    }
    out
}

/// Decodes `b` as each fixed-size header of the format (segment header, record header,
/// trailer), checking that whatever decodes encodes back to the same bytes.
pub fn decode_headers(b: &[u8]) {
    use crate::format::{RecHeader, SegHeader, Trailer};
    if let Ok(h) = SegHeader::decode(b) {
        assert_eq!(SegHeader::decode(&h.encode()), Ok(h));
    }
    if let Ok(h) = RecHeader::decode(b) {
        assert_eq!(&h.encode()[..], &b[..h.encode().len()]);
    }
    if let Ok(t) = Trailer::decode(b) {
        assert_eq!(&t.encode()[..], &b[..t.encode().len()]);
    }
}
