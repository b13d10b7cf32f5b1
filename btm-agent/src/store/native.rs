//! zfs and btrfs modes' store: the volume's own snapshots, one per kept height.
use std::path::PathBuf;

use anyhow::Result;

use super::HeightStore;
use crate::metrics::Metrics;
use crate::snapshot::{self, SnapshotBackend};

pub struct NativeStore {
    backend: Box<dyn SnapshotBackend>,
    volume: PathBuf,
}

impl NativeStore {
    /// Checks now what a later rollback would need, and takes the volume lock for the life of
    /// the process: two agents on one volume would race each other's rollbacks and retention.
    pub fn open(backend: Box<dyn SnapshotBackend>, volume: PathBuf) -> Result<NativeStore> {
        backend.preflight()?;
        std::mem::forget(crate::volume::VolumeLock::acquire(&volume)?);
        Ok(NativeStore { backend, volume })
    }
}

/// BTM's rollback on native snapshots: the target rules, then the snapshots newer than it go.
pub fn rollback(
    b: &dyn SnapshotBackend,
    height: Option<u64>,
    exact: bool,
) -> Result<serde_json::Value> {
    let h = snapshot::resolve_target(&b.describe(), &b.list()?, height, exact)?;
    b.rollback(h)?;
    Ok(serde_json::json!({ "height": h, "mode": b.name() }))
}

impl HeightStore for NativeStore {
    fn mode(&self) -> &'static str {
        self.backend.name()
    }

    fn describe(&self) -> String {
        self.backend.describe()
    }

    fn heights(&self) -> Result<Vec<u64>> {
        Ok(self.backend.list()?)
    }

    fn keep(&mut self, height: u64, metrics: &Metrics) -> Result<serde_json::Value> {
        self.backend.snapshot(height)?;
        metrics.record_height(height);
        tracing::info!(height, "snapshot taken");
        Ok(serde_json::json!({ "height": height, "mode": self.backend.name() }))
    }

    fn remove(&mut self, heights: &[u64]) -> Result<()> {
        if !heights.is_empty() {
            self.backend.delete(heights)?;
        }
        Ok(())
    }

    fn rollback(
        &mut self,
        height: Option<u64>,
        exact: bool,
        preserve: &crate::log::PathGlobs,
    ) -> Result<serde_json::Value> {
        crate::cmd::logs::native_preserve(preserve, self.backend.name())?;
        rollback(self.backend.as_ref(), height, exact)
    }

    fn status(&self) -> Result<serde_json::Value> {
        let hs = self.backend.list()?;
        Ok(serde_json::json!({
            "mode": self.backend.name(),
            "volume": self.volume,
            "target": self.backend.describe(),
            "last_height": hs.last(),
            "heights": hs.len(),
        }))
    }
}
