//! Comparing a directory (the volume itself) with a height, reading only: `verify --volume`.
//!
//! It answers "is the volume exactly this height?" (after a rollback, or with the node stopped
//! at a height) without writing anything: every entry is opened by descriptor without following
//! symlinks, as replay does, and files are read, never opened for writing. What it compares is
//! what a replay would set: the kind of each entry, its permission bits and owner, a file's size
//! and bytes (holes read as zeros), a symlink's target, and entries the height does not have.
//! Like the cut, it skips sockets, FIFOs and devices, and other filesystems mounted inside.

use std::collections::{BTreeMap, HashSet, VecDeque};
use std::fs::File;
use std::os::fd::OwnedFd;
use std::os::unix::fs::FileExt;
use std::path::Path;

use nix::errno::Errno;
use nix::fcntl::{AtFlags, OFlag, openat, readlinkat};
use nix::sys::stat::{FileStat, Mode, SFlag, fstat, fstatat};

use super::dirfd::{self, DIR_FLAGS, join, kind, openat_noatime};
use super::error::LogError;
use super::globs::PathGlobs;
use super::payload::PayloadSource;
use super::record::display_path;
use super::state::{FileState, Node, TreeState};

/// Bytes read from a file at a time.
const READ: usize = 1 << 20;
/// Payloads kept decoded (neighbouring pieces of a file often share one).
const CACHED: usize = 16;

/// What [`compare_tree`] was asked.
#[derive(Clone, Debug, Default)]
pub struct CompareOptions {
    /// Paths not compared (as `replay --preserve` leaves them alone).
    pub preserve: PathGlobs,
    /// At most this many differences are listed (all are counted).
    pub max_listed: usize,
    /// Show a progress bar on stderr when stderr is a terminal.
    pub progress: bool,
}

/// What differs between the directory and the height.
#[derive(Clone, Debug, Default, serde::Serialize)]
pub struct TreeDiff {
    pub height: u64,
    /// Entries of the height compared, and bytes of files read.
    pub entries_compared: u64,
    pub bytes_compared: u64,
    /// Differences found, and the first `max_listed` of them: (path, what differs).
    pub differences: u64,
    pub listed: Vec<(String, String)>,
    /// Sockets, FIFOs and devices, and mount points of other filesystems: not data, skipped.
    pub skipped: u64,
}

impl TreeDiff {
    fn differs(&mut self, path: &[u8], what: String, max: usize) {
        self.differences += 1;
        if self.listed.len() < max {
            self.listed.push((display_path(path), what));
        }
    }
}

/// Compares the directory `root` with `state`, the tree at `height`; reads payloads from
/// `src`, and checks each against its blake3. Never writes.
pub fn compare_tree(
    src: &dyn PayloadSource,
    state: &TreeState,
    height: u64,
    root: &Path,
    opts: &CompareOptions,
) -> Result<TreeDiff, LogError> {
    let fd = openat(nix::fcntl::AT_FDCWD, root, DIR_FLAGS, Mode::empty())
        .map_err(|e| LogError::io(root, std::io::Error::from(e)))?;
    let dev = fstat(&fd)
        .map_err(|e| LogError::io(root, std::io::Error::from(e)))?
        .st_dev;
    let bar = super::replay::bytes_bar(
        opts.progress,
        state.total_size(),
        format!("compare with {height}"),
    );
    let mut c = Comparer {
        bar,
        src,
        state,
        opts,
        dev,
        root: root.to_path_buf(),
        seen: HashSet::new(),
        cache: VecDeque::new(),
        diff: TreeDiff {
            height,
            ..Default::default()
        },
    };
    c.dir(&fd, b"")?;
    c.bar.finish_and_clear();
    // What the height has and the walk did not find: one difference per missing subtree.
    let missing: HashSet<&[u8]> = state
        .nodes
        .keys()
        .filter(|p| !c.seen.contains(p) && !opts.preserve.matches(p))
        .collect();
    for (top, under) in missing_subtrees(&missing) {
        let what = match under {
            0 => "missing (the height has it)".to_string(),
            n => format!("missing, with the {n} entries under it (the height has them)"),
        };
        c.diff.differs(top, what, opts.max_listed);
    }
    Ok(c.diff)
}

