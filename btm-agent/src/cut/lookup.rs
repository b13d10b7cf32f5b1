//! Finding files in a scan: all of them (after a walk), those at given paths (a height kept
//! from events), or one by inode number (a file the tracker marked), without building a map
//! of every file of the volume at every height.
use std::collections::{BTreeMap, BTreeSet, HashSet};

use super::scan::{Identity, Kind, Scan, ScanEntry, split};
use crate::log::RelPath;

/// The files a cut looks at, sorted by identity, each with a path and its size. A sorted
/// vector: at a walk of 10^6 files the B-tree it replaces was built from a vector of the same
/// rows, and held both (about 100 MiB) at once.
#[derive(Debug, Default)]
pub struct Files(Vec<(Identity, (RelPath, u64))>);

impl Files {
    fn at(&self, ident: &Identity) -> Option<usize> {
        self.0.binary_search_by(|(i, _)| i.cmp(ident)).ok()
    }

    pub fn get(&self, ident: &Identity) -> Option<&(RelPath, u64)> {
        self.at(ident).map(|i| &self.0[i].1)
    }

    pub fn contains_key(&self, ident: &Identity) -> bool {
        self.at(ident).is_some()
    }

    /// The files with inode number `ino` (several identities only across inode reuse).
    pub fn of_ino(&self, ino: u64) -> &[(Identity, (RelPath, u64))] {
        let from = self.0.partition_point(|(i, _)| i.0 < ino);
        let to = from + self.0[from..].partition_point(|(i, _)| i.0 == ino);
        &self.0[from..to]
    }

    pub fn values(&self) -> impl Iterator<Item = &(RelPath, u64)> {
        self.0.iter().map(|(_, v)| v)
    }
}

impl<'a> IntoIterator for &'a Files {
    type Item = &'a (Identity, (RelPath, u64));
    type IntoIter = std::slice::Iter<'a, (Identity, (RelPath, u64))>;
    fn into_iter(self) -> Self::IntoIter {
        self.0.iter()
    }
}

impl IntoIterator for Files {
    type Item = (Identity, (RelPath, u64));
    type IntoIter = std::vec::IntoIter<(Identity, (RelPath, u64))>;
    fn into_iter(self) -> Self::IntoIter {
        self.0.into_iter()
    }
}

/// From a map: already sorted, one per identity.
impl From<BTreeMap<Identity, (RelPath, u64)>> for Files {
    fn from(m: BTreeMap<Identity, (RelPath, u64)>) -> Files {
        Files(m.into_iter().collect())
    }
}

impl Scan {
    /// Every regular file, at the first of its paths in path order, with its own copies of
    /// the paths (to outlive the scan).
    pub fn owned_files(&self) -> Files {
        let n = self.files_with(|_| true).count();
        Self::first_paths(self.files_with(|_| true), n)
    }

