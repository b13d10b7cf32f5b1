//! A replay limited to what may differ. An in-place rollback to height `h` over a volume at
//! the log's last height `L` (plus what was written since) rewrites only what the records after
//! `h` and the tracker since `L` name, instead of comparing every byte of the tree.
//!
//! The records after `h` are complete diffs: every path whose entry differs between `h` and
//! `L` is put or removed by one of them (a removed directory takes what is under it), and
//! every byte of a file that differs lies in one of their extents or above one of their size
//! changes. So, for the paths in [`ReplayScope::paths`], replay removes what the height does
//! not have there and in the directories named (one level: deeper changes name their own
//! paths), builds what is missing with everything under it, and compares only the ranges of
//! [`ReplayScope::ranges`] of the other files.

use std::collections::{BTreeSet, HashMap, HashSet};

use super::*;
use crate::record::{Entry, NsOp};

/// What may differ between the target and the height being replayed; everything else is
/// taken to be equal and is neither read nor written.
#[derive(Clone, Debug, Default)]
pub struct ReplayScope {
    /// Paths whose entry may differ in kind, identity or metadata, or exist on one side
    /// only. A directory among them has its entries checked, a missing one is built with
    /// everything under it, and a file among them is compared whole.
    pub paths: BTreeSet<RelPath>,
    /// Files of the height (by id) whose bytes may differ in these `[start, end)` ranges, or
    /// whose size or metadata may differ (empty ranges): compared there, at each path.
    pub ranges: HashMap<FileId, Vec<(u64, u64)>>,
}

/// What changed in the target since the log's last height, as the tracker saw it.
#[derive(Clone, Debug, Default)]
pub struct SinceLast {
    /// Paths whose entry changed: created, removed, moved, replaced or with other metadata.
    pub paths: BTreeSet<RelPath>,
    /// Files of the last height (by id: a file keeps its id while it lives) written or
    /// changed since, with the `[start, end)` ranges written (none: size or metadata).
    pub files: Vec<(FileId, Vec<(u64, u64)>)>,
}

impl ReplayScope {
    fn add(&mut self, id: FileId, start: u64, end: u64) {
        self.ranges.entry(id).or_default().push((start, end));
    }

    /// Paths and files named: what the replay looks at.
    fn size(&self) -> u64 {
        (self.paths.len() + self.ranges.len()) as u64
    }
}

impl Log {
    /// The scope of an in-place replay of `height` (state `at`) over a target that holds the
    /// last height (state `last`) changed by `since`.
    pub(crate) fn scope_after(
        &self,
        height: u64,
        at: &TreeState,
        last: &TreeState,
        since: SinceLast,
    ) -> Result<ReplayScope, LogError> {
        let mut s = ReplayScope::default();
        // The same file at the same path at both heights: only its bytes, size or metadata.
        let same_file = |p: &[u8]| match (at.nodes.get(p), last.nodes.get(p)) {
            (Some(Node::File(a)), Some(Node::File(b))) if a == b => Some(*a),
            _ => None,
        };
        for r in &self.records[self.index_of(height)? + 1..] {
            let meta = self.read_meta(r)?;
            for op in &meta.ops {
                if let NsOp::Put {
                    entry: Entry::File { id, .. },
                    ..
                } = op
                {
                    // A put sets the file's metadata at every path of it.
                    s.ranges.entry(*id).or_default();
                }
                match op {
                    NsOp::Put { path, .. } | NsOp::Remove { path } => match same_file(path) {
                        Some(id) => {
                            s.ranges.entry(id).or_default();
                        }
                        None => {
                            s.paths.insert(path.clone());
                        }
                    },
                    NsOp::SetSize { id, size } => s.add(*id, *size, u64::MAX),
                }
            }
            for e in &meta.extents {
                s.add(e.id(), e.offset(), e.offset().saturating_add(e.len()));
            }
        }
        s.paths.extend(since.paths);
        for (id, ranges) in since.files {
            s.ranges.entry(id).or_default().extend(ranges);
        }
        Ok(s)
    }

