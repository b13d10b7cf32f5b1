//! Push: make the remote hold every record of a local log and a pointer for each kept height.
//!
//! Order is what keeps the remote consistent after any interruption: a record's payload
//! objects go up before the record object, records go up in chain order, and a height's pointer
//! only after its record. So an existing record object implies its whole chain and all its
//! payloads exist, and `push` resumes by finding (binary search) the first record the remote
//! lacks. Each height is published as soon as its record is up, so a long first push is
//! restorable as it goes; pins are published and pointers of heights no longer kept (local
//! retention, or the remote's own, see `retain.rs`) are deleted last.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};

use crate::error::{RemoteError, Result, fail, io};
use indicatif::{ProgressBar, ProgressStyle};
use object_store::path::Path as ObjPath;

use super::layout::{self, Owner, Pointer, RecordObj};
use super::pack::{self, Loc, PackIndex};
use super::retain::{self, RemoteRetention, Retained};
use super::{Remote, hostname, now_ms};
use btm_log::{Log, hex};

/// What to push under which name.
#[derive(Clone, Debug, Default)]
pub struct PushOptions {
    /// Volume name on the remote (`volumes/<name>/`).
    pub name: String,
    /// Tag for heights this push publishes (like pitreos `-t`).
    pub tag: Option<String>,
    /// User JSON metadata for heights this push publishes (like pitreos `-m`).
    pub meta: Option<serde_json::Value>,
    /// Show a progress bar on stderr when it is a terminal.
    pub progress: bool,
    /// Download and check every object of the chain (not only find where to resume), and
    /// upload again what is missing or damaged: repairs a remote after storage damage.
    pub verify: bool,
    /// Let this push remove more than half of the remote's heights (see [`MASS_REMOVAL`]).
    pub allow_removals: bool,
    /// Path filter (`--exclude`): the globs, recorded in the pointers this push writes (a
    /// restore skips and names those paths), and the payloads only their files hold
    /// ([`btm_log::Log::payloads_only_of`]), never uploaded.
    pub excluded: Vec<String>,
    pub skip: HashSet<[u8; 32]>,
    /// Offsite retention of its own (`--remote-cap`); `None`: the remote mirrors the log's.
    pub remote_retention: Option<RemoteRetention>,
}

/// A push that would remove more than this many heights, and more than half of those the remote
/// has, stops before changing anything unless allowed: a log emptied or rolled far back by
/// mistake must not take the offsite copy with it (BTSOOT's safety abort).
pub const MASS_REMOVAL: usize = 2;

/// What a push did.
#[derive(Clone, Debug, Default, serde::Serialize)]
pub struct PushReport {
    pub records_uploaded: u64,
    /// Records the remote already had (found by the resume search).
    pub records_present: u64,
    /// Payloads uploaded (loose, or as entries of packs).
    pub objects_uploaded: u64,
    /// Payloads the remote already had (from an earlier push, height or volume).
    pub objects_present: u64,
    /// Pack objects uploaded (layout 3).
    pub packs_uploaded: u64,
    pub bytes_uploaded: u64,
    pub pointers_written: u64,
    pub pointers_removed: u64,
    /// Pins published (`volumes/<name>/pins/`) and removed (unpinned in the log).
    pub pins_written: u64,
    pub pins_removed: u64,
    /// With `verify`: objects that were on the remote but damaged, uploaded again.
    pub repaired: u64,
    pub newest_height: Option<u64>,
    /// Requests this push sent, by kind.
    pub requests: crate::RequestCounts,
}

/// Upload batches hold at most this many stored bytes in memory.
const BATCH_BYTES: u64 = 64 << 20;

/// The log's identity as recorded, if it has one yet.
fn existing_log_id(dir: &Path) -> Option<String> {
    std::fs::read_to_string(dir.join("remote-id"))
        .ok()
        .map(|s| s.trim().to_string())
        .filter(|s| !s.is_empty())
}