    /// The regular files at `paths` (each at the first of those paths in path order).
    pub fn files_at<'a>(&'a self, paths: impl IntoIterator<Item = &'a RelPath>) -> Files {
        let mut at: Vec<&RelPath> = paths.into_iter().collect();
        at.sort_unstable();
        at.dedup();
        let n = at.len();
        Self::first_paths(
            at.into_iter()
                .filter_map(|p| match self.entries.get(p)?.kind {
                    Kind::File { ident, size } => Some((ident, p.as_slice(), size)),
                    _ => None,
                }),
            n,
        )
    }

    /// Files given in path order (at most `n`), each at its first path.
    fn first_paths<'a>(files: impl Iterator<Item = (Identity, &'a [u8], u64)>, n: usize) -> Files {
        let mut v: Vec<(Identity, (RelPath, u64))> = Vec::with_capacity(n);
        v.extend(files.map(|(i, p, s)| (i, (p.to_vec(), s))));
        // Stable: of a file's several paths, the first in path order stays.
        v.sort_by_key(|(i, _)| *i);
        v.dedup_by_key(|(i, _)| *i);
        Files(v)
    }

    /// (identity, path, size) of every regular file whose inode number `wanted` holds, in
    /// one pass over the scan without building a map of all files.
    pub fn files_with(
        &self,
        wanted: impl Fn(u64) -> bool,
    ) -> impl Iterator<Item = (Identity, &[u8], u64)> {
        self.entries.iter().filter_map(move |(p, e)| match e.kind {
            Kind::File { ident, size } if wanted(ident.0) => Some((ident, p, size)),
            _ => None,
        })
    }

    /// Brings the scan up to date as [`Scan::patch`] does with the entries `named` by events,
    /// then re-reads the files the tracker `marked` (inode numbers) at the paths the inode
    /// index gives once those events are in, so that a height costs what it changed, not a
    /// pass over every entry of the volume (about 30 ms per 10^6 files at every height).
    /// Marked numbers no path leads to are skipped when the scan knows why (a removed file, a
    /// directory, or `pathless`: the caller's own list, like a filesystem's internal inodes);
    /// any other is looked for over the whole scan, as [`Scan::paths_marked`] does. Returns
    /// how many entries were stat'ed or walked and the paths re-read.
    pub fn patch_marked(
        &mut self,
        named: &BTreeSet<(RelPath, Vec<u8>)>,
        marked: impl IntoIterator<Item = u64>,
        pathless: impl Fn(u64) -> bool,
    ) -> std::io::Result<(u64, Vec<RelPath>)> {
        let (mut work, mut reread) = self.patch(named)?;
        let mut paths = BTreeSet::new();
        let mut unresolved = HashSet::new();
        for ino in marked {
            match self.file_by_ino(ino) {
                Some((_, p, _)) => {
                    paths.insert(split(p));
                }
                None if self.gone.contains(&ino) || self.was_dir_ino(ino) || pathless(ino) => {}
                None => {
                    unresolved.insert(ino);
                }
            }
        }
        if !unresolved.is_empty() {
            paths.extend(self.paths_marked(|ino| unresolved.contains(&ino)));
        }
        paths.retain(|p| !named.contains(p));
        if !paths.is_empty() {
            let (w, r) = self.patch(&paths)?;
            work += w;
            reread.extend(r);
        }
        Ok((work, reread))
    }

    /// (directory, name) of every path of the files whose inode number `marked` holds: the
    /// tracker saw them written, so they are stat'ed again whatever the events said (a
    /// write through a link outside the volume names a path the events cannot resolve).
    pub fn paths_marked(&self, marked: impl Fn(u64) -> bool) -> Vec<(RelPath, Vec<u8>)> {
        self.entries
            .iter()
            .filter(|(_, e)| matches!(e.kind, Kind::File { ident, .. } if marked(ident.0)))
            .map(|(p, _)| split(p))
            .collect()
    }

    /// The regular file with inode number `ino` at one of its paths, when the index still
    /// leads to it.
    pub fn file_by_ino(&self, ino: u64) -> Option<(Identity, &[u8], u64)> {
        let file = |p, e: &ScanEntry| match e.kind {
            Kind::File { ident, size } if ident.0 == ino => Some((ident, p, size)),
            _ => None,
        };
        // Entered since the base was settled, else in the base's index.
        let recent = self.by_ino.get(&ino).and_then(|p| {
            let p = p.as_slice();
            file(p, self.entries.get(p)?)
        });
        recent.or_else(|| {
            let from = self.ino_index.partition_point(|(i, _)| *i < ino);
            (self.ino_index[from..].iter())
                .take_while(|(i, _)| *i == ino)
                .find_map(|(_, at)| {
                    let (p, e) = self.entries.base_entry(*at)?;
                    file(p, e)
                })
        })
    }

    /// `old` left `path`: the index no longer leads there.
    pub(super) fn unindex(&mut self, path: &[u8], old: &ScanEntry) {
        if let Kind::File { ident, .. } = old.kind
            && self
                .by_ino
                .get(&ident.0)
                .is_some_and(|p| p.as_slice() == path)
        {
            self.by_ino.remove(&ident.0);
        }
    }
}
