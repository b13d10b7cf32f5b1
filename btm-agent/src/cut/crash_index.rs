//! A stat index of the volume, kept beside the log so that the first cut after a crash reads
//! only files whose stat changed, not the whole volume.
//!
//! A clean stop leaves `resume.state` (see [`super::resume`]); a crash (kill -9, power loss)
//! leaves nothing, and the tracker's marks since the last height are gone. What a crash cannot
//! take away is what a cut saw: the namespace of the last freeze, whose stats were taken with
//! the volume frozen after its final sync, when every page was clean and every shared mapping
//! write-protected. After the thaw, any change to a file updates its mtime or ctime (a write,
//! a truncate, a store through a mapping faults and updates mtime, a rename or link changes
//! ctime). So a file whose identity, size, mtime and ctime are still those of such an index,
//! and not racy (see [`super::resume::RACY_NS`]), is unchanged since that height, and the log
//! holds it as it is at every later height too.
//!
//! The index is written in the resume state's format (no marks, no tracker) after the first
//! cut of a start and then at most every [`Cutter::index_every`], between requests.
//! Stats of entries the kept namespace did not re-read are older: they only make more files
//! look changed. A rollback removes the index (the volume goes back to an older height).
use std::{
    fs,
    io::{BufWriter, Write},
    os::unix::fs::OpenOptionsExt,
    path::Path,
    time::{Duration, Instant, SystemTime},
};

use anyhow::{Context, Result};

use super::{Cutter, resume};

pub const INDEX_FILE: &str = "index.state";

/// How often the index is written (`BTM_INDEX_SECS`, 300 by default; 0 after every height).
pub fn index_every() -> Duration {
    Duration::from_secs(
        std::env::var("BTM_INDEX_SECS")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(300),
    )
}

impl Cutter {
    /// Writes the stat index of the last height when it is due (after the first cut of this
    /// start, then every [`Cutter::index_every`]); a failure is logged, not fatal. It is
    /// encoded here, straight from the kept namespace into the page cache; a thread syncs it
    /// and puts it in place while the next heights are cut. (A copy of its rows for the thread
    /// held 48 MiB at 10^6 files while it wrote.)
    pub fn maintain_index(&mut self) {
        let Some(height) = self.log().last_height() else {
            return;
        };
        if self.kept.is_none()
            || (self.indexed).is_some_and(|(h, at)| h == height || at.elapsed() < self.index_every)
        {
            return;
        }
        self.finish_index();
        self.indexed = Some((height, Instant::now()));
        let (dir, taken) = (self.log().dir().to_path_buf(), self.thawed_at);
        let Some(scan) = &self.kept else { return };
        let t = Instant::now();
        let (file, n) =
            match resume::stage_index(&dir, INDEX_FILE, (height, taken), scan, &self.ids) {
                Ok(staged) => staged,
                Err(e) => {
                    tracing::warn!("cannot write the stat index of height {height}: {e:#}");
                    return;
                }
            };
        tracing::debug!(
            files = n,
            height,
            "encoded the stat index in {:?}",
            t.elapsed()
        );
        let spawned = std::thread::Builder::new()
            .name("btm-index".into())
            .spawn(move || match settle(&dir, INDEX_FILE, file) {
                Ok(()) => tracing::debug!(files = n, height, "wrote the stat index"),
                Err(e) => tracing::warn!("cannot write the stat index of height {height}: {e:#}"),
            });
        match spawned {
            Ok(h) => self.index_writer = Some(h),
            Err(e) => tracing::warn!("cannot start writing the stat index: {e}"),
        }
    }

    /// Waits for the index being written, if any. Before the index is removed (a full cut, a
    /// rollback) or the agent stops: an index of an older state must not land after that.
    pub fn finish_index(&mut self) {
        if let Some(h) = self.index_writer.take()
            && h.join().is_err()
        {
            tracing::warn!("the thread writing the stat index failed");
        }
    }

    /// Removes the index once any write of it has finished.
    pub(super) fn remove_index(&mut self, dir: &Path) -> Result<()> {
        self.finish_index();
        remove(dir)
    }
}

/// Removes the index (a rollback makes it describe a height the volume no longer holds).
pub fn remove(dir: &Path) -> Result<()> {
    match fs::remove_file(dir.join(INDEX_FILE)) {
        Ok(()) => fs::File::open(dir)?.sync_all().map_err(Into::into),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e).context("removing the stat index"),
    }
}

/// Nanoseconds since the epoch, now.
pub fn now_ns() -> i64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |t| t.as_nanos() as i64)
}

/// Writes `dir/name` atomically through `write`: temporary file, fsync, rename, directory
/// fsync.
pub(super) fn write_atomic(
    dir: &Path,
    name: &str,
    write: impl FnOnce(&mut dyn Write) -> Result<()>,
) -> Result<()> {
    let f = write_unsynced(dir, name, write)?;
    settle(dir, name, f)
}

/// Writes `dir/name`'s temporary file with `write`, not synced: [`settle`] finishes it.
pub(super) fn write_unsynced(
    dir: &Path,
    name: &str,
    write: impl FnOnce(&mut dyn Write) -> Result<()>,
) -> Result<fs::File> {
    let tmp = dir.join(format!("{name}.tmp"));
    let f = fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600) // it names every file of the volume
        .open(&tmp)
        .with_context(|| format!("writing {}", tmp.display()))?;
    let mut w = BufWriter::with_capacity(1 << 20, f);
    write(&mut w)?;
    w.into_inner().map_err(|e| e.into_error().into())
}

/// Makes `f`, the temporary file [`write_unsynced`] wrote, durable as `dir/name`.
pub(super) fn settle(dir: &Path, name: &str, f: fs::File) -> Result<()> {
    f.sync_all()?;
    fs::rename(dir.join(format!("{name}.tmp")), dir.join(name))?;
    fs::File::open(dir)?.sync_all()?;
    Ok(())
}
