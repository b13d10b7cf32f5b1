//! The namespace part of a record: the operations and file sizes that turn the last height's
//! namespace into this one's. After a walk they come from every path of the volume; on a
//! height kept from events, only from the paths the patches changed ([`Scan::changed`]), so
//! the cost follows what changed, not the number of files.
use super::*;

/// What a cut's namespace changes in the cutter's view of the last height once committed
/// ([`Cutter::adopt`]). Its operations went into the record as they were made (on a full cut,
/// one per path of the volume); the namespace itself is the log's tip, which the commit brings
/// up to date: no copy of it is built here.
pub(super) struct NextNs {
    /// Paths it was built from: every path of the volume, or the changed ones.
    pub paths: usize,
    view: View,
}

#[derive(Clone)]
enum View {
    /// Every path: the sizes (by id) and live identities as they are now, sorted: at a full
    /// cut of 10^6 files two hash maps took 71 MiB, the vectors 32.
    Whole {
        sizes: Vec<(FileId, u64)>,
        live: Vec<Identity>,
    },
    /// The changed paths only: the sizes of the files there, the identities found there,
    /// and the files no path holds any more.
    Changed {
        sizes: FastMap<FileId, u64>,
        present: FastSet<Identity>,
        dead: FastMap<FileId, Identity>,
    },
}

impl NextNs {
    /// Whether file `id` is in the namespace recorded (extents of the others are dropped:
    /// their file vanished between the phases). `tip` is the last height's state.
    pub fn holds(&self, tip: &TreeState, id: FileId) -> bool {
        match &self.view {
            View::Whole { sizes, .. } => sizes.binary_search_by_key(&id, |s| s.0).is_ok(),
            View::Changed { sizes, dead, .. } => {
                sizes.contains_key(&id) || (tip.file(id).is_some() && !dead.contains_key(&id))
            }
        }
    }
}

/// Debug builds, and `BTM_CHECK_RECORD=1`, build every record of a height kept from events
/// both ways and fail the cut when they differ (the tests run this way).
fn check_records() -> bool {
    cfg!(debug_assertions) || std::env::var("BTM_CHECK_RECORD").is_ok_and(|v| v == "1")
}

/// Where a namespace's operations go as they are made: the record's [`RecordOps`], or a
/// vector.
type OpSink<'a> = &'a mut dyn FnMut(NsOp) -> Result<(), LogError>;

impl Cutter {
    /// The namespace of this cut, from the paths the patches changed when the scan tracked
    /// them (else from every path), against `tip`, the log's state at the last height; its
    /// operations go to `out`.
    pub(super) fn next_namespace(
        &mut self,
        scan2: &Scan,
        full: bool,
        ids: &mut CutIds,
        tip: &TreeState,
        out: &mut RecordOps,
    ) -> Result<NextNs> {
        let Some(changed) = scan2.changed.as_ref().filter(|_| !full) else {
            return self.whole_namespace(scan2, full, ids, tip, &mut |op| out.push(&op));
        };
        let (ops, next) = self.changed_namespace(scan2, changed, ids, tip);
        if check_records() {
            let mut whole_ops = Vec::new();
            let whole = self.whole_namespace(scan2, full, ids, tip, &mut |op| {
                whole_ops.push(op);
                Ok(())
            })?;
            self.same_view((&ops, &next), (&whole_ops, &whole), ids)?;
        }
        for op in &ops {
            out.push(op)?;
        }
        Ok(next)
    }

    /// Every path of `scan2`.
    fn whole_namespace(
        &mut self,
        scan2: &Scan,
        full: bool,
        ids: &mut CutIds,
        tip: &TreeState,
        out: OpSink,
    ) -> Result<NextNs> {
        // Both sides stream by in path order and are compared as they go: a copy of the new
        // side (an entry per path) cost 117 MiB in a baseline of 10^6 files.
        // At most one of each per path.
        let mut sizes: Vec<(FileId, u64)> = Vec::with_capacity(scan2.entries.len());
        let mut live: Vec<Identity> = Vec::with_capacity(scan2.entries.len());
        let was = tip.entries();
        let now = scan2.entries.iter().map(|(path, e)| {
            let entry = self.entry_of(path, e, full, ids, tip);
            if let (Kind::File { ident, size }, Entry::File { id, .. }) = (&e.kind, &entry) {
                live.push(*ident);
                sizes.push((*id, *size));
            }
            (path, entry)
        });
        ops_between(was, now, out)?;
        // A file's links give it once per path, with the same id and size.
        sizes.sort_unstable();
        sizes.dedup_by_key(|s| s.0);
        sizes.shrink_to_fit();
        live.sort_unstable();
        live.dedup();
        live.shrink_to_fit();
        // A full cut rewrote every byte below the size (holes as zeros): the size is all
        // that is left to set.
        set_sizes(&sizes, full, tip, out)?;
        Ok(NextNs {
            paths: scan2.entries.len(),
            view: View::Whole { sizes, live },
        })
    }

