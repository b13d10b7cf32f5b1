//! What a run of records changed in a [`TreeState`], kept as the values they replaced.
//!
//! Compaction replaces a run of dropped records (and the kept record after it) with the diff
//! between the state before the run and the state after it. It used to clone the whole state
//! at the start of each run: at 10^6 files that is a second copy of the tip (hundreds of MiB),
//! for a run that may touch a handful of files. [`TreeState::apply_recording`] instead keeps,
//! the first time the run touches it, each path's node and each file's metadata as they were,
//! and for a file's data only the old pieces of the byte ranges the run rewrote. The state
//! before the run is the state after it with these values put back; the diff reads it that
//! way (compact/diff.rs), without building it.

use std::collections::{BTreeMap, HashMap, HashSet};

use super::{FileState, Node, Piece};
use crate::pathmap::PathMap;
use crate::record::FileId;

/// The values a run replaced. See the module documentation.
#[derive(Debug, Default)]
pub(crate) struct Undo {
    /// Path -> its node before the run (`None`: the path did not exist). A path map, not a
    /// tree map of owned paths: a run holding a baseline of 10^6 paths took 93 MiB so.
    pub(crate) nodes: PathMap<Option<Node>>,
    /// File -> what it was before the run, for files that existed then.
    pub(crate) files: HashMap<FileId, FileBefore>,
    /// Files the run created: apart, as they have nothing to keep (a run holding a baseline
    /// of 10^6 files took 186 MiB with them in `files`).
    pub(crate) created: HashSet<FileId>,
}

/// A file as it was before a run: its metadata, and its pieces where the run changed them.
#[derive(Debug)]
pub(crate) struct FileBefore {
    pub(crate) mode: u32,
    pub(crate) uid: u32,
    pub(crate) gid: u32,
    pub(crate) size: u64,
    /// Byte ranges the run may have changed: start -> end, disjoint, not touching, sorted.
    /// Outside them the file's pieces are the ones it had before the run.
    pub(crate) touched: BTreeMap<u64, u64>,
    /// The pieces the file had before the run inside `touched`, cut to those ranges.
    pub(crate) old: BTreeMap<u64, Piece>,
}

impl Undo {
    /// Keeps `old` as the node of `path` before the run, unless the run touched it already.
    pub(crate) fn node(&mut self, path: &[u8], old: Option<&Node>) {
        if !self.nodes.contains_key(path) {
            self.nodes.insert(path.to_vec(), old.cloned());
        }
    }

    /// What file `id` was before the run: `None` if the run did not touch it, `Some(None)` if
    /// the run created it.
    pub(crate) fn before(&self, id: FileId) -> Option<Option<&FileBefore>> {
        match self.files.get(&id) {
            Some(b) => Some(Some(b)),
            None => self.created.contains(&id).then_some(None),
        }
    }

    /// Files the run touched.
    pub(crate) fn touched_files(&self) -> impl Iterator<Item = FileId> + '_ {
        self.files.keys().chain(&self.created).copied()
    }

    /// Keeps the metadata of file `id` (`f`: as it is now) unless the run touched it already.
    pub(crate) fn file(&mut self, id: FileId, f: Option<&FileState>) {
        if self.created.contains(&id) {
            return;
        }
        match f {
            None => {
                if !self.files.contains_key(&id) {
                    self.created.insert(id);
                }
            }
            Some(f) => {
                self.files.entry(id).or_insert_with(|| FileBefore {
                    mode: f.mode,
                    uid: f.uid,
                    gid: f.gid,
                    size: f.size,
                    touched: BTreeMap::new(),
                    old: BTreeMap::new(),
                });
            }
        }
    }

    /// Before `f` (file `id`) changes its pieces in `[start, end)`: keeps those of its pieces
    /// there that are still the ones from before the run.
    pub(crate) fn pieces(&mut self, id: FileId, f: &FileState, start: u64, end: u64) {
        self.file(id, Some(f));
        let Some(b) = self.files.get_mut(&id) else {
            return; // Created by the run: there was nothing before.
        };
        if start >= end {
            return;
        }
        for (a, z) in gaps(&b.touched, start, end) {
            let first = f.pieces.range(..a).next_back();
            for (&ps, p) in first.into_iter().chain(f.pieces.range(a..z)) {
                let (s, e) = (ps.max(a), (ps + p.len).min(z));
                if s < e {
                    let cut = Piece {
                        len: e - s,
                        skip: p.skip + (s - ps),
                        payload: p.payload,
                    };
                    b.old.insert(s, cut);
                }
            }
        }
        add_range(&mut b.touched, start, end);
    }
}

/// The parts of `[start, end)` that no range of `set` covers, in order.
pub(crate) fn gaps(set: &BTreeMap<u64, u64>, start: u64, end: u64) -> Vec<(u64, u64)> {
    let mut out = Vec::new();
    let mut x = start;
    if let Some((_, &e)) = set.range(..=start).next_back() {
        x = x.max(e);
    }
    for (&s, &e) in set.range(start..end) {
        if s > x {
            out.push((x, s));
        }
        x = x.max(e);
    }
    if x < end {
        out.push((x, end));
    }
    out
}

/// Adds `[start, end)` to `set`, merging the ranges it overlaps or touches.
pub(crate) fn add_range(set: &mut BTreeMap<u64, u64>, mut start: u64, mut end: u64) {
    if let Some((&s, &e)) = set.range(..=start).next_back()
        && e >= start
    {
        set.remove(&s);
        start = s;
        end = end.max(e);
    }
    let inside: Vec<u64> = set.range(start..=end).map(|(&s, _)| s).collect();
    for s in inside {
        let e = set.remove(&s).expect("listed");
        end = end.max(e);
    }
    set.insert(start, end);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges_merge_and_leave_gaps() {
        let mut set = BTreeMap::new();
        add_range(&mut set, 10, 20);
        add_range(&mut set, 30, 40);
        assert_eq!(gaps(&set, 0, 50), vec![(0, 10), (20, 30), (40, 50)]);
        assert_eq!(gaps(&set, 15, 35), vec![(20, 30)]);
        assert_eq!(gaps(&set, 12, 18), vec![]);
        add_range(&mut set, 20, 30);
        assert_eq!(set, BTreeMap::from([(10, 40)]));
        add_range(&mut set, 5, u64::MAX);
        assert_eq!(set, BTreeMap::from([(5, u64::MAX)]));
        assert_eq!(gaps(&set, 0, u64::MAX), vec![(0, 5)]);
    }
}
