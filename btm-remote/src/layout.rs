//! Object names and encodings of an offsite copy ("Remote layout" in docs/FORMAT.md).
//!
//! Payload objects and record objects are immutable and named by their blake3, so they dedup
//! across heights and volumes and every download can be checked against its own name.
//! Pointers (one per kept height of a volume) are tiny JSON objects whose name carries the
//! height and the record they point at; they are the only thing retention deletes.

use object_store::path::Path as ObjPath;
use serde::{Deserialize, Serialize};

use crate::pack::PackIndex;
use btm_log::{Codec, PayloadRef, hex, table_len};

pub const OBJ_MAGIC: &[u8; 8] = b"btm.obj\n";
pub const OBJ_HEADER_LEN: u64 = 17;
pub const REC_MAGIC: &[u8; 8] = b"btm.rix\n";
/// Record object version of layouts 1 and 2 (payloads as loose objects).
pub const REC_VERSION: u16 = 1;
/// Record object version of layout 3: a pack index follows the metadata block.
pub const REC_VERSION_PACKED: u16 = 2;
/// Record object version of layout 4: version 2's metadata block and pack index, compressed
/// together (one zstd frame). Each index row repeats a hash the metadata holds: compressed, the
/// index costs a few bytes a payload, and the metadata about half its size.
pub const REC_VERSION_ZSTD: u16 = 3;
pub const REC_HEADER_LEN: usize = 104;
/// Pointer JSON `format`.
pub const POINTER_FORMAT: u32 = 1;
/// The layout marker object at the store's root: present only in keyed stores (a store without
/// it is layout 1, plaintext).
pub const MARKER: &str = "layout.json";
/// Layout of a store written with a remote key (sealed objects, keyed names, signed pointers).
pub const LAYOUT_KEYED: u32 = 2;
/// Layout with packs (plaintext or keyed, as its marker says).
pub const LAYOUT_PACKED: u32 = 3;
/// Layout 3 with compressed record objects ([`REC_VERSION_ZSTD`]): what new stores get.
pub const LAYOUT_ZSTD_RECORDS: u32 = 4;
/// zstd level of compressed record objects (they are a small part of a push's bytes).
const REC_ZSTD_LEVEL: i32 = 3;

/// The largest payload a log stores (btm-log's limit).
const MAX_PAYLOAD_RAW: u64 = 64 << 20;
/// The largest record object accepted: its metadata block, for a height that changed about
/// ten million extents or paths.
const MAX_RECORD_OBJECT: u64 = 1 << 30;
/// Pointers, owners and locks are a few hundred bytes of JSON.
const MAX_SMALL_OBJECT: u64 = 1 << 20;

/// The most bytes an object at `p` can hold when btm wrote it: larger is damage or a forgery,
/// and is refused before its body is downloaded.
pub fn max_object_len(p: &ObjPath) -> u64 {
    let s = p.as_ref();
    if s.starts_with("objects/") {
        max_payload_object_len() + crate::crypto::SEAL_OVERHEAD as u64
    } else if s.starts_with("packs/") {
        crate::pack::max_pack_len()
    } else if s.starts_with("records/") {
        MAX_RECORD_OBJECT
    } else {
        MAX_SMALL_OBJECT
    }
}

/// The largest payload object: header, block table, and zstd's worst case over
/// incompressible data.
pub fn max_payload_object_len() -> u64 {
    OBJ_HEADER_LEN
        + table_len(MAX_PAYLOAD_RAW)
        + MAX_PAYLOAD_RAW
        + MAX_PAYLOAD_RAW / 128
        + (1 << 20)
}

fn fanout(dir: &str, key: &[u8; 32]) -> ObjPath {
    let h = hex(key);
    ObjPath::from(format!("{dir}/{}/{h}", &h[..2]))
}

/// `objects/<2 hex>/<64 hex>`: the payload whose raw bytes hash to `hash`.
pub fn object_path(hash: &[u8; 32]) -> ObjPath {
    fanout("objects", hash)
}