/// The missing paths whose parent directory is not missing too, each with how many missing
/// paths lie under it, in path order: a lost directory is one difference, not one per entry.
fn missing_subtrees<'a>(missing: &HashSet<&'a [u8]>) -> BTreeMap<&'a [u8], u64> {
    let mut tops = BTreeMap::new();
    for &p in missing {
        let mut top = p;
        let mut q = p;
        while let Some(i) = q.iter().rposition(|&b| b == b'/') {
            q = &q[..i];
            if missing.contains(q) {
                top = q;
            }
        }
        *tops.entry(top).or_insert(0) += u64::from(top != p);
    }
    tops
}

struct Comparer<'a> {
    bar: indicatif::ProgressBar,
    src: &'a dyn PayloadSource,
    state: &'a TreeState,
    opts: &'a CompareOptions,
    dev: u64,
    root: std::path::PathBuf,
    /// Paths of the height found in the directory.
    seen: HashSet<&'a [u8]>,
    cache: VecDeque<([u8; 32], std::sync::Arc<Vec<u8>>)>,
    diff: TreeDiff,
}

impl<'a> Comparer<'a> {
    fn io(&self, path: &[u8], e: impl Into<std::io::Error>) -> LogError {
        LogError::io(self.root.join(display_path(path)), e.into())
    }

    fn differs(&mut self, path: &[u8], what: impl Into<String>) {
        self.diff.differs(path, what.into(), self.opts.max_listed);
    }

    fn dir(&mut self, fd: &OwnedFd, prefix: &[u8]) -> Result<(), LogError> {
        let mut names = dirfd::list(fd).map_err(|e| self.io(prefix, e))?;
        names.sort();
        for name in names {
            let path = join(prefix, &name);
            let st = match fstatat(fd, name.as_slice(), AtFlags::AT_SYMLINK_NOFOLLOW) {
                Ok(s) => s,
                Err(Errno::ENOENT) => continue,
                Err(e) => return Err(self.io(&path, e)),
            };
            if self.opts.preserve.matches(&path) {
                continue;
            }
            let Some((key, node)) = self.state.nodes.get_key_value(&path) else {
                match kind(&st) {
                    SFlag::S_IFSOCK | SFlag::S_IFIFO | SFlag::S_IFCHR | SFlag::S_IFBLK => {
                        self.diff.skipped += 1
                    }
                    _ if st.st_dev != self.dev => self.diff.skipped += 1,
                    _ => self.differs(&path, "not in the height"),
                }
                continue;
            };
            self.seen.insert(key);
            self.diff.entries_compared += 1;
            if st.st_dev != self.dev {
                self.diff.skipped += 1;
                self.differs(
                    &path,
                    "another filesystem is mounted where the height has data",
                );
                continue;
            }
            match (node, kind(&st)) {
                (Node::Dir { mode, uid, gid }, SFlag::S_IFDIR) => {
                    self.meta(&path, &st, *mode, *uid, *gid);
                    let sub = openat(fd, name.as_slice(), DIR_FLAGS, Mode::empty())
                        .map_err(|e| self.io(&path, e))?;
                    self.dir(&sub, &path)?;
                }
                (Node::File(id), SFlag::S_IFREG) => {
                    let f = self
                        .state
                        .files
                        .get(id)
                        .ok_or_else(|| LogError::InvalidRecord {
                            height: self.diff.height,
                            reason: format!(
                                "the state names file {id} at {} but holds no such file",
                                display_path(&path)
                            ),
                        })?;
                    self.file(fd, &name, &path, &st, (*id, f))?;
                }
                (Node::Symlink { target, uid, gid }, SFlag::S_IFLNK) => {
                    let now = readlinkat(fd, name.as_slice()).map_err(|e| self.io(&path, e))?;
                    if now.as_encoded_bytes() != target.as_slice() {
                        self.differs(&path, "symlink target");
                    }
                    if (st.st_uid, st.st_gid) != (*uid, *gid) {
                        self.differs(&path, "owner");
                    }
                }
                (want, _) => {
                    let want = match want {
                        Node::Dir { .. } => "a directory",
                        Node::File(_) => "a regular file",
                        Node::Symlink { .. } => "a symlink",
                    };
                    self.differs(&path, format!("kind (the height has {want} here)"));
                }
            }
        }
        Ok(())
    }

    fn meta(&mut self, path: &[u8], st: &FileStat, mode: u32, uid: u32, gid: u32) {
        if st.st_mode & 0o7777 != mode & 0o7777 {
            self.differs(
                path,
                format!(
                    "mode {:o}, the height has {:o}",
                    st.st_mode & 0o7777,
                    mode & 0o7777
                ),
            );
        }
        if (st.st_uid, st.st_gid) != (uid, gid) {
            self.differs(
                path,
                format!(
                    "owner {}:{}, the height has {uid}:{gid}",
                    st.st_uid, st.st_gid
                ),
            );
        }
    }

