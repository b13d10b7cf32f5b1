//! Read every byte of the log and check every hash.

use std::io::Read;
use std::os::unix::fs::FileExt;

use super::error::LogError;
use super::format::{
    MetaExtent, PayloadRef, REC_HEADER_LEN, RecHeader, RecordHash, SEG_HEADER_LEN, SegHeader,
    TRAILER_LEN, Trailer,
};
use super::meta::Item;
use super::record::display_path;
use super::state::TreeState;
use super::{Log, TornTail, check, decode_payload, open};

/// What [`Log::verify`] checked.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct VerifyReport {
    pub segments: u64,
    pub records: u64,
    pub first_height: Option<u64>,
    pub last_height: Option<u64>,
    /// Payloads decoded and checked against their blake3.
    pub payloads: u64,
    /// Extents whose payload is shared with an earlier one (dedup).
    pub deduplicated_extents: u64,
    /// Bytes read from the segment files.
    pub bytes_read: u64,
    /// Raw bytes the payloads decode to.
    pub raw_bytes: u64,
    /// Live files and their data bytes at the last height.
    pub files_at_last: u64,
    pub data_bytes_at_last: u64,
    /// A torn tail found when the log was opened (ignored or cut, not verified).
    #[serde(skip)]
    pub torn_tail: Option<TornTail>,
}

pub(crate) fn verify(log: &Log) -> Result<VerifyReport, LogError> {
    let mut rep = VerifyReport {
        segments: log.segments.len() as u64,
        torn_tail: log.torn_tail.clone(),
        ..Default::default()
    };
    let mut state = TreeState::default();
    // The previous record: its height and record hash.
    let mut prev: Option<(u64, [u8; 32])> = None;
    let mut stored = Stored::new().map_err(|e| LogError::io("/dev/urandom", e))?;
    let mut buf = Vec::new();
    for (si, seg) in log.segments.iter().enumerate() {
        let corrupt = |offset: u64, height: Option<u64>, what: String| LogError::Corrupt {
            segment: seg.path.clone(),
            offset,
            height,
            what,
        };
        let io = |e| LogError::io(&seg.path, e);
        let mut hb = [0u8; SEG_HEADER_LEN as usize];
        seg.file.read_exact_at(&mut hb, 0).map_err(io)?;
        rep.bytes_read += SEG_HEADER_LEN;
        match SegHeader::decode(&hb) {
            Ok(h) if h.seg == seg.no => {}
            _ => return Err(corrupt(0, None, "bad segment header".into())),
        }
        let mut p = SEG_HEADER_LEN;
        for rec in log.records.iter().filter(|r| r.seg_idx == si) {
            if rec.offset != p {
                return Err(corrupt(p, None, "records do not follow each other".into()));
            }
            let mut hb = [0u8; REC_HEADER_LEN as usize];
            seg.file.read_exact_at(&mut hb, p).map_err(io)?;
            let header = RecHeader::decode(&hb)
                .map_err(|e| corrupt(p, None, format!("bad record header: {e:?}")))?;
            let height = header.height;
            let corrupt = |what: String| corrupt(p, Some(height), what);
            if header != rec.header {
                return Err(corrupt(
                    "the record header changed after the log was opened".into(),
                ));
            }
            check::check_chain(prev.as_ref().map(|(h, x)| (*h, x)), &header).map_err(corrupt)?;
            // The metadata block is hashed, then applied and sorted as it is read, item by
            // item: never whole with its decoded form (hundreds of MiB for a baseline of
            // 10^6 files).
            let meta_at = p + header.meta_start();
            let (meta_hash, hasher) =
                open::hash_meta(&seg.file, &header, meta_at, Some(RecordHash::new(&header)))
                    .map_err(io)?;
            let mut hasher = hasher.expect("a record hash was given");
            if meta_hash != header.meta_hash {
                return Err(corrupt("metadata checksum mismatch".into()));
            }
            // The payload section, in order (its layout was checked at open; again here, as
            // the file may have changed since).
            let (ps, pe) = rec.payload_range();
            let mut own: Vec<check::Use> = Vec::new();
            let mut a = state.applying(height, None, None);
            log.for_each_item_of(rec, false, |item| {
                let e = match item {
                    Item::Op(op) => return a.op(&op),
                    Item::Extent(e) => e,
                };
                a.extent(&e)?;
                let MetaExtent::Data {
                    id,
                    offset,
                    payload,
                } = e
                else {
                    return Ok(());
                };
                if check::is_own(seg.no, (ps, pe), id, offset, &payload).map_err(corrupt)? {
                    own.push((payload, id, offset));
                } else if stored.has(&payload) {
                    rep.deduplicated_extents += 1;
                } else {
                    return Err(corrupt(format!(
                        "data of file id {id} at offset {offset} refers to a payload no earlier record stores"
                    )));
                }
                Ok(())
            })?;
            a.finish();
            rep.deduplicated_extents +=
                check::own_layout((ps, pe), header.version, &mut own).map_err(corrupt)?;
            let mut at = ps;
            for (pl, id, offset) in &own {
                open::hash_payload_range(&seg.file, at, pl.offset, &mut hasher).map_err(io)?;
                buf.resize(pl.stored_len as usize, 0);
                seg.file.read_exact_at(&mut buf, pl.offset).map_err(io)?;
                hasher.payload(&buf);
                at = pl.offset + pl.stored_len;
                rep.payloads += 1;
                rep.raw_bytes += pl.raw_len;
                if let Err(what) = decode_payload(pl, std::mem::take(&mut buf)) {
                    let path = state
                        .path_of(*id)
                        .map(display_path)
                        .unwrap_or_else(|| format!("<file id {id}, unlinked at height {height}>"));
                    return Err(LogError::CorruptExtent {
                        height,
                        path,
                        id: *id,
                        offset: *offset,
                        len: pl.raw_len,
                        what,
                    });
                }
                stored.add(pl);
            }
            open::hash_payload_range(&seg.file, at, pe, &mut hasher).map_err(io)?;
            let mut tb = [0u8; TRAILER_LEN as usize];
            let trailer_at = p + rec.len() - TRAILER_LEN;
            seg.file.read_exact_at(&mut tb, trailer_at).map_err(io)?;
            let trailer = Trailer::decode(&tb).map_err(|_| corrupt("bad trailer".into()))?;
            let hash = hasher.finish();
            if trailer.record_len != rec.len() || trailer.hash != hash {
                return Err(corrupt(
                    "record checksum mismatch (the trailer's blake3 does not match the record)"
                        .into(),
                ));
            }
            rep.bytes_read += rec.len();
            rep.records += 1;
            rep.first_height.get_or_insert(height);
            rep.last_height = Some(height);
            prev = Some((height, hash));
            p += rec.len();
        }
        if p != seg.len {
            return Err(corrupt(
                p,
                None,
                "bytes after the last record of the segment".into(),
            ));
        }
    }
    rep.files_at_last = state.files.len() as u64;
    rep.data_bytes_at_last = state.data_bytes();
    Ok(rep)
}

