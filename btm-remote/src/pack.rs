//! Packs (layout 3, "Packs" in docs/FORMAT.md): a record's payloads go up in a few pack objects
//! instead of one object each, so a height costs a handful of requests, not one per 4 KiB block.
//!
//! A pack is `btm.pak\n` followed by entries, each byte for byte the payload object layouts 1
//! and 2 store at `objects/…` (sealed under that path in a keyed store). Where each entry lies
//! is recorded in the record object's pack index, which a restore fetches anyway: a payload is
//! then one range read, checked against its blake3 (and, keyed, authenticated on its own), so a
//! pack never has to be downloaded or trusted whole.

use std::collections::HashMap;

use object_store::path::Path as ObjPath;

use crate::Remote;
use crate::error::Result;
use crate::layout;
use btm_log::{Log, PayloadRef, hex};

/// Magic at the start of every pack.
pub const PACK_MAGIC: &[u8; 8] = b"btm.pak\n";
/// A pack is closed once it holds this many bytes (a larger single entry gets a pack alone).
pub const PACK_TARGET: u64 = 16 << 20;
/// Whether an entry of `len` bytes opens a new pack after `filled` bytes of the current one
/// (its magic included): a pack closes at [`PACK_TARGET`], unless it holds no entry yet.
pub(crate) fn opens_new_pack(filled: u64, len: u64) -> bool {
    filled > PACK_MAGIC.len() as u64 && filled + len > PACK_TARGET
}

/// The largest entry btm writes: a payload object, sealed.
pub fn max_entry_len() -> u64 {
    layout::max_payload_object_len() + crate::crypto::SEAL_OVERHEAD as u64
}
/// The largest pack btm writes: refused above this before its body is read.
pub fn max_pack_len() -> u64 {
    PACK_MAGIC.len() as u64 + PACK_TARGET.max(max_entry_len())
}

/// `packs/<2 hex>/<64 hex>`: a pack, named by the blake3 of its bytes (keyed in a keyed store).
pub fn pack_path(name: &[u8; 32]) -> ObjPath {
    let h = hex(name);
    ObjPath::from(format!("packs/{}/{h}", &h[..2]))
}

/// Where a payload lies: `len` bytes at `offset` of pack `pack`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Loc {
    pub pack: [u8; 32],
    pub offset: u64,
    pub len: u64,
}

/// The pack index a layout-3 record object carries after its metadata block: for each payload
/// the record stores (by content hash), its pack, offset and length.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PackIndex {
    pub packs: Vec<[u8; 32]>,
    /// (payload hash, index into `packs`, offset, length)
    pub entries: Vec<([u8; 32], u32, u64, u32)>,
}

const ENTRY_LEN: usize = 32 + 4 + 8 + 4;

impl PackIndex {
    pub fn encode(&self) -> Vec<u8> {
        let mut b = Vec::with_capacity(8 + self.packs.len() * 32 + self.entries.len() * ENTRY_LEN);
        b.extend_from_slice(&(self.packs.len() as u32).to_le_bytes());
        for p in &self.packs {
            b.extend_from_slice(p);
        }
        b.extend_from_slice(&(self.entries.len() as u32).to_le_bytes());
        for (h, p, off, len) in &self.entries {
            b.extend_from_slice(h);
            b.extend_from_slice(&p.to_le_bytes());
            b.extend_from_slice(&off.to_le_bytes());
            b.extend_from_slice(&len.to_le_bytes());
        }
        b
    }

    /// Parses an index and checks it is one btm could have written: every entry inside a pack
    /// of at most [`max_pack_len`] bytes, after the magic, at most [`max_entry_len`] long.
    pub fn decode(b: &[u8]) -> Result<PackIndex, String> {
        let mut r = b;
        let mut take = |n: usize| -> Result<&[u8], String> {
            if r.len() < n {
                return Err("pack index cut short".into());
            }
            let (a, rest) = r.split_at(n);
            r = rest;
            Ok(a)
        };
        let np = u32::from_le_bytes(take(4)?.try_into().unwrap()) as usize;
        let packs_bytes = take(np.checked_mul(32).ok_or("pack count out of range")?)?;
        let packs: Vec<[u8; 32]> = packs_bytes
            .chunks_exact(32)
            .map(|c| c.try_into().unwrap())
            .collect();
        let ne = u32::from_le_bytes(take(4)?.try_into().unwrap()) as usize;
        let rows = take(
            ne.checked_mul(ENTRY_LEN)
                .ok_or("entry count out of range")?,
        )?;
        if !r.is_empty() {
            return Err("bytes after the pack index".into());
        }
        let mut entries = Vec::with_capacity(ne);
        for c in rows.chunks_exact(ENTRY_LEN) {
            let h: [u8; 32] = c[..32].try_into().unwrap();
            let p = u32::from_le_bytes(c[32..36].try_into().unwrap());
            let off = u64::from_le_bytes(c[36..44].try_into().unwrap());
            let len = u32::from_le_bytes(c[44..48].try_into().unwrap());
            if p as usize >= packs.len() {
                return Err(format!("entry names pack {p} of {}", packs.len()));
            }
            let end = off.checked_add(len as u64).ok_or("entry past the end")?;
            if off < PACK_MAGIC.len() as u64
                || len as u64 <= layout::OBJ_HEADER_LEN
                || len as u64 > max_entry_len()
                || end > max_pack_len()
            {
                return Err(format!(
                    "entry at {off}+{len} is not where btm puts payloads in a pack"
                ));
            }
            entries.push((h, p, off, len));
        }
        Ok(PackIndex { packs, entries })
    }