    fn file(
        &mut self,
        dir: &OwnedFd,
        name: &[u8],
        path: &[u8],
        st: &FileStat,
        (id, f): (u64, &FileState),
    ) -> Result<(), LogError> {
        self.meta(path, st, f.mode, f.uid, f.gid);
        if st.st_size as u64 != f.size {
            self.differs(
                path,
                format!("size {}, the height has {}", st.st_size, f.size),
            );
            return Ok(());
        }
        let fd = openat_noatime(
            dir,
            name,
            OFlag::O_RDONLY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC | OFlag::O_NOCTTY,
            Mode::empty(),
        )
        .map_err(|e| self.io(path, e))?;
        let file = File::from(fd);
        // Swapped since the stat: compare what is there now would be a guess.
        let now = fstat(&file).map_err(|e| self.io(path, e))?;
        if (now.st_ino, now.st_dev) != (st.st_ino, st.st_dev) {
            self.differs(path, "replaced while it was compared");
            return Ok(());
        }
        // Pieces in order; what lies between them must read as zeros.
        let mut at = 0u64;
        let mut buf = vec![0u8; READ];
        for (&start, piece) in f.pieces.iter() {
            if start > at && !self.zeros(&file, path, at, start, &mut buf)? {
                return Ok(());
            }
            let raw = self.payload(path, id, start, &piece.payload)?;
            let want = &raw[piece.skip as usize..(piece.skip + piece.len) as usize];
            let mut off = 0usize;
            while off < want.len() {
                let n = (want.len() - off).min(READ);
                self.read(&file, path, start + off as u64, &mut buf[..n])?;
                if buf[..n] != want[off..off + n] {
                    let first = (0..n).find(|&i| buf[i] != want[off + i]).unwrap_or(0);
                    self.differs(
                        path,
                        format!("bytes differ at offset {}", start + (off + first) as u64),
                    );
                    return Ok(());
                }
                off += n;
            }
            at = start + piece.len;
        }
        if f.size > at {
            self.zeros(&file, path, at, f.size, &mut buf)?;
        }
        Ok(())
    }

    fn read(&mut self, file: &File, path: &[u8], at: u64, buf: &mut [u8]) -> Result<(), LogError> {
        file.read_exact_at(buf, at).map_err(|e| self.io(path, e))?;
        self.diff.bytes_compared += buf.len() as u64;
        self.bar.inc(buf.len() as u64);
        Ok(())
    }

    /// Whether `[from, to)` of the file reads as zeros (a hole of the height); a difference is
    /// noted when not.
    fn zeros(
        &mut self,
        file: &File,
        path: &[u8],
        from: u64,
        to: u64,
        buf: &mut [u8],
    ) -> Result<bool, LogError> {
        let mut at = from;
        while at < to {
            let n = ((to - at) as usize).min(buf.len());
            self.read(file, path, at, &mut buf[..n])?;
            if let Some(i) = buf[..n].iter().position(|&b| b != 0) {
                self.differs(
                    path,
                    format!(
                        "bytes differ at offset {} (a hole in the height)",
                        at + i as u64
                    ),
                );
                return Ok(false);
            }
            at += n as u64;
        }
        Ok(true)
    }

    /// A payload's raw bytes, checked against its blake3 (a damaged log is an error, not a
    /// difference of the volume).
    fn payload(
        &mut self,
        path: &[u8],
        id: u64,
        offset: u64,
        p: &super::format::PayloadRef,
    ) -> Result<std::sync::Arc<Vec<u8>>, LogError> {
        if let Some((_, raw)) = self.cache.iter().find(|(h, _)| *h == p.hash) {
            return Ok(raw.clone());
        }
        let raw = self.src.load_payload(p).map_err(|e| match e {
            Ok(what) => LogError::CorruptExtent {
                height: self.src.payload_height(p).unwrap_or(self.diff.height),
                path: display_path(path),
                id,
                offset,
                len: p.raw_len,
                what,
            },
            Err(e) => e,
        })?;
        let raw = std::sync::Arc::new(raw);
        if self.cache.len() == CACHED {
            self.cache.pop_front();
        }
        self.cache.push_back((p.hash, raw.clone()));
        Ok(raw)
    }
}
