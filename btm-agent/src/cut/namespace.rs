//! The namespace a cut starts from: the one the last freeze left, patched from namespace
//! events and the tracker's marks, or a walk of the whole tree; and the window in which
//! writes are reported as events (see [`super::nsevents`]).
use super::*;

/// `BTM_WRITE_EVENTS`: `cut` (the default) reports writes as events only while a cut runs;
/// `always` reports them between heights too.
pub(super) fn write_events_always() -> Result<bool> {
    match std::env::var("BTM_WRITE_EVENTS").as_deref() {
        Err(_) | Ok("" | "cut") => Ok(false),
        Ok("always") => Ok(true),
        Ok(other) => bail!(
            "BTM_WRITE_EVENTS={other:?} is not a choice: give `cut` (writes reported only \
             while a cut runs, the default) or `always` (also between heights: no truncation \
             by path makes a cut walk the tree, but every write of the node costs a \
             notification)"
        ),
    }
}

impl Cutter {
    /// Starts or stops the namespace watch's reporting of writes (see [`nsevents`]). Failing
    /// to start it leaves the cutter without events: every freeze walks the tree from then on.
    pub(super) fn watch_writes(&mut self, on: bool) {
        let Some(ns) = &self.ns else { return };
        match ns.watch_writes(on) {
            Ok(()) => {}
            Err(e) if on => {
                tracing::warn!(
                    "cannot watch writes on {} ({e}): every freeze walks the whole tree from now on",
                    self.mount.mount_point.display()
                );
                self.ns = None;
                self.kept = None;
            }
            Err(e) => tracing::warn!(
                "cannot stop watching writes on {} ({e}): each of the node's writes costs a \
                 notification until the next cut",
                self.mount.mount_point.display()
            ),
        }
    }

    /// The namespace the last freeze left, brought up to now: the entries named by events
    /// since and the paths of the files marked in `d` are stat'ed again (returned), nothing
    /// else. None without a kept namespace or events, or when events were lost: only a walk
    /// of the tree can say what changed then.
    pub(super) fn patch_kept(
        &mut self,
        root: &Path,
        d: &DirtySet,
    ) -> Result<Option<(Scan, Vec<RelPath>)>> {
        let (Some(mut scan), Some(ns)) = (self.kept.take(), &self.ns) else {
            return Ok(None);
        };
        let c = ns.drain();
        if c.lost || scan.reopen(root).is_err() {
            return Ok(None);
        }
        let (_, reread) = scan
            .patch_marked(&c.entries, d.files.keys().copied(), |ino| {
                self.phantoms.contains(&ino)
            })
            .context("re-reading changed entries of the volume")?;
        Ok(Some((scan, reread)))
    }

    /// The namespace for phase 1: the last cut's, patched with the entries named by events
    /// since its freeze and the paths of files the tracker marked, or a walk of the whole
    /// tree (when `walk`: a full cut or a truncation by path; without a kept namespace or
    /// events, after lost events, and every [`Cutter::walk_every`] heights, when the kept
    /// namespace is checked against the walk). True when it walked.
    pub(super) fn namespace_now(
        &mut self,
        root: &Path,
        walk: bool,
        d1: &DirtySet,
    ) -> Result<(Scan, bool, HashSet<RelPath>)> {
        let mut patched = None;
        if walk {
            // Not kept beside the walk: two copies of every path.
            self.kept = None;
        } else if let Some((scan, reread)) = self.patch_kept(root, d1)? {
            if self.since_walk + 1 < self.walk_every {
                return Ok((scan, false, reread.into_iter().collect()));
            }
            patched = Some(scan);
        }
        if patched.is_none()
            && let Some(ns) = &self.ns
        {
            // Every change from here on is named by an event (the freeze re-reads those).
            // After a patch the events since its drain stay queued for the freeze: they
            // explain what changed between the patch and the walk.
            ns.discard();
        }
        let walked = Scan::walk(root).context("scanning the volume")?;
        self.check = patched.map(|p| p.differences(&walked));
        Ok((walked, true, HashSet::new()))
    }
}
