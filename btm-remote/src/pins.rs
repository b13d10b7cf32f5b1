//! Pins offsite: one small object per height the volume's log pinned
//! (`volumes/<name>/pins/<height:020>.json`, sealed in a keyed store). `push` writes them from
//! `LOGDIR/pins` and removes those the log no longer has; a pinned height's pointer is never
//! deleted by a push, whatever retention says; `list --remote` shows them.

use std::collections::{BTreeMap, BTreeSet};

use object_store::path::Path as ObjPath;

use crate::error::{RemoteError, Result, fail};
use crate::layout::{self, Pin};
use crate::{Remote, now_ms};

/// The pins on the remote by the names of their objects (not downloaded): what a push
/// compares with the log's pins.
pub(crate) fn listed(remote: &Remote, name: &str) -> Result<BTreeMap<u64, ObjPath>> {
    Ok(remote
        .list(&layout::pins_dir(name))?
        .into_iter()
        .filter_map(|(p, _, _)| Some((layout::parse_pin_name(p.filename()?)?, p)))
        .collect())
}

/// The pinned heights of volume `name`, each pin downloaded and checked (in a keyed store,
/// opened with the key, so a pin nobody with the key wrote is refused).
pub fn remote_pins(remote: &Remote, name: &str) -> Result<BTreeSet<u64>> {
    let pins = listed(remote, name)?;
    let paths: Vec<ObjPath> = pins.values().cloned().collect();
    let mut out = BTreeSet::new();
    for ((h, p), b) in pins.into_iter().zip(remote.get_many(&paths)?) {
        // Removed since the listing (unpinned): not pinned.
        let Some(b) = b else { continue };
        let b = remote.unseal(&p, b)?;
        let pin: Pin = serde_json::from_slice(&b).map_err(|e| {
            RemoteError::Damaged(format!("{p} on {} is not a btm pin: {e}", remote.url()))
        })?;
        if pin.height != h {
            fail!(
                Damaged,
                "{p} on {} pins height {}, not the one its name says: the remote is damaged",
                remote.url(),
                pin.height
            );
        }
        out.insert(h);
    }
    Ok(out)
}

/// The log's pins as a push publishes them. Unpinning keeps `LOGDIR/pins` (empty), so a
/// missing file where the remote holds pins means the list was lost (a deleted or restored log
/// directory), not emptied: the remote's pins are kept, and their heights' pointers with them,
/// rather than unpinned everywhere by one `rm`.
pub(crate) fn local(
    log_dir: &std::path::Path,
    have: &BTreeMap<u64, ObjPath>,
) -> Result<BTreeSet<u64>> {
    if let Some(pins) = btm_log::read_pins_file(log_dir)? {
        return Ok(pins);
    }
    if !have.is_empty() {
        let list: Vec<String> = have.keys().map(u64::to_string).collect();
        tracing::warn!(
            "{} is missing but the remote pins height(s) {}: they stay pinned there while it \
             is. The file is the list of pins: once it exists again (`btm-agent pin H` creates \
             it), the next push unpins offsite every height it does not name",
            log_dir.join(btm_log::PINS_FILE).display(),
            list.join(", ")
        );
    }
    Ok(have.keys().copied().collect())
}

/// What [`sync`] changes: pins to write and pin objects to delete.
pub(crate) fn changes(
    have: &BTreeMap<u64, ObjPath>,
    local: &BTreeSet<u64>,
) -> (Vec<u64>, Vec<ObjPath>) {
    let add = local
        .iter()
        .filter(|h| !have.contains_key(h))
        .copied()
        .collect();
    let gone = (have.iter())
        .filter(|(h, _)| !local.contains(h))
        .map(|(_, p)| p.clone())
        .collect();
    (add, gone)
}

/// Makes the remote's pins of `name` those of the log (`local`): writes the missing ones and
/// deletes the others. Returns how many were written and removed.
pub(crate) fn sync(
    remote: &Remote,
    name: &str,
    have: &BTreeMap<u64, ObjPath>,
    local: &BTreeSet<u64>,
) -> Result<(u64, u64)> {
    let (add, gone) = changes(have, local);
    let items = add
        .iter()
        .map(|&height| {
            let p = layout::pin_path(name, height);
            let pin = Pin {
                format: layout::POINTER_FORMAT,
                height,
                pushed_unix_ms: now_ms(),
            };
            let body = remote.seal(&p, serde_json::to_vec_pretty(&pin).expect("serializable"));
            (p, body)
        })
        .collect();
    remote.put_many(items, &|_| {})?;
    let removed = gone.len() as u64;
    remote.delete_many(gone)?;
    Ok((add.len() as u64, removed))
}