/// `records/<2 hex>/<64 hex>`: the record object whose bytes hash to `key`.
pub fn record_path(key: &[u8; 32]) -> ObjPath {
    fanout("records", key)
}

/// `volumes/<name>/`.
pub fn volume_dir(name: &str) -> ObjPath {
    ObjPath::from(format!("volumes/{name}"))
}

/// `volumes/<name>/owner`: which log pushes to this volume name.
pub fn owner_path(name: &str) -> ObjPath {
    ObjPath::from(format!("volumes/{name}/owner"))
}

/// `volumes/<name>/heights/`.
pub fn heights_dir(name: &str) -> ObjPath {
    ObjPath::from(format!("volumes/{name}/heights"))
}

/// `volumes/<name>/heights/<height, 20 digits>-<record key>.json`.
pub fn pointer_path(name: &str, height: u64, record: &[u8; 32]) -> ObjPath {
    ObjPath::from(format!(
        "volumes/{name}/heights/{height:020}-{}.json",
        hex(record)
    ))
}

/// `volumes/<name>/pins/`: the heights the volume's log pinned (`btm-agent pin`).
pub fn pins_dir(name: &str) -> ObjPath {
    ObjPath::from(format!("volumes/{name}/pins"))
}

/// `volumes/<name>/pins/<height, 20 digits>.json` (sealed in a keyed store, like the owner).
pub fn pin_path(name: &str, height: u64) -> ObjPath {
    ObjPath::from(format!("volumes/{name}/pins/{height:020}.json"))
}

/// The height a pin's file name carries.
pub fn parse_pin_name(file: &str) -> Option<u64> {
    let h = file.strip_suffix(".json")?;
    (h.len() == 20 && h.bytes().all(|b| b.is_ascii_digit())).then(|| h.parse().ok())?
}

/// A pin object (JSON): the volume's log pinned `height` when the push that wrote it ran.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Pin {
    pub format: u32,
    pub height: u64,
    pub pushed_unix_ms: u64,
}

/// `volumes/<name>/heights/<height, 20 digits>-<record name>.sealed`: a pointer of a keyed
/// store (sealed and signed, not JSON on the store).
pub fn sealed_pointer_path(name: &str, height: u64, record: &[u8; 32]) -> ObjPath {
    ObjPath::from(format!(
        "volumes/{name}/heights/{height:020}-{}.sealed",
        hex(record)
    ))
}

/// Height and record key from a pointer's file name (either layout's).
pub fn parse_pointer_name(file: &str) -> Option<(u64, [u8; 32])> {
    let stem = file
        .strip_suffix(".json")
        .or_else(|| file.strip_suffix(".sealed"))?;
    let (h, k) = stem.split_once('-')?;
    if h.len() != 20 || !h.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    Some((h.parse().ok()?, parse_hex32(k)?))
}

pub fn parse_hex32(s: &str) -> Option<[u8; 32]> {
    if s.len() != 64 {
        return None;
    }
    let mut out = [0u8; 32];
    for (i, o) in out.iter_mut().enumerate() {
        *o = u8::from_str_radix(s.get(2 * i..2 * i + 2)?, 16).ok()?;
    }
    Some(out)
}

/// A volume name must be one plain path component.
pub fn check_volume_name(name: &str) -> Result<(), String> {
    let ok = !name.is_empty()
        && name.len() <= 128
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b))
        && !name.starts_with('.');
    if ok {
        Ok(())
    } else {
        Err(format!(
            "volume name {name:?} must be 1-128 characters of A-Z a-z 0-9 . _ - (not starting with \
             a dot)"
        ))
    }
}

