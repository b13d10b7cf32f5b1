//! Reading ahead: payloads replay will ask for next are downloaded before it asks, several
//! neighbours in a pack in one range request, so a restore is not one round trip per payload.

use std::collections::HashMap;

use object_store::path::Path as ObjPath;

use super::{Obj, RemoteSource};
use crate::error::RemoteError;
use crate::pack::{Loc, pack_path};
use btm_log::{LogError, Node, PayloadRef, TreeState};

/// The payloads one download holds: where in its bytes (`None`: all of them, a loose object).
type Parts = Vec<([u8; 32], Option<std::ops::Range<usize>>)>;

type Pending = tokio::task::JoinHandle<std::result::Result<Option<bytes::Bytes>, crate::Fetch>>;

/// Read-ahead state: payload hashes in replay order, and downloads in flight. A download is a
/// loose object, or one range of a pack covering several payloads replay asks for one after
/// the other (packs hold a record's payloads in the order of the log, which is mostly the
/// order of the files).
#[derive(Default)]
pub(super) struct Ahead {
    order: Vec<[u8; 32]>,
    pos: HashMap<[u8; 32], usize>,
    next: usize,
    /// Which download holds each payload in flight.
    inflight: HashMap<[u8; 32], u64>,
    /// Downloads in flight, with the payloads they hold (`None`: a whole loose object).
    tasks: HashMap<u64, (Pending, Parts)>,
    /// Payloads a finished range download brought before replay asked for them.
    ready: HashMap<[u8; 32], bytes::Bytes>,
    next_task: u64,
    window: usize,
    /// `order` is the whole state's (an empty target); else replay names what it will load
    /// next, file by file ([`PayloadSource::prefetch`]).
    whole_state: bool,
}

