//! The namespace part of a record: the operations and file sizes that turn the last height's
//! namespace into this one's. After a walk they come from every path of the volume; on a
//! height kept from events, only from the paths the patches changed ([`Scan::changed`]), so
//! the cost follows what changed, not the number of files.
use super::*;

/// The namespace a cut records, and what it changes in the cutter's view of the last height
/// once committed ([`Cutter::adopt`]).
pub(super) struct NextNs {
    pub ops: Vec<NsOp>,
    /// Paths it was built from: every path of the volume, or the changed ones.
    pub paths: usize,
    view: View,
}

#[derive(Clone)]
enum View {
    /// Every path: the namespace, sizes and live identities as they are now.
    Whole {
        prev: BTreeMap<RelPath, Entry>,
        sizes: FastMap<FileId, u64>,
        live: FastSet<Identity>,
    },
    /// The changed paths only: their entries (None: gone), the sizes of the files there,
    /// the identities found there, and the files no path holds any more.
    Changed {
        entries: Vec<(RelPath, Option<Entry>)>,
        sizes: FastMap<FileId, u64>,
        present: FastSet<Identity>,
        dead: FastMap<FileId, Identity>,
    },
}

impl NextNs {
    /// Whether file `id` is in the namespace recorded (extents of the others are dropped:
    /// their file vanished between the phases). `old` are the last height's sizes.
    pub fn holds(&self, old: &FastMap<FileId, u64>, id: FileId) -> bool {
        match &self.view {
            View::Whole { sizes, .. } => sizes.contains_key(&id),
            View::Changed { sizes, dead, .. } => {
                sizes.contains_key(&id) || (old.contains_key(&id) && !dead.contains_key(&id))
            }
        }
    }
}

/// Debug builds, and `BTM_CHECK_RECORD=1`, build every record of a height kept from events
/// both ways and fail the cut when they differ (the tests run this way).
fn check_records() -> bool {
    cfg!(debug_assertions) || std::env::var("BTM_CHECK_RECORD").is_ok_and(|v| v == "1")
}

impl Cutter {
    /// The namespace of this cut, from the paths the patches changed when the scan tracked
    /// them (else from every path).
    pub(super) fn next_namespace(
        &mut self,
        scan2: &Scan,
        full: bool,
        ids: &mut CutIds,
    ) -> Result<NextNs> {
        let Some(changed) = scan2.changed.as_ref().filter(|_| !full) else {
            return Ok(self.whole_namespace(scan2, full, ids));
        };
        let next = self.changed_namespace(scan2, changed, ids);
        if check_records() {
            let whole = self.whole_namespace(scan2, full, ids);
            self.same_view(&next, &whole, ids)?;
        }
        Ok(next)
    }

    /// Every path of `scan2`.
    fn whole_namespace(&mut self, scan2: &Scan, full: bool, ids: &mut CutIds) -> NextNs {
        let mut entries: Vec<(RelPath, Entry)> = Vec::with_capacity(scan2.entries.len());
        let mut sizes: FastMap<FileId, u64> =
            FastMap::with_capacity_and_hasher(self.sizes.len(), rustc_hash::FxBuildHasher);
        let mut live: FastSet<Identity> =
            FastSet::with_capacity_and_hasher(self.ids.len(), rustc_hash::FxBuildHasher);
        for (path, e) in &scan2.entries {
            let entry = self.entry_of(path, e, full, ids);
            if let (Kind::File { ident, size }, Entry::File { id, .. }) = (&e.kind, &entry) {
                live.insert(*ident);
                sizes.insert(*id, *size);
            }
            entries.push((path.clone(), entry));
        }
        // In path order: the map is built in one pass.
        let prev: BTreeMap<RelPath, Entry> = entries.into_iter().collect();
        let mut ops = namespace_ops(&self.prev, &prev);
        // A full cut rewrote every byte below the size (holes as zeros): the size is all
        // that is left to set.
        ops.extend(self.set_sizes(&sizes, full));
        NextNs {
            ops,
            paths: scan2.entries.len(),
            view: View::Whole { prev, sizes, live },
        }
    }

    /// Only the paths in `changed`: every other entry is as the last height recorded it.
    fn changed_namespace(
        &mut self,
        scan2: &Scan,
        changed: &BTreeSet<RelPath>,
        ids: &mut CutIds,
    ) -> NextNs {
        let (mut before, mut after) = (BTreeMap::new(), BTreeMap::new());
        let mut sizes = FastMap::default();
        let mut present = FastSet::default();
        for path in changed {
            if let Some(e) = self.prev.get(path) {
                before.insert(path.clone(), e.clone());
            }
            if let Some(e) = scan2.entries.get(path) {
                let entry = self.entry_of(path, e, false, ids);
                if let (Kind::File { ident, size }, Entry::File { id, .. }) = (&e.kind, &entry) {
                    present.insert(*ident);
                    sizes.insert(*id, *size);
                }
                after.insert(path.clone(), entry);
            }
        }
        let mut ops = namespace_ops(&before, &after);
        ops.extend(self.set_sizes(&sizes, false));
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
        let entries = (changed.iter())
            .map(|p| (p.clone(), after.remove(p)))
            .collect();
        NextNs {
            ops,
            paths: changed.len(),
            view: View::Changed {
                entries,
                sizes,
                present,
                dead,
            },
        }
    }

    /// The log's entry for scan entry `e` at `path` (a file gets its id).
    fn entry_of(&mut self, path: &RelPath, e: &ScanEntry, full: bool, ids: &mut CutIds) -> Entry {
        match &e.kind {
            Kind::Dir => Entry::Dir {
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
                id: self.id_for(ident, path, full, ids),
                mode: e.mode,
                uid: e.uid,
                gid: e.gid,
            },
        }
    }

