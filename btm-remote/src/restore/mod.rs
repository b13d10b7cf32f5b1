//! Restore from an offsite copy: list volumes and heights, and replay a height into a directory
//! with the local replayer, downloading only payloads whose bytes differ there.

use std::cell::RefCell;
use std::collections::HashMap;
use std::path::Path;

use crate::error::{RemoteError, Result, fail};
use object_store::path::Path as ObjPath;

mod ahead;

use ahead::Ahead;

use super::Remote;
use super::layout::{self, Pointer, RecordObj};
use super::pack::{Loc, pack_path};
use btm_log::{
    LogError, Meta, PayloadRef, PayloadSource, ReplayOptions, ReplayStats, TreeState, hex,
    resolve_height,
};

/// A height as the remote lists it.
#[derive(Clone, Debug, serde::Serialize)]
pub struct RemoteHeight {
    pub height: u64,
    pub record: String,
    pub time_unix_ms: u64,
    pub tag: Option<String>,
    pub meta: Option<serde_json::Value>,
    /// Globs the push left out (`--exclude`).
    pub excluded: Vec<String>,
    /// The volume's log pinned this height (`btm-agent pin`): no push deletes its pointer.
    pub pinned: bool,
}

/// Volume names under the remote.
pub fn list_volumes(remote: &Remote) -> Result<Vec<String>> {
    remote.check_layout(false)?;
    let mut v: Vec<String> = remote
        .list_dirs(&ObjPath::from("volumes"))?
        .into_iter()
        .filter_map(|p| p.filename().map(str::to_string))
        .collect();
    v.sort();
    Ok(v)
}

/// `name` if given, else the only volume on the remote.
pub fn resolve_volume(remote: &Remote, name: Option<&str>) -> Result<String> {
    if let Some(n) = name {
        layout::check_volume_name(n).map_err(RemoteError::Refused)?;
        return Ok(n.to_string());
    }
    let vs = list_volumes(remote)?;
    match vs.as_slice() {
        [one] => Ok(one.clone()),
        [] => fail!(
            NotFound,
            "{} holds no volumes: push one first (`btm-agent push --log LOGDIR --remote URL`)",
            remote.url()
        ),
        _ => fail!(
            NotFound,
            "{} holds several volumes ({}): say which with --remote-name",
            remote.url(),
            vs.join(", ")
        ),
    }
}

/// The pointers of a volume (one per kept height), read `concurrency` at a time, optionally
/// only those tagged `tag`. Ascending by height.
pub fn list_heights(remote: &Remote, name: &str, tag: Option<&str>) -> Result<Vec<RemoteHeight>> {
    remote.check_layout(false)?;
    let mut names = remote.pointers(name)?;
    names.sort_by_key(|(h, _, _)| *h);
    // Two pointers for one height (a push replacing a compacted record was interrupted) name
    // the same tree; keep the newer listing entry.
    names.dedup_by_key(|(h, _, _)| *h);
    let paths: Vec<ObjPath> = names.iter().map(|(_, _, p)| p.clone()).collect();
    let bodies = remote.get_many(&paths)?;
    // By name only: a damaged pin must not stop a restore (`verify --remote` checks them).
    let pins = crate::pins::listed(remote, name)?;
    let mut out = Vec::new();
    for ((h, k, p), b) in names.into_iter().zip(bodies) {
        // Removed since the listing (its height is no longer kept): not listed.
        let Some(b) = b else { continue };
        let ptr: Pointer = remote.decode_pointer(&p, b)?;
        if ptr.height != h || layout::parse_hex32(&ptr.record) != Some(k) {
            fail!(
                Damaged,
                "{p} on {} does not match its name (height {}, record {}): the remote is damaged",
                remote.url(),
                ptr.height,
                ptr.record
            );
        }
        if tag.is_some_and(|t| ptr.tag.as_deref() != Some(t)) {
            continue;
        }
        out.push(RemoteHeight {
            height: h,
            record: ptr.record,
            time_unix_ms: ptr.time_unix_ms,
            tag: ptr.tag,
            meta: ptr.meta,
            excluded: ptr.excluded,
            pinned: pins.contains_key(&h),
        });
    }
    Ok(out)
}