/// A payload object is the log's stored payload (block table, then the codec's body) behind a
/// 17-byte header naming the codec and the raw length.
///
/// The 17-byte header of `p`'s object, with room for its stored bytes after it.
pub fn object_header(p: &PayloadRef) -> Vec<u8> {
    let mut b = Vec::with_capacity((OBJ_HEADER_LEN + p.stored_len) as usize);
    b.extend_from_slice(OBJ_MAGIC);
    b.push(p.codec as u8);
    b.extend_from_slice(&p.raw_len.to_le_bytes());
    b
}

/// The bytes of an object's header and block table (what a range read needs).
pub fn object_table_range(raw_len: u64) -> std::ops::Range<u64> {
    0..OBJ_HEADER_LEN + table_len(raw_len)
}

/// Parses an object's header: the [`PayloadRef`] to decode its stored bytes with (location
/// fields zero) and where those bytes start. Checks only the structure; decoding checks the hash.
pub fn decode_object_header(
    b: &[u8],
    hash: &[u8; 32],
    total_len: u64,
) -> Result<PayloadRef, String> {
    if b.len() < OBJ_HEADER_LEN as usize || &b[..8] != OBJ_MAGIC {
        return Err("not a btm payload object (bad magic)".into());
    }
    let codec = match b[8] {
        0 => Codec::Raw,
        1 => Codec::Zstd,
        c => return Err(format!("unknown codec {c}")),
    };
    let raw_len = u64::from_le_bytes(b[9..17].try_into().unwrap());
    if raw_len == 0 || raw_len > MAX_PAYLOAD_RAW {
        return Err(format!("raw length {raw_len} out of range"));
    }
    // The total comes from the listing, not the body: a forged one may be below the header.
    let stored_len = total_len.saturating_sub(OBJ_HEADER_LEN);
    if total_len < b.len() as u64 || stored_len < table_len(raw_len) {
        return Err("object shorter than its block table".into());
    }
    Ok(PayloadRef {
        seg: 0,
        offset: 0,
        stored_len,
        raw_len,
        codec,
        hash: *hash,
    })
}

/// A record object: one record of a log's chain with its metadata block, linked to the record
/// object before it. Named by its own blake3.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RecordObj {
    pub height: u64,
    pub time_unix_ms: u64,
    /// Key of the previous record object (zeros for the first).
    pub prev: [u8; 32],
    /// The source log's record hash (informational).
    pub source_hash: [u8; 32],
    /// The metadata block, in the log's format (docs/FORMAT.md).
    pub meta: Vec<u8>,
    /// Layout 3: where the payloads this record stores lie in packs (`None`: layouts 1 and 2,
    /// loose payload objects).
    pub index: Option<PackIndex>,
    /// Layout 4: the metadata block and the index are stored compressed (version 3). Only
    /// with an index.
    pub compressed: bool,
}

impl RecordObj {
    /// The whole object: [`RecordObj::encode_named`], then the pack index if any; in version
    /// 3 the header, then the metadata block and the index in one zstd frame.
    pub fn encode(&self) -> Vec<u8> {
        let mut b = self.encode_named();
        let Some(i) = &self.index else {
            return b;
        };
        if !self.compressed {
            b.extend_from_slice(&i.encode());
            return b;
        }
        let mut body = b.split_off(REC_HEADER_LEN);
        body.extend_from_slice(&i.encode());
        // The frame says its size (a reader allocates that once, or refuses it) and carries
        // zstd's checksum (the index is not under the name: damage to it is found here). In
        // memory, at a fixed level, zstd fails only on allocation.
        let mut z = zstd::stream::write::Encoder::new(b, REC_ZSTD_LEVEL).expect("zstd level");
        z.include_checksum(true).expect("zstd parameter");
        z.set_pledged_src_size(Some(body.len() as u64))
            .expect("zstd parameter");
        std::io::Write::write_all(&mut z, &body).expect("zstd compression in memory");
        z.finish().expect("zstd compression in memory")
    }

