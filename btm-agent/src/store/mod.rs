//! Where kept heights live: the incremental log of eBPF mode ([`LogStore`]) or the volume's
//! native snapshots ([`NativeStore`], ZFS or Btrfs). The run loop talks to one [`HeightStore`]
//! and never asks which; BTM's rules (retention after every height, rollback exact or to the
//! closest lower height, newer heights leaving on rollback) are written once, here and in
//! `btm_log::pick_height`.
mod compaction;
mod log;
mod native;

use std::collections::BTreeSet;
use std::path::Path;

use anyhow::Result;

pub use log::{CompactSettings, LogStore};
pub use native::{NativeStore, rollback as native_rollback};

use crate::metrics::Metrics;
use crate::retention::Policy;

pub trait HeightStore {
    /// `ebpf`, `zfs` or `btrfs`.
    fn mode(&self) -> &'static str;

    /// What is kept, for messages: `volume /chain, log /backup/btm`, `dataset tank/data`.
    fn describe(&self) -> String;

    /// The kept heights, ascending.
    fn heights(&self) -> Result<Vec<u64>>;

    /// Makes `height` durable (a cut into the log, a snapshot); the report for the client.
    fn keep(&mut self, height: u64, metrics: &Metrics) -> Result<serde_json::Value>;

    /// Removes kept heights (retention). Every height must be kept.
    fn remove(&mut self, heights: &[u64]) -> Result<()>;

    /// BTM's rollback of the volume, in place: to `height` (or the latest), exactly or to the
    /// closest lower kept height; heights above the target leave the store, so the chain can
    /// reach them again. The node must be stopped.
    fn rollback(
        &mut self,
        height: Option<u64>,
        exact: bool,
        preserve: &crate::log::PathGlobs,
    ) -> Result<serde_json::Value>;

    /// The answer to `{"cmd":"status"}`.
    fn status(&self) -> Result<serde_json::Value>;

    /// Upkeep between requests, after the client has its answer (log compaction).
    fn maintain(&mut self) -> Result<()> {
        Ok(())
    }

    /// A clean stop: record what the next start needs to stay incremental.
    fn suspend(&mut self) -> Result<()> {
        Ok(())
    }

    /// The log directory (metrics, offsite shipping); `None` for native snapshots.
    fn log_dir(&self) -> Option<&Path> {
        None
    }

    fn last_height(&self) -> Option<u64> {
        self.heights().ok()?.last().copied()
    }

    /// Whether `height` is kept: asking for it again (a retried hook, a restarted poller, a
    /// client that lost the first answer) is answered as done, without a new cut.
    fn is_kept(&self, height: u64) -> bool {
        self.heights()
            .is_ok_and(|hs| hs.binary_search(&height).is_ok())
    }

    /// Keeps `height`, then applies retention. The height is durable once `keep` returns: a
    /// failed removal is logged and caught up after the next height, never reported as a
    /// failed height.
    fn take(
        &mut self,
        height: u64,
        policy: &Policy,
        metrics: &Metrics,
    ) -> Result<serde_json::Value> {
        let mut report = self.keep(height, metrics)?;
        let removed = self.pinned().and_then(|pins| {
            let removed = policy.to_delete_unpinned(&self.heights()?, &pins);
            self.remove(&removed).map(|()| removed)
        });
        let removed = removed.unwrap_or_else(|e| {
            tracing::error!(height, "retention after height {height}: {e:#}");
            Vec::new()
        });
        report["removed"] = serde_json::json!(removed);
        Ok(report)
    }

    /// Heights retention must leave alone (`btm-agent pin`): the log's pins; none for native
    /// snapshots.
    fn pinned(&self) -> Result<BTreeSet<u64>> {
        Ok(BTreeSet::new())
    }
}