    /// Replays `height` in place over `into`, which holds the log's last height changed only
    /// by `since`: compares and rewrites what the records after `height` and `since` name,
    /// not the whole tree (see [`ReplayScope`]).
    pub fn rollback_in_place(
        &self,
        height: u64,
        into: &Path,
        opts: &ReplayOptions,
        since: SinceLast,
    ) -> Result<ReplayStats, LogError> {
        let at = self.state_at(height)?;
        refuse_inside(self.dir(), "log directory", into)?;
        let last_h = self.last_height().ok_or(LogError::Empty)?;
        let last = if last_h == height {
            None
        } else {
            Some(self.state_at(last_h)?)
        };
        let scope = self.scope_after(height, &at, last.as_ref().unwrap_or(&at), since)?;
        drop(last);
        let opts = ReplayOptions {
            scope: Some(scope),
            ..opts.clone()
        };
        replay_state(self, &at, height, into, &opts)
    }
}

impl Replayer<'_> {
    /// Passes 1 and 2 over what `scope` names; returns the directories for pass 3, in order.
    pub(super) fn scoped(&mut self, scope: &ReplayScope) -> Result<Vec<RelPath>, LogError> {
        let st = self.st;
        self.stats.scoped = Some(scope.size());

        let mut named: Vec<&[u8]> = scope.paths.iter().map(Vec::as_slice).collect();
        named.sort_by(|a, b| cmp_components(a, b));
        // Pass 1: what the height does not have, at the named paths and in named directories.
        for p in &named {
            if self.preserved(p) {
                continue;
            }
            let Some(dfd) = self.dir_fd_if_there(parent_of(p).unwrap_or(b""))? else {
                continue; // no directory above: nothing there to remove
            };
            let sub = if p.is_empty() {
                // Close-on-exec, unlike `dup`.
                Some(self.root.try_clone().map_err(|e| self.err(p, e))?)
            } else {
                self.prune_entry(&dfd, file_name_of(p), p)?
            };
            if let Some(sub) = sub {
                let names =
                    dirfd::list(&sub).map_err(|e| self.err(p, format!("read directory: {e}")))?;
                for name in names {
                    let child = join(p, &name);
                    if !st.nodes.contains_key(&child) {
                        self.prune_entry(&sub, &name, &child)?;
                    }
                }
            }
        }
        // Pass 2: the named paths, then the other paths of the files with ranges.
        let mut todo: BTreeSet<&[u8]> = named
            .iter()
            .copied()
            .filter(|p| st.nodes.contains_key(p))
            .collect();
        if !scope.ranges.is_empty() {
            for (p, n) in &st.nodes {
                if let Node::File(id) = n
                    && scope.ranges.contains_key(id)
                {
                    todo.insert(p);
                }
            }
        }
        // Every path of a file with several links: whichever comes first is written, the
        // others are linked to it (as in a whole replay).
        let linked: Vec<&[u8]> = (todo.iter())
            .filter_map(|p| match st.nodes.get(p) {
                Some(Node::File(id)) => self.links.get(id),
                _ => None,
            })
            .flatten()
            .filter_map(|q| st.nodes.get_key_value(q).map(|(k, _)| k))
            .collect();
        todo.extend(linked);
        let mut todo: Vec<&[u8]> = todo.into_iter().collect();
        todo.sort_by(|a, b| cmp_components(a, b));
        let mut done: HashSet<RelPath> = HashSet::new();
        let mut dirs: Vec<RelPath> = Vec::new();
        if scope.paths.contains(&RelPath::new()) {
            self.build_missing(b"", &mut done, &mut dirs)?;
        }
        for p in todo {
            if done.contains(p) || self.preserved(p) {
                continue;
            }
            let whole = scope.paths.contains(p);
            self.only = match (&st.nodes[p], whole) {
                (Node::File(id), false) => Some(content::merge(
                    scope.ranges.get(id).cloned().unwrap_or_default(),
                )),
                _ => None,
            };
            let made = self.build_noted(p, &mut done, &mut dirs);
            self.only = None;
            let made = made?;
            if !matches!(st.nodes[p], Node::Dir { .. }) {
                continue;
            }
            if made {
                self.build_under(p, &mut done, &mut dirs)?;
            } else if whole {
                self.build_missing(p, &mut done, &mut dirs)?;
            }
        }
        // A file built under a directory made anew may have links elsewhere: they are linked
        // to it, as a whole replay would.
        let mut others: Vec<&[u8]> = (self.done.keys())
            .filter_map(|id| self.links.get(id))
            .flatten()
            .filter(|q| !done.contains(*q))
            .filter_map(|q| st.nodes.get_key_value(q).map(|(k, _)| k))
            .collect();
        others.sort_by(|a, b| cmp_components(a, b));
        for q in others {
            if !self.preserved(q) {
                self.build(q)?;
            }
        }
        // Directories pass 1 opened up get their mode back in pass 3 too.
        dirs.extend(self.opened_up.keys().cloned());
        dirs.sort_by(|a, b| cmp_components(a, b));
        dirs.dedup();
        Ok(dirs)
    }

    /// Builds the entries of the height missing in the directory `dir`, with what is under
    /// them.
    fn build_missing(
        &mut self,
        dir: &[u8],
        done: &mut HashSet<RelPath>,
        dirs: &mut Vec<RelPath>,
    ) -> Result<(), LogError> {
        let st = self.st;
        for child in children(st, dir) {
            if done.contains(child) || self.preserved(child) {
                continue;
            }
            let dfd = self.dir_fd(dir)?;
            if fstatat(&*dfd, file_name_of(child), AtFlags::AT_SYMLINK_NOFOLLOW).is_ok() {
                continue;
            }
            if self.build_noted(child, done, dirs)? {
                self.build_under(child, done, dirs)?;
            }
        }
        Ok(())
    }

    /// Builds `p`, noting it done (and as a directory for pass 3); true when it made a new
    /// directory.
    fn build_noted(
        &mut self,
        p: &[u8],
        done: &mut HashSet<RelPath>,
        dirs: &mut Vec<RelPath>,
    ) -> Result<bool, LogError> {
        let made = self.build(p)?;
        done.insert(p.to_vec());
        if matches!(self.st.nodes[p], Node::Dir { .. }) {
            dirs.push(p.to_vec());
        }
        Ok(made)
    }

    /// Builds everything the height has under the directory `dir`, just made.
    fn build_under(
        &mut self,
        dir: &[u8],
        done: &mut HashSet<RelPath>,
        dirs: &mut Vec<RelPath>,
    ) -> Result<(), LogError> {
        let st = self.st;
        let mut under: Vec<&[u8]> = descendants(st, dir).collect();
        under.sort_by(|a, b| cmp_components(a, b));
        for q in under {
            if done.contains(q) || self.preserved(q) {
                continue;
            }
            self.build_noted(q, done, dirs)?;
        }
        Ok(())
    }
}

/// Every path of `st` under the directory `dir` (every path for the root).
fn descendants<'a>(st: &'a TreeState, dir: &[u8]) -> impl Iterator<Item = &'a [u8]> + 'a {
    st.nodes.under(dir).map(|(p, _)| p)
}

/// The entries of `st` directly in the directory `dir`.
fn children<'a>(st: &'a TreeState, dir: &'a [u8]) -> impl Iterator<Item = &'a [u8]> + 'a {
    let skip = if dir.is_empty() { 0 } else { dir.len() + 1 };
    descendants(st, dir).filter(move |p| !p[skip..].contains(&b'/'))
}