    /// Each payload's location.
    pub fn locations(&self) -> impl Iterator<Item = ([u8; 32], Loc)> + '_ {
        self.entries.iter().map(|(h, p, off, len)| {
            (
                *h,
                Loc {
                    pack: self.packs[*p as usize],
                    offset: *off,
                    len: *len as u64,
                },
            )
        })
    }
}

/// What [`upload`] did.
#[derive(Default)]
pub(crate) struct Packed {
    pub packs: u64,
    pub objects: u64,
    pub bytes: u64,
}

/// Puts the payloads of `own` that `located` does not know yet into packs of about
/// [`PACK_TARGET`] bytes, uploads them (`batch_bytes` of payload in memory at a time), and
/// returns the index of every payload in `own`. `located` learns the new locations, so a
/// payload two records of one push store goes up once.
pub(crate) fn upload(
    log: &Log,
    remote: &Remote,
    own: &[PayloadRef],
    located: &mut HashMap<[u8; 32], Loc>,
    batch_bytes: u64,
    before_batch: &mut dyn FnMut() -> Result<()>,
    done: &(dyn Fn(u64) + Sync),
) -> Result<(PackIndex, Packed)> {
    let mut rep = Packed::default();
    let new: Vec<&PayloadRef> = {
        let mut seen = std::collections::HashSet::new();
        own.iter()
            .filter(|x| !located.contains_key(&x.hash) && seen.insert(x.hash))
            .collect()
    };
    for batch in crate::push::batches(&new, |x| x.stored_len, batch_bytes) {
        before_batch()?;
        let mut items: Vec<(ObjPath, Vec<u8>)> = Vec::new();
        let mut cur = PACK_MAGIC.to_vec();
        let mut pending: Vec<([u8; 32], u64, u64)> = Vec::new();
        let mut close = |cur: &mut Vec<u8>, pending: &mut Vec<([u8; 32], u64, u64)>| {
            if pending.is_empty() {
                return;
            }
            let bytes = std::mem::replace(cur, PACK_MAGIC.to_vec());
            let name = remote.name_of(blake3::hash(&bytes).as_bytes());
            for (h, offset, len) in pending.drain(..) {
                located.insert(
                    h,
                    Loc {
                        pack: name,
                        offset,
                        len,
                    },
                );
            }
            items.push((pack_path(&name), bytes));
        };
        for x in batch {
            let mut obj = layout::object_header(x);
            log.read_stored_into(x, &mut obj)?;
            // Sealed under the path a loose object would have: an entry moved to another
            // payload's place does not open.
            let entry = remote.seal(&remote.object_path(&x.hash), obj);
            if opens_new_pack(cur.len() as u64, entry.len() as u64) {
                close(&mut cur, &mut pending);
            }
            pending.push((x.hash, cur.len() as u64, entry.len() as u64));
            cur.extend_from_slice(&entry);
            rep.objects += 1;
        }
        close(&mut cur, &mut pending);
        rep.packs += items.len() as u64;
        rep.bytes += items.iter().map(|(_, b)| b.len() as u64).sum::<u64>();
        remote.put_many(items, done)?;
    }
    Ok((index_of(own, located), rep))
}

/// The index of `own` from known locations (every payload of `own` must be in `located`).
pub(crate) fn index_of(own: &[PayloadRef], located: &HashMap<[u8; 32], Loc>) -> PackIndex {
    let mut idx = PackIndex::default();
    let mut pack_no: HashMap<[u8; 32], u32> = HashMap::new();
    let mut seen = std::collections::HashSet::new();
    for x in own {
        if !seen.insert(x.hash) {
            continue;
        }
        let loc = located[&x.hash];
        let p = *pack_no.entry(loc.pack).or_insert_with(|| {
            idx.packs.push(loc.pack);
            (idx.packs.len() - 1) as u32
        });
        idx.entries.push((x.hash, p, loc.offset, loc.len as u32));
    }
    idx
}