/// Downloads and checks the record objects of the chain ending at `key`, oldest first.
pub(crate) fn fetch_chain(remote: &Remote, key: [u8; 32]) -> Result<Vec<RecordObj>> {
    let mut chain = Vec::new();
    let mut next = key;
    while next != [0u8; 32] {
        let p = layout::record_path(&next);
        let cached = remote.cache_get(&p);
        let from_cache = cached.is_some();
        let b = match cached {
            Some(b) => b,
            None => remote.get(&p)?,
        };
        let rec = match remote.decode_record(&p, b.clone(), &next) {
            Ok(r) => r,
            Err(e) if !from_cache => return Err(e),
            // A damaged cache entry: fetch it again.
            Err(_) => remote.decode_record(&p, remote.get(&p)?, &next)?,
        };
        if !from_cache {
            remote.cache_put(&p, &b);
        }
        if let Some(later) = chain.last().map(|r: &RecordObj| r.height)
            && rec.height >= later
        {
            fail!(
                Damaged,
                "record object {p} on {} breaks the chain (height {} before {later})",
                remote.url(),
                rec.height
            );
        }
        next = rec.prev;
        chain.push(rec);
    }
    chain.reverse();
    Ok(chain)
}

/// The folded state at the end of `chain`.
pub(crate) fn fold(chain: &[RecordObj]) -> Result<TreeState> {
    let mut st = TreeState::default();
    for r in chain {
        let meta = Meta::decode(&r.meta).map_err(|e| {
            RemoteError::Damaged(format!(
                "metadata of height {} on the remote: {e:?}",
                r.height
            ))
        })?;
        st.apply(r.height, &meta.ops, &meta.extents)?;
    }
    Ok(st)
}

/// Payloads from the remote, checked against their names. Into an empty target every payload
/// is needed, in the order replay walks the tree: the next few are then downloaded ahead, so a
/// restore is not one round trip per payload.
struct RemoteSource<'a> {
    remote: &'a Remote,
    /// Layout 3: where each payload of the chain lies in its packs (from the records' pack
    /// indexes); a payload not here is a loose object (layouts 1 and 2).
    locs: HashMap<[u8; 32], Loc>,
    /// Payloads read and bytes downloaded.
    read: RefCell<(u64, u64)>,
    ahead: RefCell<Ahead>,
    /// Block tables read so far: a large payload that later heights cut into many pieces is
    /// compared piece by piece, each asking for the same table.
    tables: RefCell<Tables>,
    /// Small objects fetched whole for their block table (in a keyed store, every object: a
    /// sealed object only opens whole), kept for the payload read that often follows (one
    /// request instead of two).
    small: RefCell<Kept>,
}

/// An object as stored and as opened (the same bytes in a plaintext store).
struct Obj {
    stored: bytes::Bytes,
    plain: bytes::Bytes,
}

/// Objects fetched whole for their table, by content hash, within [`SMALL_KEPT`] objects and
/// [`KEPT_BYTES`] bytes.
#[derive(Default)]
struct Kept {
    map: HashMap<[u8; 32], Obj>,
    bytes: usize,
}

impl Kept {
    fn keep(&mut self, hash: [u8; 32], o: Obj) {
        let n = o.stored.len() + o.plain.len();
        if self.map.len() >= SMALL_KEPT || self.bytes + n > KEPT_BYTES {
            self.map.clear();
            self.bytes = 0;
        }
        self.bytes += n;
        self.map.insert(hash, o);
    }

    fn take(&mut self, hash: &[u8; 32]) -> Option<Obj> {
        let o = self.map.remove(hash)?;
        self.bytes -= o.stored.len() + o.plain.len();
        Some(o)
    }
}

/// Block tables by payload hash, within [`TABLE_BYTES`].
#[derive(Default)]
struct Tables {
    map: HashMap<[u8; 32], Vec<u8>>,
    bytes: usize,
}

/// Memory for block tables (16 bytes per 4 KiB block: 64 MiB covers 16 GiB of payloads).
const TABLE_BYTES: usize = 64 << 20;

/// Objects up to this size are fetched whole when only their block table is asked for: a
/// request costs more than the bytes.
const SMALL_OBJECT: u64 = 64 << 10;
/// Memory for kept small objects.
const SMALL_KEPT: usize = 256;
/// Bytes (as stored plus opened) of kept objects: large sealed objects are kept too.
const KEPT_BYTES: usize = 160 << 20;

