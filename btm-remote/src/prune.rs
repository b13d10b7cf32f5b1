//! Prune: delete record and payload objects that no pointer of any volume reaches any more
//! (after retention removed heights and compaction rewrote the records after them).
//!
//! Mark and sweep, like restic's prune: walk every pointer's chain (records shared by several
//! chains are read once), collect the payloads their metadata names, then delete unreached
//! objects older than a grace period. A pack (layout 3) is kept while any kept record's pack
//! index names it, whole: entries of dropped records inside a kept pack stay until every
//! record naming the pack is gone (no pack is rewritten). The grace period protects objects a concurrent push has
//! uploaded but not yet linked; lock objects (`lock.rs`) keep prune and pushes apart, so a push
//! never links an old object that prune is deleting.

use std::collections::HashSet;
use std::time::Duration;

use crate::error::{RemoteError, Result};
use object_store::path::Path as ObjPath;

use super::Remote;
use super::layout;
use btm_log::{Meta, MetaExtent};

/// What a prune found and did.
#[derive(Clone, Debug, Default, serde::Serialize)]
pub struct PruneReport {
    pub volumes: u64,
    pub pointers: u64,
    pub records_kept: u64,
    pub records_deleted: u64,
    pub objects_kept: u64,
    pub objects_deleted: u64,
    pub packs_kept: u64,
    pub packs_deleted: u64,
    pub bytes_freed: u64,
    /// Unreached objects younger than the grace period, left alone.
    pub recent_left: u64,
    pub dry_run: bool,
}

pub fn prune(remote: &Remote, grace: Duration, dry_run: bool) -> Result<PruneReport> {
    let mut rep = PruneReport {
        dry_run,
        ..Default::default()
    };
    remote.check_layout(false)?;
    let mut lock = super::lock::Lock::take(remote, "prune")?;
    let mut records: HashSet<[u8; 32]> = HashSet::new();
    let mut objects: HashSet<[u8; 32]> = HashSet::new();
    let mut packs: HashSet<[u8; 32]> = HashSet::new();
    for vol in super::list_volumes(remote)? {
        rep.volumes += 1;
        for (_, key, _) in remote.pointers(&vol)? {
            rep.pointers += 1;
            let mut next = key;
            while next != [0u8; 32] && records.insert(next) {
                lock.refresh()?;
                let p = layout::record_path(&next);
                let b = remote.get(&p)?;
                let rec = remote.decode_record(&p, b, &next).map_err(|e| {
                    RemoteError::Damaged(format!(
                        "{e}; nothing was deleted: push again from the source log, then prune"
                    ))
                })?;
                let meta = Meta::decode(&rec.meta).map_err(|e| {
                    RemoteError::Damaged(format!("metadata of height {}: {e:?}", rec.height))
                })?;
                if let Some(idx) = &rec.index {
                    packs.extend(idx.packs.iter().copied());
                }
                for x in &meta.extents {
                    if let MetaExtent::Data { payload, .. } = x {
                        objects.insert(remote.name_of(&payload.hash));
                    }
                }
                next = rec.prev;
            }
        }
    }
    let grace = chrono::Duration::from_std(grace)
        .map_err(|e| RemoteError::Config(format!("grace period {grace:?}: {e}")))?;
    let cutoff = chrono::Utc::now() - grace;
    let mut doomed = Vec::new();
    lock.refresh()?;
    for (dir, marked, kept, deleted) in [
        (
            "records",
            &records,
            &mut rep.records_kept,
            &mut rep.records_deleted,
        ),
        (
            "objects",
            &objects,
            &mut rep.objects_kept,
            &mut rep.objects_deleted,
        ),
        ("packs", &packs, &mut rep.packs_kept, &mut rep.packs_deleted),
    ] {
        for (p, size, modified) in remote.list(&ObjPath::from(dir))? {
            let Some(key) = p.filename().and_then(layout::parse_hex32) else {
                continue;
            };
            if marked.contains(&key) {
                *kept += 1;
            } else if modified > cutoff {
                rep.recent_left += 1;
            } else {
                *deleted += 1;
                rep.bytes_freed += size;
                doomed.push(p);
            }
        }
    }
    if !dry_run {
        remote.delete_many(doomed)?;
    }
    Ok(rep)
}