    /// The part of the object its name is the hash of: header and metadata block (in version
    /// 3, as they are before compression). The pack index is left out so that a chain's names
    /// are known before its payloads are packed (a push resumes by them); a wrong index can
    /// only point at bytes that fail their payload's blake3 (and, keyed, the whole record is
    /// sealed anyway).
    pub fn encode_named(&self) -> Vec<u8> {
        let mut b = Vec::with_capacity(REC_HEADER_LEN + self.meta.len());
        b.extend_from_slice(REC_MAGIC);
        let version = match (&self.index, self.compressed) {
            (None, _) => REC_VERSION,
            (Some(_), false) => REC_VERSION_PACKED,
            (Some(_), true) => REC_VERSION_ZSTD,
        };
        b.extend_from_slice(&version.to_le_bytes());
        b.extend_from_slice(&[0u8; 6]);
        b.extend_from_slice(&self.height.to_le_bytes());
        b.extend_from_slice(&self.time_unix_ms.to_le_bytes());
        b.extend_from_slice(&self.prev);
        b.extend_from_slice(&self.source_hash);
        b.extend_from_slice(&(self.meta.len() as u64).to_le_bytes());
        b.extend_from_slice(&self.meta);
        b
    }

    /// The part of an encoded record object its name covers (see
    /// [`RecordObj::encode_named`]); the whole object for versions 1 and 3 (compressed: not a
    /// part of it) or anything malformed.
    pub fn named_part(encoded: &[u8]) -> &[u8] {
        if encoded.len() < REC_HEADER_LEN
            || u16::from_le_bytes([encoded[8], encoded[9]]) != REC_VERSION_PACKED
        {
            return encoded;
        }
        let meta_len = u64::from_le_bytes(encoded[96..104].try_into().unwrap());
        usize::try_from(meta_len)
            .ok()
            .and_then(|m| encoded.get(..REC_HEADER_LEN.checked_add(m)?))
            .unwrap_or(encoded)
    }

    /// The object's name: blake3 of its bytes.
    pub fn key(encoded: &[u8]) -> [u8; 32] {
        *blake3::hash(encoded).as_bytes()
    }

    /// Decodes and checks a downloaded record object against the key it was fetched by.
    pub fn decode(b: &[u8], key: &[u8; 32]) -> Result<RecordObj, String> {
        RecordObj::decode_with(b, key, RecordObj::key)
    }

    /// [`RecordObj::decode`] with the store's naming (`key_of`: plain or keyed blake3).
    pub fn decode_with(
        b: &[u8],
        key: &[u8; 32],
        key_of: impl Fn(&[u8]) -> [u8; 32],
    ) -> Result<RecordObj, String> {
        if b.len() < REC_HEADER_LEN || &b[..8] != REC_MAGIC {
            if key_of(b) != *key {
                return Err("blake3 of the record object does not match its name".into());
            }
            return Err("not a btm record object (bad magic)".into());
        }
        let u64_at = |at: usize| u64::from_le_bytes(b[at..at + 8].try_into().unwrap());
        let version = u16::from_le_bytes([b[8], b[9]]);
        let meta_len = u64_at(96);
        let short = "record object shorter than its metadata length";
        let meta_end = usize::try_from(meta_len)
            .ok()
            .and_then(|m| m.checked_add(REC_HEADER_LEN));
        // Version 3: the header as stored, then the metadata and the index inflated.
        let inflated: Vec<u8>;
        let (named, rest): (&[u8], &[u8]) = match version {
            REC_VERSION => (b, &[]),
            REC_VERSION_PACKED => {
                let end = meta_end.filter(|&e| e <= b.len()).ok_or(short)?;
                b.split_at(end)
            }
            REC_VERSION_ZSTD => {
                let mut whole = b[..REC_HEADER_LEN].to_vec();
                let cap = MAX_RECORD_OBJECT - REC_HEADER_LEN as u64;
                inflate(&b[REC_HEADER_LEN..], cap, &mut whole)?;
                inflated = whole;
                let end = meta_end.filter(|&e| e <= inflated.len()).ok_or(short)?;
                inflated.split_at(end)
            }
            _ => {
                return Err(format!(
                    "record object version {version}; this btm reads {REC_VERSION} to \
                     {REC_VERSION_ZSTD}: use a newer btm"
                ));
            }
        };
        if key_of(named) != *key {
            return Err("blake3 of the record object does not match its name".into());
        }
        // Reserved for flags a later version may set: a reader that does not know them must
        // not read the object as if they were unset.
        if b[10..16] != [0u8; 6] {
            return Err("record object has reserved bytes set: use a newer btm".into());
        }
        if meta_len != (named.len() - REC_HEADER_LEN) as u64 {
            return Err("record object length does not match its metadata length".into());
        }
        let index = match version {
            REC_VERSION => None,
            _ => Some(PackIndex::decode(rest)?),
        };
        Ok(RecordObj {
            height: u64_at(16),
            time_unix_ms: u64_at(24),
            prev: b[32..64].try_into().unwrap(),
            source_hash: b[64..96].try_into().unwrap(),
            meta: named[REC_HEADER_LEN..].to_vec(),
            index,
            compressed: version == REC_VERSION_ZSTD,
        })
    }
}