    /// Only the paths in `changed`: every other entry is as the last height recorded it. Its
    /// operations, few, are returned as values.
    fn changed_namespace(
        &mut self,
        scan2: &Scan,
        changed: &BTreeSet<RelPath>,
        ids: &mut CutIds,
        tip: &TreeState,
    ) -> (Vec<NsOp>, NextNs) {
        let (mut before, mut after) = (BTreeMap::new(), BTreeMap::new());
        let mut sizes = FastMap::default();
        let mut present = FastSet::default();
        for path in changed {
            if let Some(e) = tip.entry(path) {
                before.insert(path.clone(), e);
            }
            if let Some(e) = scan2.entries.get(path) {
                let entry = self.entry_of(path, e, false, ids, tip);
                if let (Kind::File { ident, size }, Entry::File { id, .. }) = (&e.kind, &entry) {
                    present.insert(*ident);
                    sizes.insert(*id, *size);
                }
                after.insert(path.clone(), entry);
            }
        }
        let mut ops = namespace_ops(&before, &after);
        let mut by_id: Vec<(FileId, u64)> = sizes.iter().map(|(&i, &s)| (i, s)).collect();
        by_id.sort_unstable();
        set_sizes(&by_id, false, tip, &mut |op| {
            ops.push(op);
            Ok(())
        })
        .expect("a vector takes every operation");
        // A file whose entry went is gone unless another of its links holds it: those are
        // looked for in one pass over the scan, only when there are any.
        let mut gone: FastSet<Identity> = (scan2.dropped.iter())
            .filter(|i| !present.contains(*i))
            .copied()
            .collect();
        if !gone.is_empty() {
            for e in scan2.entries.values() {
                if let Kind::File { ident, .. } = &e.kind {
                    gone.remove(ident);
                }
            }
        }
        let dead = (gone.into_iter())
            .filter_map(|i| self.ids.get(&i).map(|id| (*id, i)))
            .collect();
        let next = NextNs {
            paths: changed.len(),
            view: View::Changed {
                sizes,
                present,
                dead,
            },
        };
        (ops, next)
    }

    /// The log's entry for scan entry `e` at `path` (a file gets its id).
    fn entry_of(
        &mut self,
        path: &[u8],
        e: &ScanEntry,
        full: bool,
        ids: &mut CutIds,
        tip: &TreeState,
    ) -> Entry {
        match &e.kind {
            Kind::Dir { .. } => Entry::Dir {
                mode: e.mode,
                uid: e.uid,
                gid: e.gid,
            },
            Kind::Symlink { target } => Entry::Symlink {
                target: target.clone(),
                uid: e.uid,
                gid: e.gid,
            },
            Kind::File { ident, .. } => Entry::File {
                id: self.id_for(ident, path, full, ids, tip),
                mode: e.mode,
                uid: e.uid,
                gid: e.gid,
            },
        }
    }

    /// Takes the ids a committed record describes as the last height's (its namespace and
    /// sizes are the log's tip now).
    pub(super) fn adopt(&mut self, next: NextNs, ids: CutIds, full: bool) {
        self.ids = self.adopted(next.view, ids, full);
    }

    /// What [`Cutter::adopt`] sets: the ids after `view`.
    fn adopted(&mut self, view: View, ids: CutIds, full: bool) -> IdMap {
        let mut own = std::mem::take(&mut self.ids);
        match view {
            View::Whole { live, .. } => {
                // A full cut assigned every id this cut; otherwise the kept ones stand beside
                // the new ones (see `id_for`).
                if full {
                    own = ids.map.into_iter().collect();
                } else {
                    own.extend(ids.map);
                }
                own.retain(|ident, _| live.binary_search(ident).is_ok());
            }
            View::Changed { present, dead, .. } => {
                for (_, ident) in dead {
                    own.remove(&ident);
                }
                // Ids handed out for files that vanished before the record are not kept.
                own.extend(ids.map.into_iter().filter(|(i, _)| present.contains(i)));
            }
        }
        own
    }