/// The log's identity for `volumes/<name>/owner`, kept in `LOGDIR/remote-id` (created once).
fn log_id(dir: &Path) -> Result<String> {
    let f = dir.join("remote-id");
    if let Some(id) = existing_log_id(dir) {
        return Ok(id);
    }
    let mut seed = Vec::new();
    seed.extend_from_slice(&now_ms().to_le_bytes());
    seed.extend_from_slice(&std::process::id().to_le_bytes());
    seed.extend_from_slice(hostname().as_bytes());
    seed.extend_from_slice(dir.as_os_str().as_encoded_bytes());
    if let Ok(r) = std::fs::read("/proc/sys/kernel/random/uuid") {
        seed.extend_from_slice(&r);
    }
    let id = hex(&blake3::hash(&seed).as_bytes()[..16]);
    std::fs::write(&f, format!("{id}\n")).map_err(io(format!(
        "writing {} (the log's offsite identity)",
        f.display()
    )))?;
    Ok(id)
}

/// Claims `volumes/<name>` for this log, or refuses when another log owns it. With `claim`
/// false (a dry run) nothing is written, locally or remotely.
fn check_owner(log: &Log, remote: &Remote, name: &str, claim: bool) -> Result<()> {
    let id = if claim {
        log_id(log.dir())?
    } else {
        // A log without an identity yet gets a new one, which no owner record matches.
        existing_log_id(log.dir()).unwrap_or_else(|| "(none yet)".into())
    };
    let p = layout::owner_path(name);
    match remote.get_opt(&p)? {
        Some(b) => {
            let b = remote.unseal(&p, b)?;
            let o: Owner = serde_json::from_slice(&b).map_err(|e| {
                RemoteError::Damaged(format!(
                    "{p} on {} is not a btm owner record: {e}",
                    remote.url()
                ))
            })?;
            if o.log_id != id {
                fail!(
                    Refused,
                    "volume name {name:?} on {} belongs to another log (log id {}, host {}); \
                     this log is {id}: pick another --remote-name, or delete {p} if that log is \
                     gone for good",
                    remote.url(),
                    o.log_id,
                    o.host
                );
            }
        }
        None if !claim => {}
        None => {
            let o = Owner {
                log_id: id,
                host: hostname(),
                created_unix_ms: now_ms(),
            };
            let body = remote.seal(&p, serde_json::to_vec_pretty(&o).expect("serializable"));
            remote.put(&p, body)?;
        }
    }
    Ok(())
}

/// One record of the log as the remote names it.
pub(crate) struct Planned {
    pub(crate) key: [u8; 32],
    pub(crate) height: u64,
    pub(crate) time_unix_ms: u64,
    /// Retention dropped its height locally (the record is still in the log).
    pub(crate) dropped: bool,
}