/// Where the payloads of records this volume's pointers reach but the log's chain no longer has
/// lie (compaction rewrote those records; walked from each such pointer back to the part of the
/// chain the log still has). A record the log rewrote stores payloads the replaced records
/// stored, so a push finds them here instead of packing them again. A record that cannot be
/// read is skipped: its payloads are only packed again.
pub(crate) fn replaced_locations(
    remote: &Remote,
    tips: impl Iterator<Item = [u8; 32]>,
    chain: &std::collections::HashSet<[u8; 32]>,
) -> Result<HashMap<[u8; 32], Loc>> {
    let mut located = HashMap::new();
    let mut seen = std::collections::HashSet::new();
    for tip in tips {
        let mut next = tip;
        while next != [0u8; 32] && !chain.contains(&next) && seen.insert(next) {
            let p = layout::record_path(&next);
            let Some(rec) = remote
                .get_opt(&p)?
                .and_then(|b| remote.decode_record(&p, b, &next).ok())
            else {
                break;
            };
            if let Some(idx) = &rec.index {
                for (h, loc) in idx.locations() {
                    located.entry(h).or_insert(loc);
                }
            }
            next = rec.prev;
        }
    }
    Ok(located)
}

/// `push --verify` of a layout-3 record on the store: its index when the record and every
/// entry of it (each pack downloaded whole, once) open and decode to their payload; `None`
/// (counted in `repaired`) when anything is missing or damaged, so the caller packs the
/// record's payloads again and rewrites the record.
pub(crate) fn verified(
    remote: &Remote,
    rpath: &ObjPath,
    key: &[u8; 32],
    repaired: &mut u64,
) -> Result<Option<PackIndex>> {
    let rec = match remote.get_opt(rpath)? {
        Some(b) => remote.decode_record(rpath, b, key).ok(),
        None => None,
    };
    let Some(idx) = rec.and_then(|r| r.index) else {
        *repaired += 1;
        return Ok(None);
    };
    let mut by_pack: HashMap<[u8; 32], Vec<([u8; 32], Loc)>> = HashMap::new();
    for (h, loc) in idx.locations() {
        by_pack.entry(loc.pack).or_default().push((h, loc));
    }
    for (name, entries) in by_pack {
        // Missing, or larger than btm writes (refused before its body is read): pack again.
        let bytes = match remote.get_opt(&pack_path(&name)) {
            Ok(Some(b)) => b,
            Ok(None) | Err(crate::RemoteError::Damaged(_)) => {
                *repaired += 1;
                return Ok(None);
            }
            Err(e) => return Err(e),
        };
        for (h, loc) in entries {
            let ok = bytes
                .get(loc.offset as usize..(loc.offset + loc.len) as usize)
                .and_then(|e| {
                    remote
                        .unseal(&remote.object_path(&h), bytes.slice_ref(e))
                        .ok()
                })
                .is_some_and(|plain| crate::decode_object(&plain, &h, None).is_ok());
            if !ok {
                *repaired += 1;
                return Ok(None);
            }
        }
    }
    Ok(Some(idx))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn index_roundtrips_and_refuses_what_btm_never_writes() {
        let idx = PackIndex {
            packs: vec![[1; 32], [2; 32]],
            entries: vec![([9; 32], 1, 8, 100), ([8; 32], 0, 108, 4200)],
        };
        let b = idx.encode();
        assert_eq!(PackIndex::decode(&b).unwrap(), idx);
        assert_eq!(PackIndex::decode(&[0; 8]).unwrap(), PackIndex::default());
        assert!(PackIndex::decode(&b[..b.len() - 1]).is_err());
        let mut extra = b.clone();
        extra.push(0);
        assert!(PackIndex::decode(&extra).is_err());
        for bad in [
            ([9; 32], 2, 8, 100),                        // no such pack
            ([9; 32], 0, 0, 100),                        // over the magic
            ([9; 32], 0, 8, 3),                          // shorter than a header
            ([9; 32], 0, max_pack_len(), 100),           // past the largest pack
            ([9; 32], 0, u64::MAX - 10, 100),            // overflow
            ([9; 32], 0, 8, max_entry_len() as u32 + 1), // larger than any entry
        ] {
            let i = PackIndex {
                packs: vec![[1; 32]],
                entries: vec![bad],
            };
            assert!(PackIndex::decode(&i.encode()).is_err(), "{bad:?}");
        }
        // A count far beyond the bytes is refused without allocating for it.
        let mut huge = u32::MAX.to_le_bytes().to_vec();
        huge.extend_from_slice(&[0; 64]);
        assert!(PackIndex::decode(&huge).is_err());
    }
}