impl RemoteSource<'_> {
    fn fetch(&self, p: &PayloadRef) -> Result<Vec<u8>, Result<String, LogError>> {
        let path = self.remote.object_path(&p.hash);
        let (o, from_cache, downloaded) = self.object(&path, &p.hash).map_err(Err)?;
        self.read.borrow_mut().1 += downloaded;
        let checked = super::decode_object(&o.plain, &p.hash, Some(p.raw_len));
        match checked {
            Ok(raw) => {
                // Payloads read from the store: cache hits and objects counted by
                // `load_table` are not.
                if !from_cache {
                    self.read.borrow_mut().0 += 1;
                    self.remote.cache_put(&path, &o.stored);
                }
                Ok(raw)
            }
            Err(why) => Err(Ok(format!(
                "remote {} on {} is damaged ({why}); repair it with `btm-agent push --verify` \
                 from the source log",
                self.describe(&path, &p.hash),
                self.remote.url()
            ))),
        }
    }

    /// How an error names a payload: its loose object, or its entry in a pack.
    fn describe(&self, path: &ObjPath, hash: &[u8; 32]) -> String {
        match self.locs.get(hash) {
            Some(l) => format!(
                "pack {} (entry of payload {} at {}+{})",
                pack_path(&l.pack),
                hex(hash),
                l.offset,
                l.len
            ),
            None => format!("object {path}"),
        }
    }
}

impl PayloadSource for RemoteSource<'_> {
    fn load_payload(&self, p: &PayloadRef) -> Result<Vec<u8>, Result<String, LogError>> {
        self.fetch(p)
    }

    /// Into a tree that is not empty, replay names the payloads of a file that differ once
    /// it compared them: they are read ahead like an empty target's, neighbours in a pack in
    /// one range (a stale tree took one request per differing payload before).
    fn prefetch(&self, next: &[PayloadRef]) {
        self.read_ahead_of(next);
    }

    fn load_table(&self, p: &PayloadRef) -> Result<Vec<u8>, LogError> {
        if let Some(t) = self.tables.borrow().map.get(&p.hash) {
            return Ok(t.clone());
        }
        let t = self.fetch_table(p)?;
        let mut c = self.tables.borrow_mut();
        if c.bytes + t.len() > TABLE_BYTES {
            *c = Tables::default();
        }
        c.bytes += t.len();
        c.map.insert(p.hash, t.clone());
        Ok(t)
    }
}

impl RemoteSource<'_> {
    /// A payload's block table from the store: a range read of its object's (or entry's)
    /// head, or the whole object when small or sealed (kept for the payload read that often
    /// follows).
    fn fetch_table(&self, p: &PayloadRef) -> Result<Vec<u8>, LogError> {
        let path = self.remote.object_path(&p.hash);
        let range = layout::object_table_range(p.raw_len);
        // A sealed object only opens whole: no range reads of tables in a keyed store.
        if p.raw_len <= SMALL_OBJECT || self.remote.keyed() {
            let (o, from_cache, downloaded) = self.object(&path, &p.hash)?;
            let table = o
                .plain
                .get(layout::OBJ_HEADER_LEN as usize..range.end as usize)
                .map(<[u8]>::to_vec)
                .unwrap_or_default();
            let mut r = self.read.borrow_mut();
            r.1 += downloaded;
            if !from_cache {
                r.0 += 1;
            }
            self.small.borrow_mut().keep(p.hash, o);
            return Ok(table);
        }
        // In a pack, the table is at the start of the payload's entry.
        let (store_path, range) = match self.locs.get(&p.hash) {
            Some(l) => (
                pack_path(&l.pack),
                l.offset..l.offset + range.end.min(l.len),
            ),
            None => (path.clone(), range),
        };
        let b = match self.remote.cache_get(&path) {
            Some(b) if b.len() as u64 >= range.end - range.start => {
                b.slice(0..(range.end - range.start) as usize)
            }
            _ => {
                let b = self
                    .remote
                    .get_range(&store_path, range.clone())
                    .map_err(|e| LogError::Source(format!("offsite copy: {e:#}")))?;
                self.read.borrow_mut().1 += b.len() as u64;
                b
            }
        };
        // Unchecked here, like the local table: a wrong entry only makes replay fetch the
        // payload, whose hash is checked.
        Ok(b.get(layout::OBJ_HEADER_LEN as usize..)
            .map(<[u8]>::to_vec)
            .unwrap_or_default())
    }
}

