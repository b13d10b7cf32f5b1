//! An in-place rollback that costs what changed: before it, what changed on the volume since
//! the last height (the tracker's marks and the namespace kept from events), so the replay
//! compares only that and what the records after the target name; after it, the cutter's
//! state at the target height, so the next cut stays incremental instead of reading the whole
//! volume again.
use super::*;
use crate::log::{PathGlobs, ReplayOptions, ReplayStats, SinceLast};

impl Cutter {
    /// Rolls the volume back to `height` in place (leaving the paths `preserve` matches as
    /// they are), then cuts the log back to it: like `zfs rollback -r`, newer heights leave
    /// the log so the node can reach them again. Only what changed since the height is
    /// compared and rewritten when the tracker can say what changed since the last one;
    /// otherwise the whole volume is.
    pub fn rollback(&mut self, height: u64, preserve: &PathGlobs) -> Result<ReplayStats> {
        let root = self.mount.mount_point.clone();
        let opts = ReplayOptions {
            preserve: preserve.clone(),
            ..Default::default()
        };
        let since = self.changes_since_last()?;
        let dir = self.log().dir().to_path_buf();
        self.remove_index(&dir)?;
        let log = self.log();
        let stats = match since {
            Some(since) => log
                .rollback_in_place(height, &root, &opts, since)
                .or_else(|e| {
                    tracing::warn!(
                        "rolling back only what changed failed ({e}); comparing the whole volume"
                    );
                    log.replay(height, &root, &opts)
                })?,
            None => {
                tracing::info!(
                    "what changed since the last height is not known: the rollback compares \
                     the whole volume"
                );
                log.replay(height, &root, &opts)?
            }
        };
        self.transform_log(|log| log.truncate_after(height).map(|log| (log, ())))?;
        // The volume now holds the height: the next cut reads what the tracker marks since.
        if let Err(e) = self.rolled_back(preserve, stats.preserved.is_empty()) {
            tracing::warn!("the next cut reads the whole volume: {e:#}");
        }
        Ok(stats)
    }

    /// What changed on the volume since the last height. `None` when the cutter cannot tell
    /// (the next cut would be full, no namespace is kept from events, events or marks were
    /// lost): the caller compares the whole tree.
    ///
    /// The marks drained here go into no record: until [`Cutter::rolled_back`] the next cut
    /// is full.
    fn changes_since_last(&mut self) -> Result<Option<SinceLast>> {
        let usable = !self.force_full && self.resume.is_none() && self.ns.is_some();
        self.force_full = true;
        let (Some(mut scan), true) = (self.kept.take(), usable) else {
            return Ok(None);
        };
        let root = self.mount.mount_point.clone();
        // As in a cut's first phase: after the flip and syncfs, every later change marks the
        // next epoch, and this one holds everything since the last height.
        let idx = self.tracker.flip()?;
        syncfs(&root)?;
        let mut dirty = self.tracker.drain(idx)?;
        let losses = Losses::of(&self.tracker.stats()?);
        if losses.force_full(&self.seen) {
            return Ok(None);
        }
        if losses.force_widen(&self.seen) {
            dirty.widen_to_folios();
        }
        let Some(events) = self.ns.as_ref().map(NsWatch::drain) else {
            return Ok(None);
        };
        if events.lost || scan.changed.is_none() || scan.reopen(&root).is_err() {
            return Ok(None);
        }
        let (_, reread) = scan
            .patch_marked(&events.entries, dirty.files.keys().copied(), |ino| {
                self.phantoms.contains(&ino)
            })
            .context("re-reading the entries changed since the last height")?;
        let changed = scan.changed.take().unwrap_or_default();
        let mut since = SinceLast::default();
        let tip = self.log.as_mut().expect("log lent out").tip()?;
        for path in changed.into_iter().chain(reread) {
            let now = scan.entries.get(&path);
            // The file this path held at the last height, by identity.
            let known = match now.map(|e| &e.kind) {
                Some(Kind::File { ident, size }) => {
                    self.ids.get(ident).map(|id| (*id, ident.0, *size))
                }
                _ => None,
            };
            if let Some((id, ino, size)) = known {
                let ranges = ranges_of(&dirty, ino, size)
                    .into_iter()
                    .map(|(o, l)| (o, o + l))
                    .collect();
                since.files.push((id, ranges));
            }
            let same_entry = match (now, tip.entry(&path), known) {
                (Some(e), Some(Entry::File { id, mode, uid, gid }), Some((known, ..))) => {
                    id == known && (e.mode, e.uid, e.gid) == (mode, uid, gid)
                }
                _ => false,
            };
            if !same_entry {
                since.paths.insert(path);
            }
        }
        Ok(Some(since))
    }

    /// After a rollback replayed the log's new last height into the volume: the volume holds
    /// that height (except the paths `preserve` kept), so its files are known again by a
    /// walk (stat only) and the next cut reads what the tracker marks, the rollback's own
    /// writes included, instead of everything. Preserved files get new ids and are read
    /// whole. With none (`exact`), the walk is kept as the namespace the next cut or
    /// rollback patches from events; otherwise the next cut walks again and records them.
    fn rolled_back(&mut self, preserve: &PathGlobs, exact: bool) -> Result<()> {
        let mut walked = Scan::walk(&self.mount.mount_point).context("scanning the volume")?;
        self.ids.clear();
        let tip = self.log.as_mut().expect("log lent out").tip()?;
        for (path, e) in walked.entries.iter() {
            if let (Kind::File { ident, .. }, Some(Entry::File { id, .. })) =
                (&e.kind, tip.entry(path))
                && !preserve.matches(path)
            {
                self.ids.insert(*ident, id);
            }
        }
        self.kept = exact.then(|| {
            walked.release_root();
            walked.track_changes();
            walked
        });
        self.check = None;
        self.resume = None;
        self.since_walk = 0;
        self.force_full = false;
        // The walk's stats were not taken frozen: the next stat index comes with a cut.
        self.indexed = self.log().last_height().map(|h| (h, Instant::now()));
        Ok(())
    }
}
