//! `verify --remote`: check an offsite copy without its source log (restic's `check`). Every
//! pointer and record object is downloaded and authenticated, every chain is followed to its
//! start, and every payload a record names must be on the store (its pack, or its loose object
//! in layouts 1 and 2). With a data subset, the packs and loose objects in that subset are
//! downloaded whole and every entry in them is opened and checked against its blake3.

use std::collections::{BTreeMap, BTreeSet, HashSet};

use crate::error::{RemoteError, Result, fail};
use object_store::path::Path as ObjPath;

use super::Remote;
use super::layout;
use super::pack::{Loc, pack_path};
use super::restore::{list_heights, list_volumes};
use btm_log::{Meta, MetaExtent, hex};

/// Which objects' bytes a verification downloads: those whose content-derived name falls in
/// buckets `from..to` of `m` (so `1/m` ... `m/m` over `m` runs read everything once).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Subset {
    from: u64,
    to: u64,
    m: u64,
}

impl Subset {
    /// `N/M` (1 <= N <= M), or `P%` (0 < P <= 100: a share of the objects).
    pub fn parse(s: &str) -> std::result::Result<Subset, String> {
        let bad = || format!("{s:?}: give N/M (such as 1/10) or a percentage (such as 5%)");
        if let Some(p) = s.strip_suffix('%') {
            let p: f64 = p.trim().parse().map_err(|_| bad())?;
            if !(p > 0.0 && p <= 100.0) {
                return Err(bad());
            }
            // In ten-thousandths: 0.01 % is the finest share.
            let to = ((p * 100.0).round() as u64).max(1);
            return Ok(Subset {
                from: 0,
                to,
                m: 10_000,
            });
        }
        let (n, m) = s.split_once('/').ok_or_else(bad)?;
        let (n, m): (u64, u64) = (
            n.trim().parse().map_err(|_| bad())?,
            m.trim().parse().map_err(|_| bad())?,
        );
        if n == 0 || m == 0 || n > m {
            return Err(bad());
        }
        Ok(Subset {
            from: n - 1,
            to: n,
            m,
        })
    }

    /// Whether the object named by `name` is read.
    fn takes(&self, name: &[u8; 32]) -> bool {
        let b = u64::from_le_bytes(name[..8].try_into().expect("8 bytes")) % self.m;
        (self.from..self.to).contains(&b)
    }
}

/// What a verification of an offsite copy found.
#[derive(Clone, Debug, Default, serde::Serialize)]
pub struct RemoteVerifyReport {
    pub volumes: usize,
    pub heights: usize,
    pub records: usize,
    /// Payloads the records name, and the packs (layout 3) or loose objects they are in.
    pub payloads: usize,
    pub packs: usize,
    pub loose_objects: usize,
    /// Packs and loose objects downloaded whole (the data subset), and the payloads in them
    /// opened and checked against their hash.
    pub objects_read: usize,
    pub payloads_read: usize,
    pub bytes_read: u64,
    /// Everything found wrong, one sentence each (empty: the copy is intact).
    pub problems: Vec<String>,
    pub requests: crate::RequestCounts,
}

/// Verifies volume `name` (every volume when `None`) on `remote`; damage is listed in the
/// report's `problems`, not returned as an error (a listing or download failure is one).
pub fn verify(
    remote: &Remote,
    name: Option<&str>,
    subset: Option<Subset>,
) -> Result<RemoteVerifyReport> {
    remote.check_layout(false)?;
    let before = remote.requests();
    let mut rep = RemoteVerifyReport::default();
    let volumes = match name {
        Some(n) => vec![n.to_string()],
        None => list_volumes(remote)?,
    };
    if volumes.is_empty() {
        fail!(
            NotFound,
            "{} holds no volumes: nothing to verify",
            remote.url()
        );
    }
    // Payload -> where it is: a pack location (layout 3) or None (its loose object).
    let mut wanted: BTreeMap<[u8; 32], Option<Loc>> = BTreeMap::new();
    let mut seen: HashSet<[u8; 32]> = HashSet::new();
    for vol in &volumes {
        rep.volumes += 1;
        let heights = list_heights(remote, vol, None)?;
        rep.heights += heights.len();
        // Pins are authenticated here (list and push only read their names).
        match crate::remote_pins(remote, vol) {
            Ok(_) => {}
            Err(RemoteError::Damaged(e) | RemoteError::KeyMismatch(e)) => rep.problems.push(e),
            Err(e) => return Err(e),
        }
        for h in &heights {
            let key = layout::parse_hex32(&h.record).expect("checked by list_heights");
            walk_chain(remote, key, h.height, &mut seen, &mut wanted, &mut rep)?;
        }
    }
    rep.payloads = wanted.len();
    check_payloads(remote, &wanted, subset, &mut rep)?;
    rep.requests = remote.requests().since(&before);
    Ok(rep)
}

