//! What a cut reads of one file: the ranges the tracker marked (and growth, and what a clean
//! stop recorded), or all of it when the log's content for the file cannot be trusted.

use super::{Cutter, DirtySet, FileId, Identity, RelPath, Scan, TreeState};

impl Cutter {
    /// What to read of a file with `id`: what the tracker marked plus growth since the last
    /// height when it is tracked (and, on the first cut after a clean stop, what the stop
    /// recorded, when the file did not change since: `stat` is its size, mtime and ctime now);
    /// on a full cut or a changed file, all of it, holes as zeros, when the log has the id
    /// (only blocks that differ are stored); else its data (it starts empty).
    pub(super) fn ranges_for(
        &self,
        ident: &Identity,
        id: FileId,
        stat: (u64, i64, i64),
        dirty: &DirtySet,
        full: bool,
        tip: &TreeState,
    ) -> Want {
        let size = stat.0;
        if !full && self.ids.get(ident) == Some(&id) {
            let recorded = match &self.resume {
                None => Some(&[][..]),
                Some(r) => r.unchanged(ident, id, stat),
            };
            if let Some(recorded) = recorded {
                let mut r = ranges_of(dirty, ident.0, size);
                r.extend(
                    recorded
                        .iter()
                        .filter(|(o, _)| *o < size)
                        .map(|&(o, l)| (o, l.min(size - o))),
                );
                let old = tip.file(id).map_or(0, |f| f.size);
                if size > old {
                    r.push((old, size - old));
                }
                return Want::ranges(r);
            }
        }
        if tip.file(id).is_some() {
            Want::Whole
        } else {
            Want::Fresh
        }
    }

    /// A file's size, and its mtime and ctime when a clean stop's record is to be checked
    /// (the first cut after a start; otherwise the times are not looked up).
    pub(super) fn stat_for_resume(
        &self,
        scan: &Scan,
        path: &RelPath,
        size: u64,
    ) -> (u64, i64, i64) {
        match (&self.resume, scan.entries.get(path)) {
            (Some(_), Some(e)) => (size, e.mtime, e.ctime),
            _ => (size, 0, 0),
        }
    }
}

/// What a cut reads of one file.
pub(super) enum Want {
    /// The file starts empty in this record: read its data ranges only (holes stay holes).
    Fresh,
    /// The log has other content for this id: read the data ranges and record the holes as
    /// zeros, so every byte below the size is written (unchanged blocks are left out).
    Whole,
    /// Re-read these byte ranges in full: zeros there (punched, zeroed, unwritten) must be
    /// recorded, since older data exists underneath in the log.
    Ranges(Vec<(u64, u64)>),
}

impl Want {
    /// Re-read `r` (offset, length) sorted and merged. Its sources overlap: the marks of an
    /// appended file cover the tail it grew by, which is added as well; read as given, every
    /// appended byte was read twice (the 0.25x beyond what changed in the benchmark, whose
    /// block files grow by a quarter of each height).
    pub(super) fn ranges(r: Vec<(u64, u64)>) -> Want {
        let spans = r
            .into_iter()
            .map(|(o, l)| (o, o.saturating_add(l)))
            .collect();
        let merged = crate::log::merge_ranges(spans);
        Want::Ranges(merged.into_iter().map(|(a, b)| (a, b - a)).collect())
    }
}

pub(super) fn ranges_of(set: &DirtySet, ino: u64, size: u64) -> Vec<(u64, u64)> {
    set.files
        .get(&ino)
        .map(|f| f.ranges_within(size))
        .unwrap_or_default()
}