/// Appends the body of a version-3 record object to `out`: exactly one zstd frame that says its
/// size, at most `cap` bytes (the largest record object btm accepts), inflated into room reserved
/// once for that size (zstd refuses a frame whose content differs from the size it says).
fn inflate(z: &[u8], cap: u64, out: &mut Vec<u8>) -> Result<(), String> {
    use std::io::Read;
    let bad = |e: std::io::Error| format!("compressed record object: {e}");
    match zstd::zstd_safe::find_frame_compressed_size(z) {
        Ok(n) if n == z.len() => {}
        _ => return Err("compressed record object is not one zstd frame".into()),
    }
    let size = match zstd::zstd_safe::get_frame_content_size(z) {
        Ok(Some(n)) if n <= cap => n,
        Ok(Some(n)) => {
            return Err(format!(
                "compressed record object inflates to {n} bytes, past {cap}: more than btm writes"
            ));
        }
        _ => return Err("compressed record object does not say its size".into()),
    };
    out.reserve_exact(size as usize);
    let start = out.len();
    zstd::stream::read::Decoder::new(z)
        .map_err(bad)?
        .single_frame()
        .take(size)
        .read_to_end(out)
        .map_err(bad)?;
    if (out.len() - start) as u64 != size {
        return Err("compressed record object is shorter than the size it says".into());
    }
    Ok(())
}

/// A kept height of a volume: which record object holds it, plus the user's tag and metadata.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Pointer {
    pub format: u32,
    pub height: u64,
    /// Hex key of the record object.
    pub record: String,
    pub time_unix_ms: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tag: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub meta: Option<serde_json::Value>,
    pub pushed_unix_ms: u64,
    /// Globs of paths whose data the push left out (`--exclude`): a restore skips them.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub excluded: Vec<String>,
}

/// `layout.json` of a keyed (layout 2) or packed (layout 3) store (plaintext JSON: it holds
/// nothing secret).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Marker {
    pub layout: u32,
    /// "xchacha20poly1305", or "none" (layout 3 without a key)
    pub sealing: String,
    /// "blake3-keyed", or "blake3"
    pub names: String,
    /// "ed25519", or "none"
    pub signatures: String,
    /// Hex ed25519 public key of the store's remote key (tells a wrong key from damage); empty
    /// without a key.
    pub public_key: String,
    /// Layout 3: "btm.pak" (payloads in packs, docs/FORMAT.md "Packs").
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub packs: Option<String>,
    pub created_unix_ms: u64,
}