/// What `replay` did, with the remote's view.
#[derive(Clone, Debug, serde::Serialize)]
pub struct RemoteReplay {
    pub volume: String,
    pub height: u64,
    pub records: usize,
    pub objects_downloaded: u64,
    pub bytes_downloaded: u64,
    /// Files, directories and symlinks whose set-uid/set-gid bits or uid/gid 0 ownership were
    /// not restored (see [`Remote::with_restore_privileged`]).
    pub privileges_dropped: u64,
    /// Requests this restore sent, by kind.
    pub requests: crate::RequestCounts,
    pub replay: ReplayStats,
    /// Paths of the height not restored: the push left them out (`--exclude`).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub excluded: Vec<String>,
}

/// Materialises height `to` (or the newest at or below it unless `exact`; the latest when
/// `None`) of volume `name` into `into`, rewriting only what differs.
pub fn replay(
    remote: &Remote,
    name: &str,
    to: Option<u64>,
    exact: bool,
    into: &Path,
    opts: &ReplayOptions,
) -> Result<RemoteReplay> {
    let before = remote.requests();
    let heights = list_heights(remote, name, None)?;
    let hs: Vec<u64> = heights.iter().map(|h| h.height).collect();
    if hs.is_empty() {
        fail!(
            NotFound,
            "volume {name:?} on {} has no heights: push first (`btm-agent push`)",
            remote.url()
        );
    }
    let h = resolve_height(&hs, to, exact)?;
    let by_height: HashMap<u64, &RemoteHeight> = heights.iter().map(|x| (x.height, x)).collect();
    let key = layout::parse_hex32(&by_height[&h].record).expect("checked by list_heights");
    let chain = fetch_chain(remote, key)?;
    let mut state = fold(&chain)?;
    let (excluded, opts) = leave_out(&mut state, &by_height[&h].excluded, opts)?;
    if let Some(c) = &remote.cache {
        btm_log::refuse_inside(c, "cache directory", into)?;
    }
    let privileges_dropped = if remote.privileged {
        0
    } else {
        use std::os::unix::fs::MetadataExt;
        std::fs::create_dir_all(into)
            .map_err(crate::error::io(format!("creating {}", into.display())))?;
        let m = std::fs::metadata(into)
            .map_err(crate::error::io(format!("reading {}", into.display())))?;
        super::unprivileged::strip(&mut state, (m.uid(), m.gid()))
    };
    // Read ahead only into an empty target: elsewhere most payloads are already there and
    // downloading them ahead would waste the transfer.
    let empty = std::fs::read_dir(into).map_or(true, |mut d| d.next().is_none());
    let locs = chain
        .iter()
        .filter_map(|r| r.index.as_ref())
        .flat_map(|i| i.locations())
        .collect();
    let src = RemoteSource {
        remote,
        locs,
        read: RefCell::new((0, 0)),
        small: RefCell::new(Kept::default()),
        tables: RefCell::new(Tables::default()),
        ahead: RefCell::new(if empty {
            Ahead::new(&state)
        } else {
            Ahead::default()
        }),
    };
    let stats = btm_log::replay_state(&src, &state, h, into, &opts)?;
    let (objects, bytes) = *src.read.borrow();
    tracing::debug!(height = h, record = %hex(&key), "replayed from the remote");
    Ok(RemoteReplay {
        volume: name.to_string(),
        height: h,
        records: chain.len(),
        objects_downloaded: objects,
        bytes_downloaded: bytes,
        privileges_dropped,
        requests: remote.requests().since(&before),
        replay: stats,
        excluded,
    })
}

/// Takes the paths a push left out (`--exclude`) out of `state` and keeps the target's own
/// copies of them (replay neither writes nor removes them): their data is not on the remote.
/// Returns those paths, for the report, and the options to replay with.
fn leave_out(
    state: &mut TreeState,
    globs: &[String],
    opts: &ReplayOptions,
) -> Result<(Vec<String>, ReplayOptions)> {
    let mut opts = opts.clone();
    if globs.is_empty() {
        return Ok((Vec::new(), opts));
    }
    let bad = |e: String| RemoteError::Refused(format!("a pointer's excluded globs: {e}"));
    let ex = btm_log::PathGlobs::new(globs).map_err(bad)?;
    let out = (state.nodes.keys())
        .filter(|p| ex.matches(p))
        .map(btm_log::display_path)
        .collect();
    state.nodes.retain(|p, _| !ex.matches(p));
    let both: Vec<String> = opts
        .preserve
        .patterns()
        .iter()
        .chain(globs)
        .cloned()
        .collect();
    opts.preserve = btm_log::PathGlobs::new(&both).map_err(bad)?;
    Ok((out, opts))
}