    /// Fails when the record built from the changed paths and the one built from every path
    /// differ, in operations (which make the namespace and sizes the log keeps) or in the
    /// ids they leave.
    fn same_view(
        &mut self,
        (changed_ops, changed): (&[NsOp], &NextNs),
        (whole_ops, whole): (&[NsOp], &NextNs),
        ids: &CutIds,
    ) -> Result<()> {
        if changed_ops != whole_ops {
            bail!(
                "internal error: the record from the changed paths differs from the walk's: \
                 {changed_ops:?} against {whole_ops:?}"
            );
        }
        let own = self.ids.clone();
        let mut left = Vec::new();
        for next in [changed, whole] {
            left.push(self.adopted(next.view.clone(), ids.clone(), false));
            self.ids = own.clone();
        }
        if left[0] != left[1] {
            bail!("internal error: the ids from the changed paths differ from the walk's");
        }
        Ok(())
    }
}

/// Size operations for the files in `sizes` (sorted by id) whose size the last height (`tip`)
/// does not have (all of them on a full cut), to `out`.
fn set_sizes(
    sizes: &[(FileId, u64)],
    full: bool,
    tip: &TreeState,
    out: OpSink,
) -> Result<(), LogError> {
    (sizes.iter())
        .filter(|(i, s)| full || tip.file(*i).map(|f| f.size) != Some(*s))
        .try_for_each(|&(id, size)| out(NsOp::SetSize { id, size }))
}

/// Namespace operations that turn `prev` into `next`: removals first (the top-most removed path
/// only), then puts in path order so parents precede children.
pub fn namespace_ops(
    prev: &BTreeMap<RelPath, Entry>,
    next: &BTreeMap<RelPath, Entry>,
) -> Vec<NsOp> {
    fn item<'a>((p, e): (&'a RelPath, &Entry)) -> (&'a [u8], Entry) {
        (p.as_slice(), e.clone())
    }
    let mut ops = Vec::new();
    ops_between(prev.iter().map(item), next.iter().map(item), &mut |op| {
        ops.push(op);
        Ok(())
    })
    .expect("a vector takes every operation");
    ops
}

/// [`namespace_ops`] over two sides given in path order, merged in one pass (so neither side
/// is copied: the tip's side streams from the log's state, the new side from the scan), each
/// operation handed to `out` as it is made.
/// Removes and puts come in path order: a put depends only on its own path and its
/// ancestors, which sort before it, and a remove below a removed directory is left out.
fn ops_between<'a, P, N>(prev: P, next: N, out: OpSink) -> Result<(), LogError>
where
    P: Iterator<Item = (&'a [u8], Entry)>,
    N: Iterator<Item = (&'a [u8], Entry)>,
{
    use std::cmp::Ordering::{Equal, Greater, Less};
    let mut removed: HashSet<&[u8]> = HashSet::new();
    let under_removed = |removed: &HashSet<&[u8]>, p: &[u8]| {
        !removed.is_empty() && ancestors(p).any(|a| removed.contains(a))
    };
    let gone = |out: OpSink, removed: &mut HashSet<&'a [u8]>, p: &'a [u8]| {
        let r = match under_removed(removed, p) {
            false => out(NsOp::Remove { path: p.to_vec() }),
            true => Ok(()),
        };
        removed.insert(p);
        r
    };
    let is_dir = |e: &Entry| matches!(e, Entry::Dir { .. });
    let (mut prev, mut next) = (prev.peekable(), next.peekable());
    loop {
        let order = match (prev.peek(), next.peek()) {
            (None, None) => break,
            (Some(_), None) => Less,
            (None, Some(_)) => Greater,
            (Some((p, _)), Some((q, _))) => p.cmp(q),
        };
        match order {
            Less => {
                let (p, _) = prev.next().expect("peeked");
                gone(out, &mut removed, p)?;
            }
            Greater => {
                let (q, entry) = next.next().expect("peeked");
                out(NsOp::Put {
                    path: q.to_vec(),
                    entry,
                })?;
            }
            Equal => {
                let ((p, old), (_, entry)) =
                    (prev.next().expect("peeked"), next.next().expect("peeked"));
                let retyped = is_dir(&old) != is_dir(&entry);
                if retyped {
                    gone(out, &mut removed, p)?;
                }
                if retyped || old != entry || under_removed(&removed, p) {
                    out(NsOp::Put {
                        path: p.to_vec(),
                        entry,
                    })?;
                }
            }
        }
    }
    Ok(())
}