/// Pushes `log` to `remote` under `o.name`. Safe to interrupt and run again; concurrent pushes
/// of the same log only repeat work.
pub fn push(log: &Log, remote: &Remote, o: &PushOptions) -> Result<PushReport> {
    layout::check_volume_name(&o.name).map_err(RemoteError::Refused)?;
    remote.check_layout(true)?;
    let before = remote.requests();
    check_owner(log, remote, &o.name, true)?;
    let mut lock = super::lock::Lock::take(remote, "push")?;
    let mut rep = PushReport::default();
    let packed = remote.packed();
    // Layout 3: where this push put (or, verifying, found) each payload.
    let mut located: HashMap<[u8; 32], Loc> = HashMap::new();
    let plan = chain(log, remote)?;
    let n = plan.len();
    let lo = resume_point(remote, &plan)?;
    let start = if o.verify { 0 } else { lo };
    let mut pointers = Pointers::load(remote, &o.name)?;
    let remote_pins = super::pins::listed(remote, &o.name)?;
    let pins = super::pins::local(log.dir(), &remote_pins)?;
    let retained = pointers.retained(&plan, &pins, o);
    if !o.allow_removals {
        retained.check_removals(&pointers.existing, remote, &o.name)?;
    }
    rep.records_present = lo as u64;
    if packed && start < n {
        let keys: HashSet<[u8; 32]> = plan.iter().map(|p| p.key).collect();
        let tips = pointers.existing.iter().map(|(_, k, _)| *k);
        located = pack::replaced_locations(remote, tips, &keys)?;
    }
    let bar = progress_bar(o.progress, (n - start) as u64, &o.name);
    let uploaded = AtomicU64::new(0);
    let mut known: HashSet<[u8; 32]> = HashSet::new();
    let mut prev = if start > 0 {
        plan[start - 1].key
    } else {
        [0u8; 32]
    };
    for (i, p) in plan.iter().enumerate().skip(start) {
        let v = log.record_view(i)?;
        // Payloads `--exclude` leaves out stay home (see `PushOptions::skip`).
        let own: Vec<btm_log::PayloadRef> = (v.own.iter())
            .filter(|x| !o.skip.contains(&x.hash))
            .cloned()
            .collect();
        let rpath = layout::record_path(&p.key);
        let done = |b: u64| {
            let t = uploaded.fetch_add(b, Ordering::Relaxed) + b;
            bar.set_message(format!("{} uploaded", indicatif::HumanBytes(t)));
        };
        let index = if !packed {
            push_loose(log, remote, o, &own, &mut known, &mut lock, &mut rep, &done)?;
            None
        } else if i < lo
            && let Some(idx) = pack::verified(remote, &rpath, &p.key, &mut rep.repaired)?
        {
            // Verifying: the record and every entry its packs hold are intact.
            located.extend(idx.locations());
            None
        } else {
            let (idx, n) = pack::upload(
                log,
                remote,
                &own,
                &mut located,
                BATCH_BYTES,
                &mut || lock.refresh(),
                &done,
            )?;
            rep.objects_uploaded += n.objects;
            rep.objects_present += own.len() as u64 - n.objects;
            rep.packs_uploaded += n.packs;
            Some(idx)
        };
        let intact = if packed {
            index.is_none()
        } else {
            i < lo
                && match remote.get_opt(&rpath)? {
                    Some(b) => {
                        remote.decode_record(&rpath, b, &p.key).is_ok() || {
                            rep.repaired += 1;
                            false
                        }
                    }
                    None => false,
                }
        };
        if !intact {
            let obj = record_object(v, prev, index, remote.compressed_records());
            debug_assert_eq!(
                remote.record_key(&obj.encode_named()),
                p.key,
                "record names cover header and metadata only"
            );
            let obj = remote.seal(&rpath, obj.encode());
            uploaded.fetch_add(obj.len() as u64, Ordering::Relaxed);
            remote.put(&rpath, obj)?;
            rep.records_uploaded += 1;
        }
        // Each height becomes restorable as soon as its record is up.
        if retained.publish.contains(&(p.height, p.key)) {
            pointers.ensure(remote, o, p, &mut rep)?;
        }
        prev = p.key;
        bar.inc(1);
    }
    bar.finish_and_clear();
    rep.bytes_uploaded = uploaded.load(Ordering::Relaxed);
    lock.refresh()?;
    (rep.pins_written, rep.pins_removed) = super::pins::sync(remote, &o.name, &remote_pins, &pins)?;
    pointers.finish(remote, o, &plan, &retained, &mut rep)?;
    drop(lock);
    rep.newest_height = plan.last().map(|p| p.height);
    rep.requests = remote.requests().since(&before);
    Ok(rep)
}

/// Layouts 1 and 2: a record's payloads as one object each, those the remote lacks (asked in
/// batches), or with `verify` those missing or damaged.
#[allow(clippy::too_many_arguments)]
fn push_loose(
    log: &Log,
    remote: &Remote,
    o: &PushOptions,
    own: &[btm_log::PayloadRef],
    known: &mut HashSet<[u8; 32]>,
    lock: &mut super::lock::Lock<'_>,
    rep: &mut PushReport,
    done: &(dyn Fn(u64) + Sync),
) -> Result<()> {
    let own: Vec<_> = own.iter().filter(|x| known.insert(x.hash)).collect();
    for batch in batches(&own, |x| x.stored_len, BATCH_BYTES) {
        lock.refresh()?;
        let paths: Vec<ObjPath> = batch.iter().map(|x| remote.object_path(&x.hash)).collect();
        let there = if o.verify {
            let hashes: Vec<[u8; 32]> = batch.iter().map(|x| x.hash).collect();
            let ok = remote.objects_intact(&paths, &hashes)?;
            rep.repaired += ok.iter().filter(|x| **x == Some(false)).count() as u64;
            ok.into_iter().map(|x| x == Some(true)).collect()
        } else {
            remote.exist_many(&paths)?
        };
        let mut items = Vec::new();
        for ((x, path), there) in batch.iter().zip(paths).zip(there) {
            if there {
                rep.objects_present += 1;
                continue;
            }
            let mut obj = layout::object_header(x);
            log.read_stored_into(x, &mut obj)?;
            let obj = remote.seal(&path, obj);
            items.push((path, obj));
            rep.objects_uploaded += 1;
        }
        remote.put_many(items, done)?;
    }
    Ok(())
}

