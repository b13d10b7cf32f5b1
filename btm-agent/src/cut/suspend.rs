//! A clean stop: what the next start needs to read only what changed (see [`super::resume`]).
//!
//! The stop does not walk the tree. The namespace the last freeze left is brought up to now
//! as a cut's phase 1 does: only the entries events named since and the files marked since
//! are stat'ed again. So a stop costs what changed since the last height, not the file count
//! (a walk of 10^6 files took 18.5 s with a cold cache, past the 30 s Kubernetes gives by
//! default once the rest of the stop is added). The other files keep the stat the cuts took:
//! older, but each is unchanged since the height (a change would have left a mark or an
//! event), and a stat that no longer matches only makes the next start read it whole.
use super::*;

/// What a clean stop recorded.
#[derive(Debug)]
pub struct Suspended {
    pub path: PathBuf,
    /// Files known at the height, recorded for the next start.
    pub files: usize,
    /// Walked the whole tree (no namespace kept from events to start from).
    pub walked: bool,
    /// Entries stat'ed again (those named by events or marked since the height).
    pub reread: usize,
}

impl Cutter {
    /// On a clean stop: records what the next start needs to read only what changed (see
    /// [`resume`]). Nothing is written when the next cut would be full anyway.
    pub fn suspend(&mut self) -> Result<Option<Suspended>> {
        let Some(height) = self.log().last_height() else {
            return Ok(None);
        };
        if self.force_full {
            return Ok(None);
        }
        self.finish_index();
        let root = self.mount.mount_point.clone();
        // Marks since the height. The syncfs also write-protects shared mappings: a store
        // after it faults, is marked and updates mtime.
        let mut d = self.drain_synced(&root)?;
        let (scan, walked, reread) = match self.patch_kept(&root, &d) {
            Ok(Some((scan, reread))) => (scan, false, reread.len()),
            Ok(None) => (self.walk_for_stop(&root)?, true, 0),
            Err(e) => {
                tracing::warn!("{e:#}: walking the volume instead");
                (self.walk_for_stop(&root)?, true, 0)
            }
        };
        // The next start's baseline, read before the last flip: whatever is counted later may
        // concern the epoch left running.
        let before = Losses::of(&self.tracker.stats()?);
        // Writes while the stats were taken: their marks, so that a file whose new stat was
        // taken before its last write is read where it was written.
        d.merge(self.drain_synced(&root)?);
        let losses = Losses::of(&self.tracker.stats()?);
        if losses.force_full(&self.seen) {
            tracing::warn!("the tracker lost events since the last height: no resume state");
            return Ok(None);
        }
        if losses.force_widen(&self.seen) {
            d.widen_to_folios();
        }
        // After every stat: a change within RACY_NS of it is not trusted.
        let taken = crash_index::now_ns();
        let mut running = None;
        if self.leave_running {
            match self.tracker.hand_over() {
                Ok(handover) => {
                    running = Some(resume::Running {
                        handover,
                        seen: before,
                    })
                }
                Err(e) => tracing::warn!(
                    "cannot leave the tracker running ({e}): the next start compares files by stat"
                ),
            }
        }
        let of = resume::IndexOf {
            height,
            taken,
            scan: &scan,
            ids: &self.ids,
            dirty: Some(&d),
            running,
            carried: self.resume.as_ref(),
        };
        let dir = self.log().dir();
        let files = resume::write_index(dir, resume::RESUME_FILE, &of)?;
        let path = dir.join(resume::RESUME_FILE);
        tracing::info!(
            "recorded {files} files at height {height} for the next start ({}; {}){}",
            path.display(),
            if walked {
                "walked the volume".to_string()
            } else {
                format!("{reread} entries changed since the height re-read, no walk")
            },
            if running.is_some() {
                "; the tracker keeps marking until it starts"
            } else {
                ""
            }
        );
        Ok(Some(Suspended {
            path,
            files,
            walked,
            reread,
        }))
    }

    /// The marks of the epoch running now: flipped, then drained after writeback, as a cut
    /// does (partial-folio records must outlive the dirty folios).
    fn drain_synced(&mut self, root: &Path) -> Result<DirtySet> {
        let idx = self.tracker.flip()?;
        syncfs(root)?;
        Ok(self.tracker.drain(idx)?)
    }

    /// A walk of the whole tree, when no namespace was kept from events.
    fn walk_for_stop(&mut self, root: &Path) -> Result<Scan> {
        // Two copies of every path would double the stop's memory.
        self.kept = None;
        if let Some(ns) = &self.ns {
            ns.discard();
        }
        Scan::walk(root).context("scanning the volume")
    }
}