/// How far ahead in replay's order a read-ahead range looks for payloads of its pack.
const RUN_LOOKAHEAD: usize = 4096;
/// A read-ahead range of a pack holds at most this many bytes.
const RUN_BYTES: u64 = 8 << 20;
/// Bytes between two payloads of one range that are downloaded and thrown away rather than
/// cost another request.
const RUN_GAP: u64 = 16 << 10;

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
    pub(super) fn new(state: &TreeState) -> Ahead {
        let mut paths: Vec<&[u8]> = state.nodes.keys().collect();
        paths.sort_by(|a, b| btm_log::cmp_components(a, b));
        let mut a = Ahead {
            window: read_ahead(),
            whole_state: true,
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
    /// The payload object's bytes (a loose object, or its entry in a pack): from the cache, a
    /// read-ahead download, or a new one; then starts the next read-ahead downloads. Opened
    /// (keyed store: authenticated under the remote key) but not yet checked against its hash.
    /// Also says whether it came from the cache (or was counted already) and how many bytes
    /// were downloaded for it.
    pub(super) fn object(
        &self,
        path: &ObjPath,
        hash: &[u8; 32],
    ) -> Result<(Obj, bool, u64), LogError> {
        let open = |stored: bytes::Bytes| -> Result<Obj, LogError> {
            let plain = self
                .remote
                .unseal(path, stored.clone())
                .map_err(|e| LogError::Source(format!("offsite copy: {e:#}")))?;
            Ok(Obj { stored, plain })
        };
        let source = |e: RemoteError| LogError::Source(format!("offsite copy: {e:#}"));
        if let Some(b) = self.remote.cache_get(path) {
            return Ok((open(b)?, true, 0));
        }
        // Counted (and not cached on disk) when it was fetched for its table.
        if let Some(o) = self.small.borrow_mut().take(hash) {
            return Ok((o, true, 0));
        }
        let (mine, ready) = {
            let mut a = self.ahead.borrow_mut();
            if let Some(&i) = a.pos.get(hash) {
                a.next = a.next.max(i + 1);
            }
            let ready = a.ready.remove(hash);
            let mine = a.inflight.remove(hash).and_then(|id| a.tasks.remove(&id));
            self.start_downloads(&mut a);
            (mine, ready)
        };
        if let Some(b) = ready {
            return Ok((open(b)?, false, 0));
        }
        let Some((task, parts)) = mine else {
            let b = match self.locs.get(hash) {
                Some(loc) => self
                    .remote
                    .get_range(&pack_path(&loc.pack), loc.offset..loc.offset + loc.len),
                None => self.remote.get(path),
            }
            .map_err(source)?;
            let n = b.len() as u64;
            return Ok((open(b)?, false, n));
        };
        let got = self
            .remote
            .rt
            .block_on(task)
            .map_err(|e| LogError::Source(format!("offsite copy: download task: {e}")))?
            .map_err(|f| {
                // A range of a pack, or a loose object.
                let at = self.locs.get(hash).map(|l| pack_path(&l.pack));
                self.remote.fetch_failed(at.as_ref().unwrap_or(path), f)
            })
            .and_then(|b| {
                b.ok_or_else(|| {
                    RemoteError::Missing(format!(
                        "object {path} on {} is missing: run `btm-agent push` from the source \
                         log again",
                        self.remote.url()
                    ))
                })
            })
            .map_err(source)?;
        let n = got.len() as u64;
        let mut a = self.ahead.borrow_mut();
        let mut own = None;
        for (h, range) in parts {
            a.inflight.remove(&h);
            let b = match range {
                None => got.clone(),
                Some(r) if r.end <= got.len() => got.slice(r),
                Some(_) => {
                    return Err(source(RemoteError::Damaged(format!(
                        "a pack on {} is shorter than the record's pack index says: the remote \
                         is damaged; repair it with `btm-agent push --verify`",
                        self.remote.url()
                    ))));
                }
            };
            if h == *hash {
                own = Some(b);
            } else {
                a.ready.insert(h, b);
            }
        }
        drop(a);
        let b = own.expect("the download holds the payload it was started for");
        Ok((open(b)?, false, n))
    }

    /// Starts read-ahead downloads up to the window: for a payload in a pack, one range
    /// covering it and the payloads replay asks for next when they follow it in that pack.
    pub(super) fn start_downloads(&self, a: &mut Ahead) {
        while a.tasks.len() < a.window && a.next < a.order.len() {
            let h = a.order[a.next];
            a.next += 1;
            let skip = |a: &Ahead, h: &[u8; 32]| {
                a.inflight.contains_key(h)
                    || a.ready.contains_key(h)
                    || self.remote.cache_has(&self.remote.object_path(h))
            };
            if skip(a, &h) {
                continue;
            }
            let store = self.remote.store.clone();
            let (task, parts) = match self.locs.get(&h) {
                None => {
                    let p = self.remote.object_path(&h);
                    let t = self
                        .remote
                        .rt
                        .spawn(async move { crate::fetch_capped(&*store, &p).await });
                    (t, vec![(h, None)])
                }
                Some(loc) => {
                    let (start, mut end) = (loc.offset, loc.offset + loc.len);
                    let mut parts = vec![(h, Some(0..loc.len as usize))];
                    // The payloads replay asks for soon that follow this one in its pack,
                    // by offset: replay's order interleaves packs (a file changed at several
                    // heights), a pack's order is the log's.
                    let soon = &a.order[a.next..(a.next + RUN_LOOKAHEAD).min(a.order.len())];
                    let mut more: Vec<([u8; 32], Loc)> = soon
                        .iter()
                        .filter_map(|h2| Some((*h2, *self.locs.get(h2)?)))
                        .filter(|(h2, l)| l.pack == loc.pack && l.offset >= end && !skip(a, h2))
                        .collect();
                    more.sort_by_key(|(_, l)| l.offset);
                    for (h2, l) in more {
                        if l.offset < end {
                            continue;
                        }
                        if l.offset > end + RUN_GAP || l.offset + l.len - start > RUN_BYTES {
                            break;
                        }
                        let at = (l.offset - start) as usize;
                        parts.push((h2, Some(at..at + l.len as usize)));
                        end = l.offset + l.len;
                    }
                    let p = pack_path(&loc.pack);
                    let t = self.remote.rt.spawn(async move {
                        use object_store::ObjectStoreExt;
                        store
                            .get_range(&p, start..end)
                            .await
                            .map(Some)
                            .map_err(crate::Fetch::Store)
                    });
                    (t, parts)
                }
            };
            let id = a.next_task;
            a.next_task += 1;
            for (h, _) in &parts {
                a.inflight.insert(*h, id);
            }
            a.tasks.insert(id, (task, parts));
        }
    }

    /// Into a tree that is not empty: starts downloading `next`, the payloads of a file
    /// replay found different, in its order (an empty target's order is the whole state's).
    pub(super) fn read_ahead_of(&self, next: &[PayloadRef]) {
        let mut a = self.ahead.borrow_mut();
        if a.whole_state {
            return;
        }
        a.window = read_ahead();
        a.order = next.iter().map(|p| p.hash).collect();
        a.pos = a.order.iter().enumerate().map(|(i, h)| (*h, i)).collect();
        a.next = 0;
        self.start_downloads(&mut a);
    }
}
