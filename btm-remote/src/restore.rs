//! Restore from an offsite copy: list volumes and heights, and replay a height into a directory
//! with the local replayer, downloading only payloads whose bytes differ there.

use std::cell::RefCell;
use std::collections::HashMap;
use std::path::Path;

use crate::error::{RemoteError, Result, fail};
use object_store::path::Path as ObjPath;

use super::Remote;
use super::layout::{self, Pointer, RecordObj};
use btm_log::{
    LogError, Meta, Node, PayloadRef, PayloadSource, ReplayOptions, ReplayStats, TreeState, hex,
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
    let mut out = Vec::new();
    for ((h, k, p), b) in names.into_iter().zip(bodies) {
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
    read: RefCell<(u64, u64)>,
    ahead: RefCell<Ahead>,
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

/// Objects up to this size are fetched whole when only their block table is asked for: a
/// request costs more than the bytes.
const SMALL_OBJECT: u64 = 64 << 10;
/// Memory for kept small objects.
const SMALL_KEPT: usize = 256;
/// Bytes (as stored plus opened) of kept objects: large sealed objects are kept too.
const KEPT_BYTES: usize = 160 << 20;

type Pending = tokio::task::JoinHandle<std::result::Result<Option<bytes::Bytes>, super::Fetch>>;

/// Read-ahead state: payload hashes in replay order, and downloads in flight.
#[derive(Default)]
struct Ahead {
    order: Vec<[u8; 32]>,
    pos: HashMap<[u8; 32], usize>,
    next: usize,
    inflight: HashMap<[u8; 32], Pending>,
    window: usize,
}

/// Downloads in flight at once while reading ahead (`BTM_REMOTE_READ_AHEAD`, default 32: many
/// payloads are a few 4 KiB blocks, so round trips, not bytes, bound a restore; 0 turns
/// reading ahead off).
fn read_ahead() -> usize {
    std::env::var("BTM_REMOTE_READ_AHEAD")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(32)
}

impl Ahead {
    /// Payloads in the order replay asks for them (paths in replay's order, pieces by offset),
    /// each once.
    fn new(state: &TreeState) -> Ahead {
        let mut paths: Vec<&Vec<u8>> = state.nodes.keys().collect();
        paths.sort_by(|a, b| btm_log::cmp_components(a, b));
        let mut a = Ahead {
            window: read_ahead(),
            ..Default::default()
        };
        for p in paths {
            if let Some(Node::File(id)) = state.nodes.get(p)
                && let Some(f) = state.files.get(id)
            {
                for piece in f.pieces.values() {
                    let h = piece.payload.hash;
                    if !a.pos.contains_key(&h) {
                        a.pos.insert(h, a.order.len());
                        a.order.push(h);
                    }
                }
            }
        }
        a
    }
}

impl RemoteSource<'_> {
    /// The object's bytes: from the cache, a read-ahead download, or a new one; then starts
    /// the next read-ahead downloads.
    /// Opened (keyed store: authenticated under the remote key) but not yet checked against
    /// its hash.
    fn object(&self, path: &ObjPath, hash: &[u8; 32]) -> Result<(Obj, bool), LogError> {
        let open = |stored: bytes::Bytes| -> Result<Obj, LogError> {
            let plain = self
                .remote
                .unseal(path, stored.clone())
                .map_err(|e| LogError::Source(format!("offsite copy: {e:#}")))?;
            Ok(Obj { stored, plain })
        };
        if let Some(b) = self.remote.cache_get(path) {
            return Ok((open(b)?, true));
        }
        // Counted (and not cached on disk) when it was fetched for its table.
        if let Some(o) = self.small.borrow_mut().take(hash) {
            return Ok((o, true));
        }
        let mine = {
            let mut a = self.ahead.borrow_mut();
            if let Some(&i) = a.pos.get(hash) {
                a.next = a.next.max(i + 1);
            }
            let mine = a.inflight.remove(hash);
            while a.inflight.len() < a.window && a.next < a.order.len() {
                let h = a.order[a.next];
                a.next += 1;
                let p = self.remote.object_path(&h);
                if a.inflight.contains_key(&h) || self.remote.cache_has(&p) {
                    continue;
                }
                let store = self.remote.store.clone();
                let task = self
                    .remote
                    .rt
                    .spawn(async move { super::fetch_capped(&*store, &p).await });
                a.inflight.insert(h, task);
            }
            mine
        };
        let got = match mine {
            Some(task) => self
                .remote
                .rt
                .block_on(task)
                .map_err(|e| LogError::Source(format!("offsite copy: download task: {e}")))?
                .map_err(|f| self.remote.fetch_failed(path, f))
                .and_then(|b| {
                    b.ok_or_else(|| {
                        RemoteError::Missing(format!(
                            "object {path} on {} is missing: run `btm-agent push` from the \
                             source log again",
                            self.remote.url()
                        ))
                    })
                }),
            None => self.remote.get(path),
        };
        let b = got.map_err(|e| LogError::Source(format!("offsite copy: {e:#}")))?;
        Ok((open(b)?, false))
    }

    fn fetch(&self, p: &PayloadRef) -> Result<Vec<u8>, Result<String, LogError>> {
        let path = self.remote.object_path(&p.hash);
        let (o, from_cache) = self.object(&path, &p.hash).map_err(Err)?;
        let checked = super::decode_object(&o.plain, &p.hash, Some(p.raw_len));
        match checked {
            Ok(raw) => {
                // Downloads only: cache hits and objects counted by `load_table` are not.
                if !from_cache {
                    let mut r = self.read.borrow_mut();
                    r.0 += 1;
                    r.1 += o.stored.len() as u64;
                    self.remote.cache_put(&path, &o.stored);
                }
                Ok(raw)
            }
            Err(why) => Err(Ok(format!(
                "remote object {path} on {} is damaged ({why}); repair it with `btm-agent push \
                 --verify` from the source log",
                self.remote.url()
            ))),
        }
    }
}

impl PayloadSource for RemoteSource<'_> {
    fn load_payload(&self, p: &PayloadRef) -> Result<Vec<u8>, Result<String, LogError>> {
        self.fetch(p)
    }

    fn load_table(&self, p: &PayloadRef) -> Result<Vec<u8>, LogError> {
        let path = self.remote.object_path(&p.hash);
        let range = layout::object_table_range(p.raw_len);
        // A sealed object only opens whole: no range reads of tables in a keyed store.
        if p.raw_len <= SMALL_OBJECT || self.remote.keyed() {
            let (o, from_cache) = self.object(&path, &p.hash)?;
            let table = o
                .plain
                .get(layout::OBJ_HEADER_LEN as usize..range.end as usize)
                .map(<[u8]>::to_vec)
                .unwrap_or_default();
            if !from_cache {
                let mut r = self.read.borrow_mut();
                r.0 += 1;
                r.1 += o.stored.len() as u64;
            }
            self.small.borrow_mut().keep(p.hash, o);
            return Ok(table);
        }
        let b = match self.remote.cache_get(&path) {
            Some(b) if b.len() as u64 >= range.end => {
                b.slice(range.start as usize..range.end as usize)
            }
            _ => self
                .remote
                .get_range(&path, range.clone())
                .map_err(|e| LogError::Source(format!("offsite copy: {e:#}")))?,
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
    // Read ahead only into an empty target: elsewhere most payloads are already there and
    // downloading them ahead would waste the transfer.
    let empty = std::fs::read_dir(into).map_or(true, |mut d| d.next().is_none());
    let src = RemoteSource {
        remote,
        read: RefCell::new((0, 0)),
        small: RefCell::new(Kept::default()),
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
        .map(|p| btm_log::display_path(p))
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
