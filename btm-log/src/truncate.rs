//! Rolling the log back: heights above a rollback target leave the log, as newer snapshots
//! leave a dataset with `zfs rollback -r`, so the node can re-reach those heights and have
//! them cut again.
use std::fs::{self, OpenOptions};

use super::{
    Log, LogError,
    compact::{DROPPED_FILE, read_dropped},
    format::SEG_HEADER_LEN,
    fsync_dir,
};

impl Log {
    /// Removes every height above `height` (which must be recorded) and returns the log
    /// reopened. Crash-safe: tombstones above `height` go first, then later segments newest
    /// first, then the segment holding the cut is truncated at a record boundary; every step
    /// leaves a valid prefix of the log.
    pub fn truncate_after(mut self, height: u64) -> Result<Log, LogError> {
        if !self.writable {
            return Err(LogError::ReadOnly {
                dir: self.dir.clone(),
            });
        }
        self.index_of(height)?;
        let Some(first) = self.records.iter().position(|r| r.header.height > height) else {
            return Ok(self);
        };
        let (dir, opts) = (self.dir.clone(), self.opts.clone());
        let (seg_idx, offset) = (self.records[first].seg_idx, self.records[first].offset);

        let dropped = read_dropped(&dir)?;
        if dropped.iter().any(|&h| h > height) {
            let path = dir.join(DROPPED_FILE);
            let tmp = dir.join(format!("{DROPPED_FILE}.tmp"));
            let text: String = dropped.range(..=height).map(|h| format!("{h}\n")).collect();
            fs::write(&tmp, text)
                .and_then(|()| OpenOptions::new().write(true).open(&tmp)?.sync_all())
                .and_then(|()| fs::rename(&tmp, &path))
                .map_err(|e| LogError::io(&path, e))?;
            fsync_dir(&dir)?;
        }
        for seg in self.segments[seg_idx + 1..].iter().rev() {
            fs::remove_file(&seg.path).map_err(|e| LogError::io(&seg.path, e))?;
            fsync_dir(&dir)?;
        }
        let seg = &self.segments[seg_idx].path;
        if offset <= SEG_HEADER_LEN && seg_idx > 0 {
            fs::remove_file(seg).map_err(|e| LogError::io(seg, e))?;
        } else {
            let f = OpenOptions::new()
                .write(true)
                .open(seg)
                .map_err(|e| LogError::io(seg, e))?;
            f.set_len(offset)
                .and_then(|()| f.sync_all())
                .map_err(|e| LogError::io(seg, e))?;
        }
        fsync_dir(&dir)?;
        // Reopened with the same lock, as compaction does: releasing it, even for a moment,
        // let a fork in another thread (its child shares the lock until it execs) make the
        // reopen fail as if another agent held the log.
        let locks = std::mem::take(&mut self._locks);
        drop(self);
        let mut log = Log::empty(&dir, true, opts, locks);
        log.scan()?;
        Ok(log)
    }
}