    /// Size operations for the files in `sizes` whose size the last height does not have
    /// (all of them on a full cut), by id.
    fn set_sizes(&self, sizes: &FastMap<FileId, u64>, full: bool) -> Vec<NsOp> {
        let mut by_id: Vec<(FileId, u64)> = (sizes.iter())
            .filter(|(i, s)| full || self.sizes.get(i) != Some(s))
            .map(|(&i, &s)| (i, s))
            .collect();
        by_id.sort_unstable();
        by_id
            .into_iter()
            .map(|(id, size)| NsOp::SetSize { id, size })
            .collect()
    }

    /// Takes the namespace a committed record describes as the last height's.
    pub(super) fn adopt(&mut self, next: NextNs, ids: CutIds, full: bool) {
        let (prev, sizes, ids_now) = self.adopted(next, ids, full);
        (self.prev, self.sizes, self.ids) = (prev, sizes, ids_now);
    }

    /// What [`Cutter::adopt`] sets: the namespace, sizes and ids after `next`.
    #[allow(clippy::type_complexity)]
    fn adopted(
        &mut self,
        next: NextNs,
        ids: CutIds,
        full: bool,
    ) -> (
        BTreeMap<RelPath, Entry>,
        FastMap<FileId, u64>,
        FastMap<Identity, FileId>,
    ) {
        let mut own = std::mem::take(&mut self.ids);
        match next.view {
            View::Whole { prev, sizes, live } => {
                // A full cut assigned every id this cut; otherwise the kept ones stand beside
                // the new ones (see `id_for`).
                if full {
                    own = ids.map;
                } else {
                    own.extend(ids.map);
                }
                own.retain(|ident, _| live.contains(ident));
                (prev, sizes, own)
            }
            View::Changed {
                entries,
                sizes,
                present,
                dead,
            } => {
                let (mut prev, mut all) = (
                    std::mem::take(&mut self.prev),
                    std::mem::take(&mut self.sizes),
                );
                for (id, ident) in dead {
                    own.remove(&ident);
                    all.remove(&id);
                }
                // Ids handed out for files that vanished before the record are not kept.
                own.extend(ids.map.into_iter().filter(|(i, _)| present.contains(i)));
                all.extend(sizes);
                for (path, e) in entries {
                    match e {
                        Some(e) => prev.insert(path, e),
                        None => prev.remove(&path),
                    };
                }
                (prev, all, own)
            }
        }
    }

    /// Fails when the record built from the changed paths and the one built from every path
    /// differ, in operations or in the namespace, sizes and ids they leave.
    fn same_view(&mut self, changed: &NextNs, whole: &NextNs, ids: &CutIds) -> Result<()> {
        if changed.ops != whole.ops {
            bail!(
                "internal error: the record from the changed paths differs from the walk's: {:?} \
                 against {:?}",
                changed.ops,
                whole.ops
            );
        }
        let (prev, sizes, own) = (self.prev.clone(), self.sizes.clone(), self.ids.clone());
        let mut left = Vec::new();
        for next in [changed, whole] {
            let copy = NextNs {
                ops: Vec::new(),
                paths: 0,
                view: next.view.clone(),
            };
            let got = self.adopted(copy, ids.clone(), false);
            (self.prev, self.sizes, self.ids) = (prev.clone(), sizes.clone(), own.clone());
            left.push(got);
        }
        if left[0] != left[1] {
            bail!(
                "internal error: the namespace, sizes or ids from the changed paths differ from \
                 the walk's"
            );
        }
        Ok(())
    }
}

/// The namespace and file sizes at the log's last height: what the next cut diffs against.
type Namespace = (BTreeMap<RelPath, Entry>, FastMap<FileId, u64>);

pub(super) fn namespace_at_last(log: &Log) -> Result<Namespace> {
    let (mut prev, mut sizes) = (BTreeMap::new(), FastMap::default());
    if let Some(h) = log.last_height() {
        let st = log.state_at(h)?;
        for (p, e) in st.entries() {
            if let Entry::File { id, .. } = e {
                sizes.insert(id, st.file(id).map_or(0, |f| f.size));
            }
            prev.insert(p.clone(), e);
        }
    }
    Ok((prev, sizes))
}

/// Namespace operations that turn `prev` into `next`: removals first (the top-most removed path
/// only), then puts in path order so parents precede children.
pub fn namespace_ops(
    prev: &BTreeMap<RelPath, Entry>,
    next: &BTreeMap<RelPath, Entry>,
) -> Vec<NsOp> {
    let mut ops = Vec::new();
    let mut removed: HashSet<&[u8]> = HashSet::new();
    let under_removed = |removed: &HashSet<&[u8]>, p: &[u8]| {
        !removed.is_empty() && ancestors(p).any(|a| removed.contains(a))
    };
    let is_dir = |e: &Entry| matches!(e, Entry::Dir { .. });
    // Both maps are in path order: walked side by side, no lookups.
    let mut other = next.iter().peekable();
    for (p, e) in prev {
        while other.next_if(|(q, _)| *q < p).is_some() {}
        let gone = match other.peek() {
            Some((q, n)) if *q == p => is_dir(n) != is_dir(e),
            _ => true,
        };
        if gone {
            if !under_removed(&removed, p) {
                ops.push(NsOp::Remove { path: p.clone() });
            }
            removed.insert(p);
        }
    }
    let mut other = prev.iter().peekable();
    for (p, e) in next {
        while other.next_if(|(q, _)| *q < p).is_some() {}
        let same = matches!(other.peek(), Some((q, old)) if *q == p && *old == e)
            && !under_removed(&removed, p);
        if !same {
            ops.push(NsOp::Put {
                path: p.clone(),
                entry: e.clone(),
            });
        }
    }
    ops
}
