//! Walking the tracked tree: the namespace as the log sees it, plus inode identities.
use std::{
    collections::{BTreeSet, HashMap, HashSet},
    fs,
    os::{fd::OwnedFd, unix::ffi::OsStrExt},
    path::Path,
};

use nix::{
    fcntl::{OFlag, openat},
    sys::stat::Mode,
};

use super::FastMap;
use super::stat::{Stat, stat_at};
pub use super::stat::{identity, ns_since_epoch};
use crate::{
    dirfd::{self, DIR_FLAGS},
    log::{PathMap, RelPath},
};

/// A file's identity across cuts: inode number plus birth time, so a reused inode number is
/// never mistaken for the file that had it before.
pub type Identity = (u64, i64);

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Kind {
    /// Inode number and birth time: a directory re-read with the same ones keeps what is
    /// under it (a directory removed and made again may get the freed number back).
    Dir {
        ident: Identity,
    },
    File {
        ident: Identity,
        size: u64,
    },
    Symlink {
        target: Vec<u8>,
    },
}

impl Kind {
    /// The kind of the directory `st` describes.
    fn dir(st: &Stat) -> Kind {
        Kind::Dir {
            ident: (st.ino, st.btime),
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ScanEntry {
    pub kind: Kind,
    /// Hard links to it (a file with several may be found at another path).
    pub links: u32,
    /// Modification and change times, ns since the epoch (what a restart trusts).
    pub mtime: i64,
    pub ctime: i64,
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
}

/// One per path of the volume, kept between heights: 64 bytes. Inode number and birth time
/// are only in the kind (they were also beside it: 80 bytes).
const _: () = assert!(std::mem::size_of::<ScanEntry>() == 64);

/// The tree under a root, by relative path (parents sort before their children).
#[derive(Clone, Debug, Default)]
pub struct Scan {
    /// Folded only between heights ([`Scan::settle`]): `ino_index` holds positions in it.
    pub entries: PathMap<ScanEntry>,
    /// Sockets, FIFOs and device nodes are not data: skipped, counted.
    pub skipped_special: u64,
    /// The volume's root directory as walked, and its device: files are read beneath it
    /// and must still be on it.
    pub root: Option<std::sync::Arc<OwnedFd>>,
    pub root_dev: u64,
    /// Directory inode -> its path (kept when the directory goes; check the entry there): a
    /// directory moved between the walk and the freeze is moved here too, not walked again.
    dirs: HashMap<u64, RelPath>,
    /// Identity -> the paths of a file with several links (may be stale: check the entry): a
    /// change seen through one path is copied to the others.
    linked: HashMap<Identity, Vec<RelPath>>,
    /// Inode numbers of single-link files a patch removed (and no path holds since): the
    /// filesystem still marks them while it frees them, and they are not to be looked for.
    pub gone: HashSet<u64>,
    /// Paths whose entry a patch added, removed or changed since [`Scan::track_changes`]
    /// (None after a walk: not tracked). The next record looks at these only, not at every
    /// path of the volume.
    pub changed: Option<BTreeSet<RelPath>>,
    /// Identities of the files whose entries those changes removed or replaced (a file may
    /// live on at another path, or be back at the same one).
    pub dropped: Vec<Identity>,
    /// Inode number -> a path of the regular file with it, for files entered since the
    /// entries' base was settled (see [`Scan::file_by_ino`]).
    pub(super) by_ino: FastMap<u64, RelPath>,
    /// (inode number, index in the entries' base) of every regular file of the base, sorted
    /// (may be stale: check the entry). 16 bytes a file, where a map to a copy of the path
    /// cost about 100.
    pub(super) ino_index: Vec<(u64, u32)>,
    /// During a whole walk: its entries, put in `entries` in one go at its end (see
    /// [`Scan::walk`]).
    walked: Option<Vec<(RelPath, ScanEntry)>>,
}

impl Scan {
    /// Walks the tree under `root` relative to open directory descriptors, never by full
    /// path: a path longer than PATH_MAX is walked like any other, and a directory swapped
    /// for a symlink meanwhile is not followed (it is skipped, as if it had gone).
    pub fn walk(root: &Path) -> std::io::Result<Scan> {
        raise_fd_limit();
        let mut scan = Scan::default();
        let root_fd = open_dir(None, root.as_os_str().as_bytes())?;
        let root_dev = nix::sys::stat::fstat(&root_fd)?.st_dev;
        scan.root_dev = root_dev;
        // `try_clone` duplicates close-on-exec (`dup` does not): no child inherits the root.
        scan.root = Some(std::sync::Arc::new(root_fd.try_clone()?));
        // The walk meets paths out of byte order ("a.ldb" sorts before "a/x"): they are
        // collected and sorted, and the map's flat base built from them in one go.
        scan.walked = Some(Vec::new());
        scan.walk_under(root_fd, Vec::new(), &mut Vec::new())?;
        let mut walked = scan.walked.take().unwrap_or_default();
        walked.sort_unstable_by(|a, b| a.0.cmp(&b.0));
        scan.entries = PathMap::from_sorted(walked, false);
        scan.index_base();
        Ok(scan)
    }

    /// Folds the paths changed since the entries' base into it when they are many (see
    /// [`PathMap::settle`]): between heights, outside the freeze.
    pub fn settle(&mut self) {
        if self.entries.settle() {
            self.index_base();
        }
    }

    /// Indexes the files of a freshly settled base by inode number.
    pub(super) fn index_base(&mut self) {
        let mut index: Vec<(u64, u32)> = (self.entries.base_values())
            .filter_map(|(at, e)| match e.kind {
                Kind::File { ident, .. } => Some((ident.0, at)),
                _ => None,
            })
            .collect();
        index.sort_unstable();
        self.ino_index = index;
        self.by_ino = FastMap::default();
    }

    /// Walks everything under the open directory `dir` (at `rel`), adding the paths of the
    /// files it finds to `files`; the number of entries.
    fn walk_under(
        &mut self,
        dir: OwnedFd,
        rel: RelPath,
        files: &mut Vec<RelPath>,
    ) -> std::io::Result<u64> {
        let track = !rel.is_empty(); // a patch, not the whole walk
        let names = dirfd::list(&dir)?;
        let mut stack = vec![Frame {
            fd: dir,
            rel,
            names,
        }];
        let mut seen = 0;
        while let Some(top) = stack.last_mut() {
            let Some(name) = top.names.pop() else {
                stack.pop();
                continue;
            };
            let path = join(&top.rel, &name);
            let st = match stat_at(&top.fd, &name) {
                Ok(st) => st,
                // Deleted between readdir and stat (only possible while unfrozen).
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
                Err(e) => return Err(e),
            };
            seen += 1;
            match self.entry_at(&top.fd, &name, path, &st)? {
                Some((path, Some(sub))) => {
                    let names = dirfd::list(&sub)?;
                    stack.push(Frame {
                        fd: sub,
                        rel: path,
                        names,
                    });
                }
                Some((path, None)) if track => files.push(path),
                Some((_, None)) | None => {}
            }
        }
        Ok(seen)
    }

    /// Records the entry `name` of `dir` (at `path`, stat'ed as `st`). For a directory on the
    /// volume, also returns it opened, to walk into.
    fn entry_at(
        &mut self,
        dir: &OwnedFd,
        name: &[u8],
        path: RelPath,
        st: &Stat,
    ) -> std::io::Result<Option<(RelPath, Option<OwnedFd>)>> {
        let kind = match st.mode & libc::S_IFMT {
            libc::S_IFDIR => {
                if st.dev != self.root_dev {
                    return Ok(None); // another filesystem mounted inside the volume
                }
                let sub = match open_dir(Some(dir), name) {
                    Ok(fd) => fd,
                    // Gone, or swapped for a symlink or a file since the stat.
                    Err(e)
                        if matches!(
                            e.raw_os_error(),
                            Some(libc::ENOENT | libc::ELOOP | libc::ENOTDIR)
                        ) =>
                    {
                        return Ok(None);
                    }
                    Err(e) => return Err(e),
                };
                self.insert(path.clone(), Kind::dir(st), st);
                return Ok(Some((path, Some(sub))));
            }
            libc::S_IFREG => Kind::File {
                ident: (st.ino, st.btime),
                size: st.size,
            },
            libc::S_IFLNK => match nix::fcntl::readlinkat(dir, name) {
                Ok(t) => Kind::Symlink {
                    target: t.as_bytes().to_vec(),
                },
                Err(nix::errno::Errno::ENOENT) => return Ok(None),
                Err(e) => return Err(e.into()),
            },
            _ => {
                self.skipped_special += 1;
                return Ok(None);
            }
        };
        self.insert(path.clone(), kind, st);
        Ok(Some((path, None)))
    }

    /// Brings a walk up to date with the entries named since it began (see [`super::nsevents`]):
    /// each is stat'ed again, a directory new at its place is walked, and what is gone is
    /// removed with everything under it. Returns how many entries it stat'ed or walked, and
    /// the paths it re-read (a file there may have changed).
    pub fn patch(
        &mut self,
        named: &BTreeSet<(RelPath, Vec<u8>)>,
    ) -> std::io::Result<(u64, Vec<RelPath>)> {
        let root = self
            .root
            .clone()
            .ok_or_else(|| std::io::Error::other("a scan without its root"))?;
        let mut work = 0;
        let mut reread = Vec::new();
        let mut walked: HashSet<RelPath> = HashSet::new();
        let gone = |e: &std::io::Error| {
            e.kind() == std::io::ErrorKind::NotFound
                || matches!(
                    e.raw_os_error(),
                    Some(libc::ENOTDIR | libc::ELOOP | libc::EXDEV)
                )
        };
        // Sorted by directory: a parent's entries come before its children's. What exists is
        // read first and what is gone removed after, so a directory moved away is still in
        // the scan when its new place is read, and moves with what is under it.
        let mut gone_paths = Vec::new();
        // An event names only the path a change went through: every other path of a file
        // with several links is read again too (that path may be gone by now, taking the
        // only mention of the change with it).
        let mut named = named.clone();
        let others: Vec<(RelPath, Vec<u8>)> = named
            .iter()
            .filter_map(
                |(d, n)| match self.entries.get(&join(d, n)).map(|e| &e.kind) {
                    Some(Kind::File { ident, .. }) => Some(*ident),
                    _ => None,
                },
            )
            .filter(|i| self.linked.contains_key(i))
            .collect::<Vec<_>>()
            .into_iter()
            .flat_map(|i| self.paths_of(i, 0))
            .map(|p| split(&p))
            .collect();
        named.extend(others);
        for (dir, name) in &named {
            let path = join(dir, name);
            if ancestors(&path).any(|a| walked.contains(a)) {
                continue; // under a directory walked in full just now
            }
            let dir_fd = if dir.is_empty() {
                root.try_clone()?
            } else {
                match open_beneath(&root, dir, OFlag::O_RDONLY | OFlag::O_DIRECTORY) {
                    Ok(f) => OwnedFd::from(f),
                    Err(e) if gone(&e) => {
                        gone_paths.push(path);
                        continue;
                    }
                    Err(e) => return Err(e),
                }
            };
            work += 1;
            let st = match stat_at(&dir_fd, name) {
                Ok(st) => st,
                Err(e) if gone(&e) => {
                    gone_paths.push(path);
                    continue;
                }
                Err(e) => return Err(e),
            };
            let is_dir = st.mode & libc::S_IFMT == libc::S_IFDIR;
            // The same directory: inode number and birth time (a directory removed and made
            // again may get the freed number back).
            let dir_ino_at = |s: &Scan, p: &[u8]| {
                s.entries
                    .get(p)
                    .is_some_and(|e| e.kind == Kind::dir(&st) && st.btime != 0)
            };
            if is_dir && dir_ino_at(self, &path) {
                // Its own metadata changed; what is under it has events of its own.
                self.insert(path.clone(), Kind::dir(&st), &st);
                reread.push(path);
                continue;
            }
            // The same directory seen elsewhere: renamed (moved in memory, not walked).
            let moved_from = self
                .dirs
                .get(&st.ino)
                .filter(|old| **old != path && dir_ino_at(self, old))
                .cloned();
            self.remove_tree(&path);
            if let (true, Some(old)) = (is_dir && st.dev == self.root_dev, moved_from) {
                // Renamed: every path under it changes, nothing under it needs a stat.
                self.move_tree(&old, &path, &mut reread);
                self.insert(path.clone(), Kind::dir(&st), &st);
                reread.push(path);
                continue;
            }
            if let Some((path, sub)) = self.entry_at(&dir_fd, name, path, &st)? {
                if let Some(sub) = sub {
                    work += self.walk_under(sub, path.clone(), &mut reread)?;
                    walked.insert(path.clone());
                }
                self.same_for_every_link(&path, &mut reread);
                reread.push(path);
            }
        }
        for path in gone_paths {
            self.remove_tree(&path);
            reread.push(path);
        }
        Ok((work, reread))
    }

    /// Every path of file `ident` (the list of its links, checked against the scan, and
    /// rebuilt over the whole scan when it has fewer paths than the file has links: the most
    /// any of its entries, or `links`, says).
    fn paths_of(&mut self, ident: Identity, links: u32) -> Vec<RelPath> {
        let holds = |s: &Scan, p: &RelPath| {
            s.entries
                .get(p)
                .is_some_and(|o| matches!(o.kind, Kind::File { ident: i, .. } if i == ident))
        };
        let mut paths = self.linked.get(&ident).cloned().unwrap_or_default();
        paths.retain(|p| holds(self, p));
        let links = paths
            .iter()
            .filter_map(|p| self.entries.get(p))
            .map(|e| e.links)
            .chain([links])
            .max()
            .unwrap_or(0) as usize;
        if paths.len() < links {
            paths = self
                .entries
                .iter()
                .filter(|(_, o)| matches!(o.kind, Kind::File { ident: i, .. } if i == ident))
                .map(|(p, _)| p.to_vec())
                .collect();
        }
        self.linked.insert(ident, paths.clone());
        paths
    }

    /// A file re-read at `path` has the same size, mode, owner and times at all its other
    /// links (an event names only the path that was used).
    fn same_for_every_link(&mut self, path: &[u8], reread: &mut Vec<RelPath>) {
        let Some(e) = self.entries.get(path).cloned() else {
            return;
        };
        let Kind::File { ident, .. } = e.kind else {
            return;
        };
        // One link and never seen with more: no other path to bring up to date. (Asking
        // paths_of would search the whole scan for the links it does not know of, at every
        // file re-read: 10 ms per file at 10^6 entries.)
        if e.links <= 1 && !self.linked.contains_key(&ident) {
            return;
        }
        // Entries have the new link count now: paths_of finds every link.
        let paths = self.paths_of(ident, e.links);
        for p in paths.iter().filter(|p| p.as_slice() != path) {
            if let Some(other) = self.entries.get_mut(p)
                && matches!(other.kind, Kind::File { ident: i, .. } if i == ident)
            {
                *other = e.clone();
                reread.push(p.clone());
                self.note(p, None);
            }
        }
    }

    /// Moves the entries at and under `from` to `to` (in memory: a directory renamed), and
    /// adds the paths of the files it moved to `moved`.
    fn move_tree(&mut self, from: &[u8], to: &[u8], moved: &mut Vec<RelPath>) {
        let keys = self.entries.paths_under(from);
        let old = self.entries.remove(from);
        self.note(from, old.as_ref());
        for k in keys {
            let e = self.entries.remove(&k).expect("listed");
            self.note(&k, Some(&e));
            self.unindex(&k, &e);
            let mut nk = to.to_vec();
            nk.extend_from_slice(&k[from.len()..]);
            match e.kind {
                Kind::Dir { ident } => {
                    self.dirs.insert(ident.0, nk.clone());
                }
                Kind::File { ident, .. } => {
                    self.by_ino.insert(ident.0, nk.clone());
                    moved.push(nk.clone());
                }
                Kind::Symlink { .. } => {}
            }
            let old = self.entries.insert(nk.clone(), e);
            self.note(&nk, old.as_ref());
        }
    }

    /// Whether `ino` is, or was while this scan was patched, a directory: the tracker marks
    /// a directory's blocks when it is removed, and they are not file data.
    pub fn was_dir_ino(&self, ino: u64) -> bool {
        self.dirs.contains_key(&ino)
    }

    /// Removes `path` and everything under it.
    fn remove_tree(&mut self, path: &[u8]) {
        if let Some(e) = self.entries.remove(path) {
            self.forget(&e);
            self.note(path, Some(&e));
            self.unindex(path, &e);
        }
        for k in self.entries.paths_under(path) {
            if let Some(e) = self.entries.remove(&k) {
                self.forget(&e);
                self.note(&k, Some(&e));
                self.unindex(&k, &e);
            }
        }
    }

    /// A removed entry: a file with one link is gone with it.
    fn forget(&mut self, e: &ScanEntry) {
        if let Kind::File { ident, .. } = e.kind
            && e.links <= 1
        {
            self.gone.insert(ident.0);
        }
    }

    fn insert(&mut self, path: RelPath, kind: Kind, st: &Stat) {
        if let Kind::File { ident, .. } = kind {
            self.gone.remove(&ident.0);
            // A whole walk indexes its files when it ends; a file back at (or still at) the
            // base path the index has for it needs no copy of the path: files re-read at
            // every height would otherwise bring back one copy per file over time.
            let indexed = || {
                (self.entries.base_position(&path))
                    .is_some_and(|at| self.ino_index.binary_search(&(ident.0, at)).is_ok())
            };
            if self.walked.is_none() && !indexed() {
                self.by_ino.insert(ident.0, path.clone());
            }
        }
        if matches!(kind, Kind::Dir { .. }) {
            self.dirs.insert(st.ino, path.clone());
        }
        if let Kind::File { ident, .. } = kind
            && st.nlink > 1
        {
            let paths = self.linked.entry(ident).or_default();
            if !paths.contains(&path) {
                paths.push(path.clone());
            }
        }
        let e = ScanEntry {
            kind,
            links: st.nlink,
            mtime: st.mtime,
            ctime: st.ctime,
            mode: st.mode & 0o7777,
            uid: st.uid,
            gid: st.gid,
        };
        let new_ino = match e.kind {
            Kind::File { ident, .. } => Some(ident.0),
            _ => None,
        };
        if let Some(walked) = &mut self.walked {
            // A whole walk meets each path once (it starts from nothing).
            walked.push((path, e));
            return;
        }
        let old = self.entries.insert(path.clone(), e);
        if let Some(old) = &old
            && !matches!(old.kind, Kind::File { ident, .. } if Some(ident.0) == new_ino)
        {
            self.unindex(&path, old);
        }
        self.note(&path, old.as_ref());
    }

    /// From now on, remember which paths change (see [`Scan::changed`]).
    pub fn track_changes(&mut self) {
        self.changed = Some(BTreeSet::new());
        self.dropped.clear();
    }

    /// `path` changed; `old` is the entry it held before, if any.
    fn note(&mut self, path: &[u8], old: Option<&ScanEntry>) {
        let Some(changed) = &mut self.changed else {
            return;
        };
        changed.insert(path.to_vec());
        if let Some(ScanEntry {
            kind: Kind::File { ident, .. },
            ..
        }) = old
        {
            self.dropped.push(*ident);
        }
    }

    /// Keeps this scan between cuts without holding the volume open (an open root keeps
    /// it from being unmounted); [`Scan::reopen`] takes the root again before a patch.
    pub fn release_root(&mut self) {
        self.root = None;
    }

    /// Opens `root` again for a patch; fails when it is no longer the filesystem walked.
    pub fn reopen(&mut self, root: &Path) -> std::io::Result<()> {
        let fd = open_dir(None, root.as_os_str().as_bytes())?;
        if nix::sys::stat::fstat(&fd)?.st_dev != self.root_dev {
            return Err(std::io::Error::other(
                "another filesystem is mounted at the volume's root",
            ));
        }
        self.root = Some(std::sync::Arc::new(fd));
        Ok(())
    }

    /// Paths whose type, size, mode or owner differ between this scan (kept from events)
    /// and a walk of the tree, or that only one of them has. Times are left out: a store
    /// through mmap changes mtime without an event.
    pub fn differences(&self, walked: &Scan) -> Vec<RelPath> {
        let same = |a: &ScanEntry, b: &ScanEntry| {
            (&a.kind, a.mode, a.uid, a.gid) == (&b.kind, b.mode, b.uid, b.gid)
        };
        let changed = walked
            .entries
            .iter()
            .filter(|(p, e)| !self.entries.get(p).is_some_and(|k| same(k, e)))
            .map(|(p, _)| p.to_vec());
        let gone = self
            .entries
            .keys()
            .filter(|p| !walked.entries.contains_key(p))
            .map(<[u8]>::to_vec);
        changed.chain(gone).collect()
    }

    /// Whether file `ident` was seen with several links (by the walk or a patch).
    pub fn has_several_links(&self, ident: &Identity) -> bool {
        self.linked.contains_key(ident)
    }
}

/// A relative path as (parent directory, name).
pub fn split(p: &[u8]) -> (RelPath, Vec<u8>) {
    match p.iter().rposition(|&b| b == b'/') {
        Some(i) => (p[..i].to_vec(), p[i + 1..].to_vec()),
        None => (Vec::new(), p.to_vec()),
    }
}

pub use crate::log::dirfd::join;

/// The proper ancestors of a relative path, nearest last ("a/b/c" -> "a", "a/b").
pub(crate) fn ancestors(p: &[u8]) -> impl Iterator<Item = &[u8]> {
    p.iter()
        .enumerate()
        .filter(|(_, c)| **c == b'/')
        .map(move |(i, _)| &p[..i])
}

/// One directory being walked: its descriptor, its path, the names not visited yet.
struct Frame {
    fd: OwnedFd,
    rel: RelPath,
    names: Vec<Vec<u8>>,
}

/// Opens directory `name` of `dir` (or `name` itself, the root, which may be reached through
/// symlinks the operator chose), never following a symlink at `name`.
fn open_dir(dir: Option<&OwnedFd>, name: &[u8]) -> std::io::Result<OwnedFd> {
    match dir {
        Some(d) => openat(d, name, DIR_FLAGS, Mode::empty()),
        None => openat(
            nix::fcntl::AT_FDCWD,
            name,
            DIR_FLAGS - OFlag::O_NOFOLLOW,
            Mode::empty(),
        ),
    }
    .map_err(Into::into)
}

/// Opens file `rel` beneath the directory `root`, never following a symlink and never leaving
/// the filesystem: in one `openat2` (RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS | RESOLVE_NO_XDEV),
/// or, for a path longer than PATH_MAX (or a kernel without openat2), one component at a time.
pub fn open_beneath(root: &OwnedFd, rel: &[u8], flags: OFlag) -> std::io::Result<fs::File> {
    use nix::fcntl::{OpenHow, ResolveFlag, openat2};
    let flags = flags | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC;
    let how = OpenHow::new().flags(flags).resolve(
        ResolveFlag::RESOLVE_BENEATH
            | ResolveFlag::RESOLVE_NO_SYMLINKS
            | ResolveFlag::RESOLVE_NO_XDEV,
    );
    match openat2(root, rel, how) {
        Ok(fd) => return Ok(fs::File::from(fd)),
        Err(nix::errno::Errno::ENAMETOOLONG | nix::errno::Errno::ENOSYS) => {}
        Err(e) => return Err(e.into()),
    }
    let mut dir: Option<OwnedFd> = None;
    let mut comps = rel.split(|&b| b == b'/').peekable();
    while let Some(c) = comps.next() {
        let at = dir.as_ref().unwrap_or(root);
        if comps.peek().is_none() {
            return Ok(fs::File::from(openat(at, c, flags, Mode::empty())?));
        }
        dir = Some(open_dir(Some(at), c)?);
    }
    Err(std::io::Error::from_raw_os_error(libc::ENOENT))
}

/// The walk holds one descriptor per directory level: allow as many as the hard limit does.
fn raise_fd_limit() {
    // SAFETY: getrlimit/setrlimit on a local struct.
    unsafe {
        let mut r: libc::rlimit = std::mem::zeroed();
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut r) == 0 && r.rlim_cur < r.rlim_max {
            r.rlim_cur = r.rlim_max;
            libc::setrlimit(libc::RLIMIT_NOFILE, &r);
        }
    }
}