/// How many records of `plan` the remote has: they exist as a prefix of the chain.
fn resume_point(remote: &Remote, plan: &[Planned]) -> Result<usize> {
    let (mut lo, mut hi) = (0usize, plan.len());
    while lo < hi {
        let mid = (lo + hi) / 2;
        if remote.exists(&layout::record_path(&plan[mid].key))? {
            lo = mid + 1;
        } else {
            hi = mid;
        }
    }
    Ok(lo)
}

/// What [`push`] would do, in its report's terms (records, objects and bytes it would upload,
/// pointers it would write and remove), writing nothing anywhere: no owner claim, no lock, no
/// `remote-id` in the log. Refuses what the push would refuse (another log's volume name, a
/// mass removal without `allow_removals`). `verify` is not simulated.
pub fn push_plan(log: &Log, remote: &Remote, o: &PushOptions) -> Result<PushReport> {
    layout::check_volume_name(&o.name).map_err(RemoteError::Refused)?;
    remote.check_layout(false)?;
    check_owner(log, remote, &o.name, false)?;
    let plan = chain(log, remote)?;
    let lo = resume_point(remote, &plan)?;
    let pointers = Pointers::load(remote, &o.name)?;
    let remote_pins = super::pins::listed(remote, &o.name)?;
    let pins = super::pins::local(log.dir(), &remote_pins)?;
    let retained = pointers.retained(&plan, &pins, o);
    if !o.allow_removals {
        retained.check_removals(&pointers.existing, remote, &o.name)?;
    }
    let (pins_add, pins_gone) = super::pins::changes(&remote_pins, &pins);
    let mut rep = PushReport {
        pins_written: pins_add.len() as u64,
        pins_removed: pins_gone.len() as u64,
        records_present: lo as u64,
        newest_height: plan.last().map(|p| p.height),
        ..Default::default()
    };
    let mut known: HashSet<[u8; 32]> = HashSet::new();
    let mut prev = if lo > 0 { plan[lo - 1].key } else { [0u8; 32] };
    let packed = remote.packed();
    // As the push finds them: payloads of records a compaction replaced are in packs already.
    let located = if packed && lo < plan.len() {
        let keys: HashSet<[u8; 32]> = plan.iter().map(|p| p.key).collect();
        pack::replaced_locations(remote, pointers.existing.iter().map(|(_, k, _)| *k), &keys)?
    } else {
        HashMap::new()
    };
    for (i, p) in plan.iter().enumerate().skip(lo) {
        let v = log.record_view(i)?;
        let indexed = v.own.iter().filter(|x| !o.skip.contains(&x.hash)).count();
        // What this record uploads, the packs it names that exist already, and whether it
        // shares payloads with a record before it in this push.
        let (mut own, mut old_packs, mut shared) = (Vec::new(), HashSet::new(), false);
        for x in v.own.iter().filter(|x| !o.skip.contains(&x.hash)) {
            if let Some(l) = located.get(&x.hash) {
                old_packs.insert(l.pack);
            } else if known.insert(x.hash) {
                own.push(x);
            } else {
                shared = true;
            }
        }
        let mut new_packs = 0;
        if packed {
            // Every payload new to this push goes up in packs (no per-payload checks).
            let entries: u64 = own
                .iter()
                .map(|x| remote.sealed_len(layout::object_header(x).len() as u64 + x.stored_len))
                .sum();
            let packs = entries.div_ceil(pack::PACK_TARGET);
            new_packs = packs;
            rep.objects_uploaded += own.len() as u64;
            rep.objects_present += (indexed - own.len()) as u64;
            rep.packs_uploaded += packs;
            rep.bytes_uploaded += entries + packs * pack::PACK_MAGIC.len() as u64;
        }
        for batch in batches(&own, |x| x.stored_len, BATCH_BYTES)
            .into_iter()
            .filter(|_| !packed)
        {
            let paths: Vec<ObjPath> = batch.iter().map(|x| remote.object_path(&x.hash)).collect();
            for (x, there) in batch.iter().zip(remote.exist_many(&paths)?) {
                if there {
                    rep.objects_present += 1;
                } else {
                    rep.objects_uploaded += 1;
                    rep.bytes_uploaded +=
                        remote.sealed_len(layout::object_header(x).len() as u64 + x.stored_len);
                }
            }
        }
        // The record's pack index names every payload it holds and the packs they are in
        // (packs of earlier records of this push it shares payloads with are not known here:
        // counted as one). Layout 4 compresses it with the metadata, so its size follows its
        // content: the payloads' own hashes and lengths, offsets laid out as packs fill, and
        // pack names that compress no better than real ones. Exact in layout 3 without such
        // sharing; in layout 4 within a few bytes of the push (the real pack names differ).
        let n_packs = new_packs as usize + old_packs.len() + usize::from(shared);
        let index = packed.then(|| {
            planned_index(&v.own, &o.skip, n_packs, |x| {
                remote.sealed_len(layout::object_header(x).len() as u64 + x.stored_len)
            })
        });
        let obj = record_object(v, prev, index, remote.compressed_records()).encode();
        rep.bytes_uploaded += remote.sealed_len(obj.len() as u64);
        rep.records_uploaded += 1;
        prev = p.key;
    }
    rep.pointers_written = retained.publish.difference(&pointers.have).count() as u64;
    rep.pointers_removed = (pointers.existing.iter())
        .filter(|(h, k, _)| !retained.keep.contains(&(*h, *k)))
        .count() as u64;
    Ok(rep)
}