/// Every payload stored so far, as (segment, offset, keyed digest of its description): 24
/// bytes a payload. A hash map of whole descriptions took about 150 (an 88-byte
/// `PayloadRef` and its key, in a table that doubles), which for a long log of small
/// extents is more than the machine has.
///
/// The digest is keyed with bytes drawn for this run: whoever wrote the log cannot make a
/// borrowed description that differs from the stored one yet digests alike.
struct Stored {
    rows: Vec<(u64, u64, u64)>,
    /// Whether `rows` is sorted (payloads come in log order, so it stays sorted unless a
    /// damaged log says otherwise).
    sorted: bool,
    key: [u8; 32],
}

impl Stored {
    fn new() -> std::io::Result<Stored> {
        let mut key = [0u8; 32];
        std::fs::File::open("/dev/urandom")?.read_exact(&mut key)?;
        Ok(Stored {
            rows: Vec::new(),
            sorted: true,
            key,
        })
    }

    fn row(&self, p: &PayloadRef) -> (u64, u64, u64) {
        let mut h = blake3::Hasher::new_keyed(&self.key);
        h.update(&p.stored_len.to_le_bytes());
        h.update(&p.raw_len.to_le_bytes());
        h.update(&[p.codec as u8]);
        h.update(&p.hash);
        let d = u64::from_le_bytes(h.finalize().as_bytes()[..8].try_into().expect("8 bytes"));
        (p.seg, p.offset, d)
    }

    fn add(&mut self, p: &PayloadRef) {
        let row = self.row(p);
        if self.rows.last().is_some_and(|last| *last > row) {
            self.sorted = false;
        }
        self.rows.push(row);
    }

    /// Whether an earlier record stores `p` exactly as described.
    fn has(&mut self, p: &PayloadRef) -> bool {
        if !self.sorted {
            self.rows.sort_unstable();
            self.sorted = true;
        }
        self.rows.binary_search(&self.row(p)).is_ok()
    }
}

#[cfg(test)]
mod tests {
    use std::fs;

    use crate::{
        Log, seg_name,
        testing::{self, noise, record},
    };

    /// A record that borrows an earlier payload but describes it otherwise (here, its blake3)
    /// opens, since open checks only where it points; verify names it.
    #[test]
    fn a_borrowed_payload_described_otherwise_is_named() {
        let tmp = tempfile::tempdir().unwrap();
        let data = noise(7, 64 << 10);
        let mut log = Log::open_append(tmp.path()).unwrap();
        log.append(record(1, 1, data.clone())).unwrap();
        log.append(record(2, 2, data.clone())).unwrap();
        drop(log);
        Log::open_read(tmp.path()).unwrap().verify().unwrap();

        let path = tmp.path().join(seg_name(1));
        let mut parts = testing::split_segment(&fs::read(&path).unwrap());
        assert!(
            parts[1].payloads.is_empty(),
            "height 2 borrows height 1's payload"
        );
        let hash = blake3::hash(&data);
        let at = (parts[1].meta.windows(32))
            .position(|w| w == hash.as_bytes())
            .expect("the borrowed description holds the payload's blake3");
        parts[1].meta[at] ^= 1;
        fs::write(&path, testing::forged_segment(&parts)).unwrap();

        let log = Log::open_read(tmp.path()).unwrap();
        let err = log.verify().unwrap_err().to_string();
        assert!(
            err.contains("refers to a payload no earlier record stores"),
            "{err}"
        );
    }
}
