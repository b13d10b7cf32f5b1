//! A clean stop: what the next start needs to read only what changed (see [`super::resume`]).
use super::*;

impl Cutter {
    /// On a clean stop: records what the next start needs to read only what changed (see
    /// [`resume`]). Nothing is written when the next cut would be full anyway.
    pub fn suspend(&mut self) -> Result<Option<PathBuf>> {
        let Some(height) = self.log().last_height() else {
            return Ok(None);
        };
        if self.force_full {
            return Ok(None);
        }
        self.finish_index();
        let root = self.mount.mount_point.clone();
        // The walk below replaces the namespace kept from events (and the agent stops):
        // two copies of every path would double the stop's memory.
        self.kept = None;
        // The next start's baseline, read before the flip: whatever is counted later may
        // concern the epoch left running.
        let before = Losses::of(&self.tracker.stats()?);
        // Write-protect shared mappings: a store after this faults and updates mtime.
        syncfs(&root)?;
        let scan = Scan::walk(&root).context("scanning the volume")?;
        let idx = self.tracker.flip()?;
        let mut d = self.tracker.drain(idx)?;
        let losses = Losses::of(&self.tracker.stats()?);
        if losses.force_full(&self.seen) {
            tracing::warn!("the tracker lost events since the last height: no resume state");
            return Ok(None);
        }
        if losses.force_widen(&self.seen) {
            d.widen_to_folios();
        }
        let taken = crash_index::now_ns();
        let mut running = None;
        if crate::tracker::handover::enabled() {
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
        };
        let dir = self.log().dir();
        let n = resume::write_index(dir, resume::RESUME_FILE, &of)?;
        let path = dir.join(resume::RESUME_FILE);
        tracing::info!(
            "recorded {n} files at height {height} for the next start ({}){}",
            path.display(),
            if running.is_some() {
                "; the tracker keeps marking until it starts"
            } else {
                ""
            }
        );
        Ok(Some(path))
    }
}