/// A stand-in for the pack index a push would write for `own` (less `skip`) in `n_packs`
/// packs: each payload's hash and entry length (`entry_len`), offsets as entries fill packs of
/// [`pack::PACK_TARGET`], and pack names derived from their number.
fn planned_index(
    own: &[btm_log::PayloadRef],
    skip: &HashSet<[u8; 32]>,
    n_packs: usize,
    entry_len: impl Fn(&btm_log::PayloadRef) -> u64,
) -> PackIndex {
    let mut seen = HashSet::new();
    let (mut pack, mut at) = (0u32, pack::PACK_MAGIC.len() as u64);
    let mut entries = Vec::new();
    for x in own.iter().filter(|x| !skip.contains(&x.hash)) {
        if !seen.insert(x.hash) {
            continue;
        }
        let len = entry_len(x);
        if pack::opens_new_pack(at, len) {
            pack += 1;
            at = pack::PACK_MAGIC.len() as u64;
        }
        entries.push((x.hash, pack, at, len as u32));
        at += len;
    }
    let n = if entries.is_empty() {
        n_packs
    } else {
        n_packs.max(1)
    };
    for e in &mut entries {
        e.1 = e.1.min(n as u32 - 1);
    }
    let packs = (0..n as u64)
        .map(|i| *blake3::hash(&i.to_le_bytes()).as_bytes())
        .collect();
    PackIndex { packs, entries }
}

/// The record object of log record `v`, chained after the record object named `prev`, with
/// its pack index in layouts 3 and 4 (`compressed`: 4).
fn record_object(
    v: btm_log::RecordView,
    prev: [u8; 32],
    index: Option<PackIndex>,
    compressed: bool,
) -> RecordObj {
    RecordObj {
        height: v.height,
        time_unix_ms: v.time_unix_ms,
        prev,
        source_hash: v.hash,
        meta: v.meta_bytes,
        index,
        compressed,
    }
}

/// Every record's remote key; the chain of keys mirrors the log's hash chain.
fn chain(log: &Log, remote: &Remote) -> Result<Vec<Planned>> {
    let n = log.record_count();
    // Names cover header and metadata: in layouts 3 and 4 the (empty here) index and the
    // compression only set the version.
    let index = remote.packed().then(PackIndex::default);
    let compressed = remote.compressed_records();
    let mut plan = Vec::with_capacity(n);
    let mut prev = [0u8; 32];
    for i in 0..n {
        let v = log.record_view(i)?;
        let (height, time_unix_ms, dropped) = (v.height, v.time_unix_ms, v.dropped);
        let obj = record_object(v, prev, index.clone(), compressed);
        let key = remote.record_key(&obj.encode_named());
        plan.push(Planned {
            key,
            height,
            time_unix_ms,
            dropped,
        });
        prev = key;
    }
    Ok(plan)
}

/// The pointers of the volume: those listed at the start of a push plus those it wrote.
struct Pointers {
    existing: Vec<(u64, [u8; 32], ObjPath)>,
    have: HashSet<(u64, [u8; 32])>,
}