/// `volumes/<name>/owner`: the identity of the log that pushes under this name.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Owner {
    pub log_id: String,
    pub host: String,
    pub created_unix_ms: u64,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn record_objects_roundtrip_and_reject_tampering() {
        let r = RecordObj {
            height: 42,
            time_unix_ms: 7,
            prev: [1; 32],
            source_hash: [2; 32],
            meta: vec![0, 0, 0, 0, 0, 0, 0, 0],
            index: None,
            compressed: false,
        };
        let b = r.encode();
        let k = RecordObj::key(&b);
        assert_eq!(RecordObj::decode(&b, &k).unwrap(), r);
        let mut bad = b.clone();
        bad[20] ^= 1;
        assert!(RecordObj::decode(&bad, &k).unwrap_err().contains("blake3"));
        assert!(RecordObj::decode(&b[..50], &RecordObj::key(&b[..50])).is_err());
        // Found by the remote_objects fuzz target: reserved bytes were ignored.
        let mut flagged = b.clone();
        flagged[13] = 14;
        let e = RecordObj::decode(&flagged, &RecordObj::key(&flagged)).unwrap_err();
        assert!(e.contains("reserved"), "{e}");
    }

    /// Layout 3: the index rides after the metadata, outside the name; a forged index is
    /// refused by its own checks, and the name still covers the metadata.
    #[test]
    fn packed_record_objects_carry_their_index() {
        let mut r = RecordObj {
            height: 3,
            time_unix_ms: 9,
            prev: [4; 32],
            source_hash: [5; 32],
            meta: vec![1, 2, 3],
            index: Some(PackIndex {
                packs: vec![[6; 32]],
                entries: vec![([7; 32], 0, 8, 4113)],
            }),
            compressed: false,
        };
        let b = r.encode();
        let k = RecordObj::key(&r.encode_named());
        assert_eq!(RecordObj::decode(&b, &k).unwrap(), r);
        assert_ne!(k, RecordObj::key(&b));
        // Same name whatever the index says (a re-pack keeps the chain).
        r.index = Some(PackIndex::default());
        assert_eq!(RecordObj::key(&r.encode_named()), k);
        let mut bad = b.clone();
        let n = bad.len();
        bad[n - 5] = 0xff; // an entry length beyond any entry
        assert!(RecordObj::decode(&bad, &k).unwrap_err().contains("pack"));
        let mut meta = b.clone();
        meta[REC_HEADER_LEN] ^= 1;
        assert!(RecordObj::decode(&meta, &k).unwrap_err().contains("blake3"));
    }

    /// Layout 4: metadata and index in one zstd frame. The name is the one the uncompressed
    /// header and metadata give; the index's hashes, which the metadata repeats, cost a few
    /// bytes each; a frame with bytes after it, or one that inflates past the cap, is refused.
    #[test]
    fn compressed_record_objects() {
        let hashes: Vec<[u8; 32]> = (0..500u32)
            .map(|i| *blake3::hash(&i.to_le_bytes()).as_bytes())
            .collect();
        // Rows shaped like the extent table's: ids, offsets, the hash, locations.
        let mut meta = Vec::new();
        for (i, h) in hashes.iter().enumerate() {
            meta.extend_from_slice(&7u64.to_le_bytes());
            meta.extend_from_slice(&(i as u64 * 4096).to_le_bytes());
            meta.extend_from_slice(h);
            meta.extend_from_slice(&(1000 + i as u64 * 3000).to_le_bytes());
        }
        let index = PackIndex {
            packs: vec![[6; 32]],
            entries: (hashes.iter().enumerate())
                .map(|(i, h)| (*h, 0, 8 + i as u64 * 3017, 3017))
                .collect(),
        };
        let mut r = RecordObj {
            height: 3,
            time_unix_ms: 9,
            prev: [4; 32],
            source_hash: [5; 32],
            meta,
            index: Some(index),
            compressed: true,
        };
        let b = r.encode();
        let k = RecordObj::key(&r.encode_named());
        assert_eq!(RecordObj::decode(&b, &k).unwrap(), r);
        assert_eq!(u16::from_le_bytes([b[8], b[9]]), REC_VERSION_ZSTD);
        r.compressed = false;
        let plain = r.encode();
        // The index alone is 48 bytes a payload uncompressed.
        assert!(
            b.len() + 40 * hashes.len() < plain.len(),
            "{} compressed, {} not",
            b.len(),
            plain.len()
        );
        // Another version, another name.
        assert_ne!(RecordObj::key(&r.encode_named()), k);
        r.compressed = true;
        let mut trailing = b.clone();
        trailing.push(0);
        let e = RecordObj::decode(&trailing, &k).unwrap_err();
        assert!(e.contains("one zstd frame"), "{e}");
        // Damage anywhere in the frame (the index included, which the name does not cover).
        for at in [REC_HEADER_LEN + 20, b.len() / 2, b.len() - 10] {
            let mut bad = b.clone();
            bad[at] ^= 0x40;
            assert!(RecordObj::decode(&bad, &k).is_err(), "byte {at} changed");
        }
        let mut meta = b.clone();
        meta[20] ^= 1; // the height, in the named header
        assert!(RecordObj::decode(&meta, &k).unwrap_err().contains("blake3"));
        let big = zstd::bulk::compress(&vec![0u8; 1 << 20], 3).unwrap();
        let mut out = vec![1, 2];
        inflate(&big, 1 << 20, &mut out).unwrap();
        assert_eq!(out.len(), 2 + (1 << 20));
        let e = inflate(&big, (1 << 20) - 1, &mut Vec::new()).unwrap_err();
        assert!(e.contains("past"), "{e}");
    }

    /// Found by the remote_objects fuzz target: a large number in a pointer's user metadata
    /// changed in its last digits when written back.
    #[test]
    fn pointer_metadata_numbers_roundtrip() {
        for n in 1..300 {
            let text = format!(
                r#"{{"format":1,"height":12,"record":"00","time_unix_ms":2,"meta":{{"k":[1{},2]}},"pushed_unix_ms":6}}"#,
                "7".repeat(n)
            );
            let p: Pointer = serde_json::from_str(&text).unwrap();
            let again: Pointer = serde_json::from_slice(&serde_json::to_vec(&p).unwrap()).unwrap();
            assert_eq!(again, p, "1 and {n} sevens");
        }
    }

    #[test]
    fn pointer_names_roundtrip() {
        let p = pointer_path("node-1", 1234, &[0xab; 32]);
        let file = p.filename().unwrap();
        assert_eq!(parse_pointer_name(file), Some((1234, [0xab; 32])));
        assert_eq!(parse_pointer_name("123-ab.json"), None);
        let sealed = sealed_pointer_path("node-1", 7, &[0xcd; 32]);
        assert!(sealed.as_ref().ends_with(".sealed"));
        assert_eq!(
            parse_pointer_name(sealed.filename().unwrap()),
            Some((7, [0xcd; 32]))
        );
        assert!(check_volume_name("node-1.data_2").is_ok());
        for bad in ["", "a/b", "..", ".x", "a b"] {
            assert!(check_volume_name(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn object_headers_are_checked() {
        let p = PayloadRef {
            seg: 3,
            offset: 9,
            stored_len: 16 + 5,
            raw_len: 5,
            codec: Codec::Raw,
            hash: [7; 32],
        };
        let mut o = object_header(&p);
        o.extend_from_slice(&[0u8; 21]);
        let got = decode_object_header(&o, &[7; 32], o.len() as u64).unwrap();
        assert_eq!(
            (got.raw_len, got.stored_len, got.codec),
            (5, 21, Codec::Raw)
        );
        assert!(decode_object_header(&o[..10], &[7; 32], 10).is_err());
        let mut bad = o.clone();
        bad[8] = 9;
        assert!(decode_object_header(&bad, &[7; 32], o.len() as u64).is_err());
        // A listed size below what was read (or below the header) is refused, not wrapped.
        assert!(decode_object_header(&o, &[7; 32], 3).is_err());
    }
}