/// Follows the chain from record `key` (pointed at by `height`) back to its start or to a
/// record already checked, collecting the payloads each record names.
fn walk_chain(
    remote: &Remote,
    key: [u8; 32],
    height: u64,
    seen: &mut HashSet<[u8; 32]>,
    wanted: &mut BTreeMap<[u8; 32], Option<Loc>>,
    rep: &mut RemoteVerifyReport,
) -> Result<()> {
    let (mut next, mut later) = (key, height + 1);
    while next != [0u8; 32] && seen.insert(next) {
        let p = layout::record_path(&next);
        let rec = match remote.get_opt(&p)? {
            None => {
                rep.problems.push(format!(
                    "record object {p} (a record of height {height}'s chain) is missing"
                ));
                return Ok(());
            }
            Some(b) => match remote.decode_record(&p, b, &next) {
                Ok(r) => r,
                Err(RemoteError::Damaged(e)) => {
                    rep.problems.push(e);
                    return Ok(());
                }
                Err(e) => return Err(e),
            },
        };
        rep.records += 1;
        if rec.height >= later {
            rep.problems.push(format!(
                "record object {p} breaks the chain of height {height} (height {} before {later})",
                rec.height
            ));
            return Ok(());
        }
        match Meta::decode(&rec.meta) {
            Ok(meta) => {
                for e in &meta.extents {
                    if let MetaExtent::Data { payload, .. } = e {
                        wanted.entry(payload.hash).or_insert(None);
                    }
                }
            }
            Err(e) => rep.problems.push(format!(
                "metadata of record {p} (height {}): {e:?}",
                rec.height
            )),
        }
        if let Some(idx) = &rec.index {
            for (h, loc) in idx.locations() {
                wanted.insert(h, Some(loc));
            }
        }
        later = rec.height;
        next = rec.prev;
    }
    Ok(())
}

/// Every payload must be on the store; those in the subset are read and checked.
fn check_payloads(
    remote: &Remote,
    wanted: &BTreeMap<[u8; 32], Option<Loc>>,
    subset: Option<Subset>,
    rep: &mut RemoteVerifyReport,
) -> Result<()> {
    let packs: BTreeSet<[u8; 32]> = wanted.values().flatten().map(|l| l.pack).collect();
    let loose: Vec<[u8; 32]> = (wanted.iter())
        .filter(|(_, l)| l.is_none())
        .map(|(h, _)| *h)
        .collect();
    (rep.packs, rep.loose_objects) = (packs.len(), loose.len());
    let pack_paths: Vec<ObjPath> = packs.iter().map(pack_path).collect();
    for (p, there) in pack_paths.iter().zip(remote.exist_many(&pack_paths)?) {
        if !there {
            rep.problems.push(format!("pack {p} is missing"));
        }
    }
    let loose_paths: Vec<ObjPath> = loose.iter().map(|h| remote.object_path(h)).collect();
    let Some(subset) = subset else {
        for (p, there) in loose_paths.iter().zip(remote.exist_many(&loose_paths)?) {
            if !there {
                rep.problems.push(format!("payload object {p} is missing"));
            }
        }
        return Ok(());
    };
    // Loose objects: downloaded, opened and checked against their hash.
    let (paths, hashes): (Vec<ObjPath>, Vec<[u8; 32]>) = (loose_paths.into_iter().zip(&loose))
        .filter(|(_, h)| subset.takes(h))
        .map(|(p, h)| (p, *h))
        .unzip();
    for ((p, h), ok) in paths
        .iter()
        .zip(&hashes)
        .zip(remote.objects_intact(&paths, &hashes)?)
    {
        match ok {
            None => rep.problems.push(format!("payload object {p} is missing")),
            Some(false) => rep.problems.push(format!(
                "payload object {p} does not hold payload {}",
                hex(h)
            )),
            Some(true) => {}
        }
        rep.objects_read += 1;
        rep.payloads_read += 1;
    }
    // Packs: each one in the subset downloaded once; every entry a record names in it checked.
    for name in packs.iter().filter(|n| subset.takes(n)) {
        let p = pack_path(name);
        let bytes = match remote.get_opt(&p) {
            Ok(Some(b)) => b,
            Ok(None) => continue, // reported above
            Err(RemoteError::Damaged(e)) => {
                rep.problems.push(e);
                continue;
            }
            Err(e) => return Err(e),
        };
        rep.objects_read += 1;
        rep.bytes_read += bytes.len() as u64;
        for (h, loc) in wanted.iter().filter_map(|(h, l)| Some((h, l.as_ref()?))) {
            if loc.pack != *name {
                continue;
            }
            rep.payloads_read += 1;
            let ok = bytes
                .get(loc.offset as usize..(loc.offset + loc.len) as usize)
                .and_then(|e| {
                    remote
                        .unseal(&remote.object_path(h), bytes.slice_ref(e))
                        .ok()
                })
                .is_some_and(|plain| crate::decode_object(&plain, h, None).is_ok());
            if !ok {
                rep.problems.push(format!(
                    "pack {p} does not hold payload {} at {}..{}",
                    hex(h),
                    loc.offset,
                    loc.offset + loc.len
                ));
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn subsets_parse_and_cover_everything_once() {
        let s = |from, to, m| Ok(Subset { from, to, m });
        assert_eq!(Subset::parse("1/3"), s(0, 1, 3));
        assert_eq!(Subset::parse("5%"), s(0, 500, 10_000));
        for bad in ["0/3", "4/3", "x", "0%", "101%", "1/0", ""] {
            assert!(Subset::parse(bad).is_err(), "{bad}");
        }
        let names: Vec<[u8; 32]> = (0u64..300)
            .map(|i| *blake3::hash(&i.to_le_bytes()).as_bytes())
            .collect();
        for name in &names {
            let parts: Vec<u64> = (1..=3)
                .filter(|n| Subset::parse(&format!("{n}/3")).unwrap().takes(name))
                .collect();
            assert_eq!(
                parts.len(),
                1,
                "each object is in exactly one of 1/3, 2/3, 3/3"
            );
        }
        let all = Subset::parse("100%").unwrap();
        assert!(names.iter().all(|n| all.takes(n)));
        let some = names
            .iter()
            .filter(|n| Subset::parse("10%").unwrap().takes(n))
            .count();
        assert!((10..=60).contains(&some), "10% of 300 took {some}");
    }
}
