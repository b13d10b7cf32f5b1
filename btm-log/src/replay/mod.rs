//! Materialise a height into a directory, rewriting only what differs.
//!
//! Three passes over the target:
//! 1. prune: walk what exists; remove every entry the state does not have (or has with another
//!    type, or a symlink with another target);
//! 2. build: in depth-first order, create directories and symlinks, create or update files
//!    (comparing existing bytes by blake3 per piece before writing, punching holes where the state
//!    has holes), link hard links;
//! 3. directory metadata, deepest first (so a read-only directory does not block its children).
//!
//! Every entry is reached through `openat(O_NOFOLLOW | O_DIRECTORY)` chains from the target
//! directory, and every final component is opened or created with `O_NOFOLLOW`/`*at` calls that
//! do not follow symlinks: nothing a log or the existing target holds can make replay write
//! outside the target.

use std::collections::{HashMap, VecDeque};
use std::ffi::OsStr;
use std::fs::File;
use std::io::IsTerminal;
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::rc::Rc;
use std::sync::Arc;

use indicatif::{ProgressBar, ProgressStyle};
use nix::errno::Errno;
use nix::fcntl::{AtFlags, FallocateFlags, OFlag, fallocate, openat, readlinkat};
use nix::sys::stat::{FileStat, Mode, SFlag, fchmod, fstatat, mkdirat};
use nix::unistd::{
    Gid, Uid, UnlinkatFlags, Whence, fchown, fchownat, linkat, lseek, symlinkat, unlinkat,
};

use super::Log;
use super::error::LogError;
use super::format::{PayloadRef, TABLE_BLOCK, TABLE_ENTRY};
use super::record::{FileId, RelPath, cmp_components, display_path, file_name_of, parent_of};
use super::state::{FileState, Node, Piece, TreeState};
use crate::PathGlobs;
mod content;
mod direct;
mod remove;
mod scope;
mod writer;
use crate::dirfd::{self, DIR_FLAGS, openat_noatime};
pub use crate::payload::PayloadSource;
pub use content::merge as merge_ranges;
pub use scope::{ReplayScope, SinceLast};

/// How to replay.
#[derive(Clone, Debug)]
pub struct ReplayOptions {
    /// Show a progress bar on stderr when stderr is a terminal.
    pub progress: bool,
    /// `syncfs` the target's filesystem before returning, so the result is durable.
    pub sync: bool,
    /// Paths left exactly as they are in the target: never written, rewound or removed (a
    /// validator's signing state must not move backwards). Directories holding one stay.
    pub preserve: PathGlobs,
    /// Only what may differ, when the caller knows it (an in-place rollback: see
    /// [`ReplayScope`]); `None` compares the whole tree.
    pub scope: Option<ReplayScope>,
}

impl Default for ReplayOptions {
    fn default() -> Self {
        ReplayOptions {
            progress: true,
            sync: true,
            preserve: PathGlobs::default(),
            scope: None,
        }
    }
}

/// What a replay did.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct ReplayStats {
    pub height: u64,
    /// Bytes read from the log's payload sections (stored, i.e. compressed, bytes).
    pub log_bytes_read: u64,
    /// Payloads read from the log.
    pub payloads_read: u64,
    /// Bytes written into files of the target.
    pub bytes_written: u64,
    /// Bytes of existing files read to compare them with the state.
    pub bytes_compared: u64,
    /// Files, directories and symlinks created, rewritten, relinked or whose metadata was fixed.
    pub files_touched: u64,
    /// Entries of the target removed because the state does not have them (a removed directory
    /// counts once).
    pub entries_removed: u64,
    /// Ranges turned into holes.
    pub holes_punched: u64,
    /// Paths left as they were because `preserve` matches them (in the target or the height).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub preserved: Vec<String>,
    /// Paths and files a scoped replay looked at (`None`: the whole tree was compared).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub scoped: Option<u64>,
    /// Writes handed to the writer thread (`replay::writer`), to run while the next payloads
    /// are decoded. Not serialized: how replay worked, not what it did.
    #[serde(skip)]
    pub writes_in_parallel: u64,
    /// Of `bytes_written`, those the writer thread wrote with `O_DIRECT` (`replay::direct`).
    /// Not serialized either.
    #[serde(skip)]
    pub bytes_direct: u64,
}

const CACHE_BYTES: usize = 64 << 20;

use super::dirfd::{join, kind};