impl Pointers {
    fn load(remote: &Remote, name: &str) -> Result<Pointers> {
        let existing: Vec<(u64, [u8; 32], ObjPath)> = remote.pointers(name)?;
        let have = existing.iter().map(|(h, k, _)| (*h, *k)).collect();
        Ok(Pointers { existing, have })
    }

    /// Publishes `p`'s height unless its pointer exists. A height whose record changed
    /// (compaction) keeps the tag and metadata it had.
    fn ensure(
        &mut self,
        remote: &Remote,
        o: &PushOptions,
        p: &Planned,
        rep: &mut PushReport,
    ) -> Result<()> {
        if !self.have.insert((p.height, p.key)) {
            return Ok(());
        }
        let old: Option<Pointer> = match self.existing.iter().find(|(h, _, _)| *h == p.height) {
            Some((_, _, path)) => remote
                .get_opt(path)?
                .and_then(|b| remote.decode_pointer(path, b).ok()),
            None => None,
        };
        let ptr = Pointer {
            format: layout::POINTER_FORMAT,
            height: p.height,
            record: hex(&p.key),
            time_unix_ms: p.time_unix_ms,
            tag: old.as_ref().map_or(o.tag.clone(), |x| x.tag.clone()),
            meta: old.as_ref().map_or(o.meta.clone(), |x| x.meta.clone()),
            pushed_unix_ms: now_ms(),
            excluded: (old.map_or_else(Vec::new, |x| x.excluded).into_iter())
                .chain(o.excluded.iter().cloned())
                .collect::<std::collections::BTreeSet<_>>()
                .into_iter()
                .collect(),
        };
        let path = remote.pointer_path(&o.name, p.height, &p.key);
        remote.put(&path, remote.encode_pointer(&path, &ptr))?;
        rep.pointers_written += 1;
        Ok(())
    }

    /// The pointers this push leaves (see `retain.rs`).
    fn retained(&self, plan: &[Planned], pins: &BTreeSet<u64>, o: &PushOptions) -> Retained {
        retain::retained(plan, &self.existing, pins, o.remote_retention.as_ref())
    }

    /// Publishes every retained height of the log, then deletes the other pointers: heights
    /// no longer kept, and old records of heights whose record compaction changed.
    fn finish(
        mut self,
        remote: &Remote,
        o: &PushOptions,
        plan: &[Planned],
        retained: &Retained,
        rep: &mut PushReport,
    ) -> Result<()> {
        for p in plan {
            if retained.publish.contains(&(p.height, p.key)) {
                self.ensure(remote, o, p, rep)?;
            }
        }
        let stale: Vec<ObjPath> = self
            .existing
            .into_iter()
            .filter(|(h, k, _)| !retained.keep.contains(&(*h, *k)))
            .map(|(_, _, p)| p)
            .collect();
        rep.pointers_removed = stale.len() as u64;
        remote.delete_many(stale)
    }
}

/// Splits `items` into runs whose `size` sums stay under `max` (a single larger item is a run).
pub(crate) fn batches<T>(items: &[T], size: impl Fn(&T) -> u64, max: u64) -> Vec<&[T]> {
    let mut out = Vec::new();
    let (mut start, mut sum) = (0, 0);
    for (i, x) in items.iter().enumerate() {
        let s = size(x);
        if i > start && sum + s > max {
            out.push(&items[start..i]);
            (start, sum) = (i, 0);
        }
        sum += s;
    }
    if start < items.len() {
        out.push(&items[start..]);
    }
    out
}

fn progress_bar(show: bool, len: u64, name: &str) -> ProgressBar {
    use std::io::IsTerminal;
    if !show || !std::io::stderr().is_terminal() || len == 0 {
        return ProgressBar::hidden();
    }
    let pb = ProgressBar::new(len);
    if let Ok(st) = ProgressStyle::with_template(
        "push {prefix} [{bar:30}] {pos}/{len} records, {msg} eta {eta}",
    ) {
        pb.set_style(st.progress_chars("=> "));
    }
    pb.set_prefix(name.to_string());
    pb
}

#[cfg(test)]
mod tests {
    use super::batches;

    #[test]
    fn batches_respect_the_byte_budget() {
        let xs = [5u64, 5, 5, 20, 1, 1];
        let b = batches(&xs, |x| *x, 10);
        assert_eq!(b, vec![&xs[0..2], &xs[2..3], &xs[3..4], &xs[4..6]]);
        assert!(batches(&[] as &[u64], |x| *x, 10).is_empty());
    }
}