pub(crate) fn replay(
    log: &Log,
    height: u64,
    into: &Path,
    opts: &ReplayOptions,
) -> Result<ReplayStats, LogError> {
    let state = log.state_at(height)?;
    refuse_inside(log.dir(), "log directory", into)?;
    replay_state(log, &state, height, into, opts)
}

/// Refuses a target that holds `dir` (replay would delete it).
pub fn refuse_inside(dir: &Path, what: &str, into: &Path) -> Result<(), LogError> {
    std::fs::create_dir_all(into).map_err(|e| LogError::io(into, e))?;
    if let (Ok(l), Ok(t)) = (dir.canonicalize(), into.canonicalize())
        && l.starts_with(&t)
    {
        return Err(LogError::Replay {
            path: into.to_path_buf(),
            what: format!(
                "the {what} {} lies inside the target, and replay would delete it: \
                 replay somewhere else",
                dir.display()
            ),
        });
    }
    Ok(())
}

/// A progress bar of `total` bytes on stderr when `show` and stderr is a terminal (hidden
/// otherwise), labelled `msg`.
pub(crate) fn bytes_bar(show: bool, total: u64, msg: String) -> ProgressBar {
    if !show || !std::io::stderr().is_terminal() {
        return ProgressBar::hidden();
    }
    let pb = ProgressBar::new(total);
    if let Ok(style) = ProgressStyle::with_template(
        "{msg} [{bar:40}] {bytes}/{total_bytes} {bytes_per_sec} eta {eta}",
    ) {
        pb.set_style(style.progress_chars("=> "));
    }
    pb.set_message(msg);
    pb
}

/// Materialises `state` (the tree at `height`) into `into`, reading payloads from `src` and
/// rewriting only what differs.
pub fn replay_state(
    src: &dyn PayloadSource,
    state: &TreeState,
    height: u64,
    into: &Path,
    opts: &ReplayOptions,
) -> Result<ReplayStats, LogError> {
    std::fs::create_dir_all(into).map_err(|e| LogError::io(into, e))?;
    // The target itself must not be a symlink either: replay deletes what the height does not
    // have, so a link planted where the target should be would empty the directory it names.
    let root: OwnedFd =
        openat(nix::fcntl::AT_FDCWD, into, DIR_FLAGS, Mode::empty()).map_err(|e| match e {
            Errno::ELOOP | Errno::ENOTDIR => LogError::Replay {
                path: into.to_path_buf(),
                what:
                    "the target is a symlink (or not a directory): replay writes only into a real \
                   directory, since it removes what the height does not have; give the \
                   directory's own path"
                        .into(),
            },
            e => LogError::io(into, std::io::Error::from(e)),
        })?;
    let progress = bytes_bar(
        opts.progress,
        state.data_bytes(),
        format!("replay {height}"),
    );
    let mut r = Replayer::new(src, state, height, into, root, progress);
    r.preserve = opts.preserve.clone();
    r.writer.sync = opts.sync;
    let dirs = match &opts.scope {
        Some(scope) => r.scoped(scope)?,
        None => r.whole()?,
    };
    // Pass 3, deepest first (a read-only directory does not block its children).
    for p in dirs.iter().rev() {
        if let Some(Node::Dir { mode, uid, gid }) = state.nodes.get(p)
            && !r.preserve.matches(p)
        {
            r.dir_meta(p, *mode, *uid, *gid)?;
        }
    }
    r.stack.clear();
    // Every write done (or the first failed one reported) before the height counts as
    // replayed.
    r.writer.wait()?;
    r.stats.bytes_direct = r.writer.direct_bytes();
    if opts.sync {
        nix::unistd::syncfs(&*r.root).map_err(|e| r.err(b"", format!("syncfs: {e}")))?;
    }
    r.progress.finish_and_clear();
    r.stats.preserved = std::mem::take(&mut r.kept).into_iter().collect();
    Ok(r.stats)
}

pub(crate) struct Replayer<'a> {
    log: &'a dyn PayloadSource,
    st: &'a TreeState,
    height: u64,
    into: PathBuf,
    root: Rc<OwnedFd>,
    /// The target's filesystem: another one mounted inside it is never entered or removed.
    root_dev: u64,
    is_root: bool,
    stats: ReplayStats,
    cache: HashMap<PayloadRef, Arc<writer::Loaded>>,
    writer: writer::Writer,
    cache_order: VecDeque<PayloadRef>,
    cache_bytes: usize,
    /// Open directories along the last path used: (component, fd).
    stack: Vec<(Vec<u8>, Rc<OwnedFd>)>,
    /// Files written this replay: id -> (path, dev, ino).
    done: HashMap<FileId, (RelPath, u64, u64)>,
    /// Paths of files with several links.
    links: HashMap<FileId, Vec<RelPath>>,
    /// Directories pass 1 made writable (not root), with their mode before.
    opened_up: HashMap<RelPath, u32>,
    buf: Vec<u8>,
    progress: ProgressBar,
    preserve: PathGlobs,
    /// Paths `preserve` kept, for the report.
    kept: std::collections::BTreeSet<String>,
    /// A scoped replay: the byte ranges of the file being built that may differ (`None`:
    /// all of it).
    only: Option<Vec<(u64, u64)>>,
}

impl<'a> Replayer<'a> {
    fn new(
        log: &'a dyn PayloadSource,
        state: &'a TreeState,
        height: u64,
        into: &Path,
        root: OwnedFd,
        progress: ProgressBar,
    ) -> Replayer<'a> {
        let mut links: HashMap<FileId, Vec<RelPath>> = HashMap::new();
        for (p, n) in &state.nodes {
            if let Node::File(id) = n
                && state.files[id].nlink > 1
            {
                links.entry(*id).or_default().push(p.to_vec());
            }
        }
        let root_dev = nix::sys::stat::fstat(&root).map_or(0, |s| s.st_dev);
        Replayer {
            log,
            st: state,
            height,
            into: into.to_path_buf(),
            root_dev,
            root: Rc::new(root),
            is_root: nix::unistd::geteuid().is_root(),
            stats: ReplayStats {
                height,
                ..Default::default()
            },
            cache: HashMap::new(),
            writer: writer::Writer::default(),
            cache_order: VecDeque::new(),
            cache_bytes: 0,
            stack: Vec::new(),
            done: HashMap::new(),
            links,
            opened_up: HashMap::new(),
            buf: Vec::new(),
            progress,
            preserve: PathGlobs::default(),
            kept: Default::default(),
            only: None,
        }
    }

    fn err(&self, path: &[u8], what: impl std::fmt::Display) -> LogError {
        LogError::Replay {
            path: self.into.join(OsStr::from_bytes(path)),
            what: what.to_string(),
        }
    }

    /// The directory `dir` (relative), reached without following any symlink.
    pub(crate) fn dir_fd(&mut self, dir: &[u8]) -> Result<Rc<OwnedFd>, LogError> {
        self.open_dir(dir, false)
            .map(|fd| fd.expect("a missing directory is an error"))
    }

    /// [`Replayer::dir_fd`], or `None` when the directory (or one above it) does not exist
    /// or is not a directory (nothing can be under it; a symlink is never followed).
    pub(crate) fn dir_fd_if_there(&mut self, dir: &[u8]) -> Result<Option<Rc<OwnedFd>>, LogError> {
        self.open_dir(dir, true)
    }

    fn open_dir(&mut self, dir: &[u8], missing_ok: bool) -> Result<Option<Rc<OwnedFd>>, LogError> {
        let comps: Vec<&[u8]> = if dir.is_empty() {
            Vec::new()
        } else {
            dir.split(|&b| b == b'/').collect()
        };
        let mut keep = 0;
        while keep < self.stack.len() && keep < comps.len() && self.stack[keep].0 == comps[keep] {
            keep += 1;
        }
        self.stack.truncate(keep);
        for (i, c) in comps.iter().enumerate().skip(keep) {
            let parent = self
                .stack
                .last()
                .map_or_else(|| self.root.clone(), |(_, fd)| fd.clone());
            match openat(&*parent, *c, DIR_FLAGS, Mode::empty()) {
                Ok(fd) => self.stack.push((c.to_vec(), Rc::new(fd))),
                Err(Errno::ELOOP | Errno::ENOTDIR) if missing_ok => return Ok(None),
                Err(e @ (Errno::ELOOP | Errno::ENOTDIR)) => {
                    let at = comps[..=i].join(&b'/');
                    return Err(LogError::UnsafePath {
                        height: self.height,
                        path: display_path(&at),
                        reason: format!(
                            "a symlink or non-directory stands where a directory should be ({e}); \
                             replay never follows symlinks"
                        ),
                    });
                }
                Err(Errno::ENOENT) if missing_ok => return Ok(None),
                Err(e) => {
                    return Err(self.err(&comps[..=i].join(&b'/'), format!("open directory: {e}")));
                }
            }
        }
        Ok(Some(
            self.stack
                .last()
                .map_or_else(|| self.root.clone(), |(_, fd)| fd.clone()),
        ))
    }

    // ---- pass 1 -----------------------------------------------------------------------------

    /// Passes 1 and 2 over the whole tree; returns the directories for pass 3, in order.
    fn whole(&mut self) -> Result<Vec<RelPath>, LogError> {
        let root = self.root.clone();
        self.prune(&root, b"")?;
        let st = self.st;
        let mut paths: Vec<&[u8]> = st.nodes.keys().collect();
        paths.sort_by(|a, b| cmp_components(a, b));
        for p in &paths {
            if self.preserved(p) {
                continue;
            }
            self.build(p)?;
        }
        Ok(paths
            .into_iter()
            .filter(|p| matches!(st.nodes.get(p), Some(Node::Dir { .. })))
            .map(<[u8]>::to_vec)
            .collect())
    }

    fn prune(&mut self, dir: &OwnedFd, prefix: &[u8]) -> Result<(), LogError> {
        let names =
            dirfd::list(dir).map_err(|e| self.err(prefix, format!("read directory: {e}")))?;
        for name in names {
            let path = join(prefix, &name);
            if let Some(sub) = self.prune_entry(dir, &name, &path)? {
                self.prune(&sub, &path)?;
            }
        }
        Ok(())
    }

    /// Removes the entry `name` of `dir` (at `path`) when the height has none or another one
    /// there; returns it opened (and made writable for pass 2) when it is a directory that
    /// stays. Preserved paths and other filesystems are left alone.
    fn prune_entry(
        &mut self,
        dir: &OwnedFd,
        name: &[u8],
        path: &[u8],
    ) -> Result<Option<OwnedFd>, LogError> {
        let st = match fstatat(dir, name, AtFlags::AT_SYMLINK_NOFOLLOW) {
            Ok(s) => s,
            Err(Errno::ENOENT) => return Ok(None),
            Err(e) => return Err(self.err(path, format!("stat: {e}"))),
        };
        if st.st_dev != self.root_dev {
            // A filesystem mounted inside the target is not part of it (cuts skip it too):
            // never enter or remove it, and refuse when the height holds data there.
            if self.st.nodes.contains_key(path) {
                return Err(self.err(
                    path,
                    "another filesystem is mounted here, where the height has data: \
                     unmount it first",
                ));
            }
            return Ok(None);
        }
        if self.preserved(path) {
            return Ok(None);
        }
        let k = kind(&st);
        let keep = match self.st.nodes.get(path) {
            None => false,
            Some(Node::Dir { .. }) => k == SFlag::S_IFDIR,
            Some(Node::File(_)) => k == SFlag::S_IFREG,
            Some(Node::Symlink { target, .. }) => {
                k == SFlag::S_IFLNK
                    && readlinkat(dir, name).is_ok_and(|t| t.as_bytes() == target.as_slice())
            }
        };
        if !keep {
            if self.remove_tree(dir, name, k == SFlag::S_IFDIR, path)? {
                self.stats.entries_removed += 1;
            }
            return Ok(None);
        }
        if k != SFlag::S_IFDIR {
            return Ok(None);
        }
        let sub = openat(dir, name, DIR_FLAGS, Mode::empty())
            .map_err(|e| self.err(path, format!("open directory: {e}")))?;
        if !self.is_root && st.st_mode & 0o700 != 0o700 {
            // Pass 3 sets the final mode.
            let _ = fchmod(
                &sub,
                Mode::from_bits_truncate((st.st_mode & 0o7777) | 0o700),
            );
            self.opened_up
                .entry(path.to_vec())
                .or_insert(st.st_mode & 0o7777);
        }
        Ok(Some(sub))
    }

    // ---- pass 2 -----------------------------------------------------------------------------

    /// Makes the entry at `path` what the height has; true when it made a new directory.
    fn build(&mut self, path: &[u8]) -> Result<bool, LogError> {
        let st = self.st;
        let node = &st.nodes[path];
        let dfd = self.dir_fd(parent_of(path).unwrap_or(b""))?;
        let name = file_name_of(path);
        let existing = match fstatat(&*dfd, name, AtFlags::AT_SYMLINK_NOFOLLOW) {
            Ok(s) => Some(s),
            Err(Errno::ENOENT) => None,
            Err(e) => return Err(self.err(path, format!("stat: {e}"))),
        };
        match node {
            Node::Dir { .. } => {
                if let Some(s) = existing {
                    if kind(&s) == SFlag::S_IFDIR {
                        return Ok(false);
                    }
                    self.remove(&dfd, name, false, path)?;
                }
                mkdirat(&*dfd, name, Mode::from_bits_truncate(0o700))
                    .map_err(|e| self.err(path, format!("mkdir: {e}")))?;
                self.stats.files_touched += 1;
                return Ok(true);
            }
            Node::Symlink { target, uid, gid } => {
                let mut touched = false;
                let mut owner = existing.map(|s| (s.st_uid, s.st_gid));
                let same = existing.is_some_and(|s| {
                    kind(&s) == SFlag::S_IFLNK
                        && readlinkat(&*dfd, name).is_ok_and(|t| t.as_bytes() == target.as_slice())
                });
                if !same {
                    if let Some(s) = existing {
                        self.remove(&dfd, name, kind(&s) == SFlag::S_IFDIR, path)?;
                    }
                    symlinkat(OsStr::from_bytes(target), &*dfd, name)
                        .map_err(|e| self.err(path, format!("symlink: {e}")))?;
                    touched = true;
                    owner = fstatat(&*dfd, name, AtFlags::AT_SYMLINK_NOFOLLOW)
                        .ok()
                        .map(|s| (s.st_uid, s.st_gid));
                }
                if self.is_root && owner != Some((*uid, *gid)) {
                    fchownat(
                        &*dfd,
                        name,
                        Some(Uid::from_raw(*uid)),
                        Some(Gid::from_raw(*gid)),
                        AtFlags::AT_SYMLINK_NOFOLLOW,
                    )
                    .map_err(|e| self.err(path, format!("lchown: {e}")))?;
                    touched = true;
                }
                if touched {
                    self.stats.files_touched += 1;
                }
            }
            Node::File(id) => self.file(&dfd, path, name, *id, existing)?,
        }
        Ok(false)
    }

    fn file(
        &mut self,
        dfd: &Rc<OwnedFd>,
        path: &[u8],
        name: &[u8],
        id: FileId,
        existing: Option<FileStat>,
    ) -> Result<(), LogError> {
        // Another link of a file already written: link it.
        if let Some((primary, dev, ino)) = self.done.get(&id).cloned() {
            if let Some(s) = existing {
                if s.st_dev == dev && s.st_ino == ino {
                    return Ok(());
                }
                self.remove(dfd, name, kind(&s) == SFlag::S_IFDIR, path)?;
            }
            let pfd = self.dir_fd(parent_of(&primary).unwrap_or(b""))?;
            linkat(
                &*pfd,
                file_name_of(&primary),
                &**dfd,
                name,
                AtFlags::empty(),
            )
            .map_err(|e| self.err(path, format!("link to \"{}\": {e}", display_path(&primary))))?;
            self.stats.files_touched += 1;
            return Ok(());
        }
        let st = self.st;
        let f: &FileState = &st.files[&id];
        let mut existing = match existing {
            Some(s) if kind(&s) == SFlag::S_IFREG => Some(s),
            Some(s) => {
                self.remove(dfd, name, kind(&s) == SFlag::S_IFDIR, path)?;
                None
            }
            None => None,
        };
        // Rewrite in place only when every link of the inode is a path of this file: otherwise
        // the write would change another file of the state, or one outside the target.
        if let Some(s) = existing
            && s.st_nlink != self.links_to(id, path, &s)
        {
            unlinkat(&**dfd, name, UnlinkatFlags::NoRemoveDir)
                .map_err(|e| self.err(path, format!("unlink: {e}")))?;
            existing = None;
        }
        let fresh = existing.is_none();
        let mut made_writable = false;
        let fd = if fresh {
            openat(
                &**dfd,
                name,
                OFlag::O_RDWR
                    | OFlag::O_CREAT
                    | OFlag::O_EXCL
                    | OFlag::O_NOFOLLOW
                    | OFlag::O_CLOEXEC,
                Mode::from_bits_truncate(0o600),
            )
        } else {
            // Unchanged blocks are read and compared, not written: without their access
            // times changing (see `openat_noatime`).
            let flags = OFlag::O_RDWR | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC;
            match openat_noatime(&**dfd, name, flags, Mode::empty()) {
                Err(Errno::EACCES) if !self.is_root => {
                    // A read-only file we own: make it writable (the mode is restored below).
                    made_writable = true;
                    let ro = OFlag::O_RDONLY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC;
                    openat(&**dfd, name, ro, Mode::empty())
                        .and_then(|ro| fchmod(&ro, Mode::from_bits_truncate(0o600)))
                        .and_then(|()| openat_noatime(&**dfd, name, flags, Mode::empty()))
                }
                r => r,
            }
        }
        .map_err(|e| self.err(path, format!("open: {e}")))?;
        let file = Arc::new(File::from(fd));
        let md = file
            .metadata()
            .map_err(|e| self.err(path, format!("fstat: {e}")))?;
        if !md.file_type().is_file()
            || existing.is_some_and(|s| s.st_ino != md.ino() || s.st_dev != md.dev())
        {
            return Err(self.err(path, "the file changed while replay was working on it"));
        }
        let old_mode = existing.map_or(md.mode(), |s| s.st_mode);
        let old_size = if fresh { 0 } else { md.len() };
        let content_changed = self.content(&file, f, old_size, fresh, path, id)?;
        if f.mode & 0o6000 != 0 {
            // A write without CAP_FSETID clears set-id bits: the writes go first.
            self.writer.wait()?;
        }
        let mut chowned = false;
        if self.is_root && (md.uid(), md.gid()) != (f.uid, f.gid) {
            fchown(
                &file,
                Some(Uid::from_raw(f.uid)),
                Some(Gid::from_raw(f.gid)),
            )
            .map_err(|e| self.err(path, format!("chown: {e}")))?;
            chowned = true;
        }
        // chown clears set-id bits, and so does a write without CAP_FSETID: set the mode after
        // them.
        let mode_differs = old_mode & 0o7777 != f.mode & 0o7777;
        if chowned || content_changed || mode_differs || made_writable || fresh {
            fchmod(&file, Mode::from_bits_truncate(f.mode & 0o7777))
                .map_err(|e| self.err(path, format!("chmod: {e}")))?;
        }
        let changed = content_changed || chowned || mode_differs;
        if changed || fresh {
            self.stats.files_touched += 1;
        }
        self.done.insert(id, (path.to_vec(), md.dev(), md.ino()));
        Ok(())
    }

    /// How many paths of file `id` currently name the inode `s` (which sits at `path`).
    fn links_to(&mut self, id: FileId, path: &[u8], s: &FileStat) -> u64 {
        let Some(paths) = self.links.get(&id).cloned() else {
            return 1;
        };
        let mut n = 0;
        for q in &paths {
            if q.as_slice() == path {
                n += 1;
                continue;
            }
            // A parent may not exist yet (ENOENT): that path is not a link.
            let Ok(qd) = self.dir_fd(parent_of(q).unwrap_or(b"")) else {
                continue;
            };
            if let Ok(qs) = fstatat(&*qd, file_name_of(q), AtFlags::AT_SYMLINK_NOFOLLOW)
                && qs.st_dev == s.st_dev
                && qs.st_ino == s.st_ino
            {
                n += 1;
            }
        }
        n
    }

    fn dir_meta(&mut self, path: &[u8], mode: u32, uid: u32, gid: u32) -> Result<(), LogError> {
        let dfd = self.dir_fd(parent_of(path).unwrap_or(b""))?;
        let d = openat(&*dfd, file_name_of(path), DIR_FLAGS, Mode::empty())
            .map_err(|e| self.err(path, format!("open directory: {e}")))?;
        let st = nix::sys::stat::fstat(&d).map_err(|e| self.err(path, format!("fstat: {e}")))?;
        let mut touched = false;
        if self.is_root && (st.st_uid, st.st_gid) != (uid, gid) {
            fchown(&d, Some(Uid::from_raw(uid)), Some(Gid::from_raw(gid)))
                .map_err(|e| self.err(path, format!("chown: {e}")))?;
            touched = true;
        }
        // The mode before pass 1 made the directory writable for us, if it did.
        let old_mode = self
            .opened_up
            .get(path)
            .copied()
            .unwrap_or(st.st_mode & 0o7777);
        touched |= old_mode != mode & 0o7777;
        if touched || st.st_mode & 0o7777 != mode & 0o7777 {
            fchmod(d.as_fd(), Mode::from_bits_truncate(mode & 0o7777))
                .map_err(|e| self.err(path, format!("chmod: {e}")))?;
        }
        if touched {
            self.stats.files_touched += 1;
        }
        Ok(())
    }
}

#[cfg(test)]
pub(crate) mod tests_support {
    use super::*;

    pub(crate) fn replayer<'a>(log: &'a Log, state: &'a TreeState, into: &Path) -> Replayer<'a> {
        let root: OwnedFd = File::open(into).unwrap().into();
        Replayer::new(log, state, 0, into, root, ProgressBar::hidden())
    }
}
