//! Walking the tracked tree: the namespace as the log sees it, plus inode identities.
use std::{
    collections::BTreeMap,
    fs,
    os::{
        fd::{AsRawFd, OwnedFd},
        unix::{ffi::OsStrExt, fs::MetadataExt},
    },
    path::Path,
};

use nix::{
    fcntl::{OFlag, openat},
    sys::stat::Mode,
};

use crate::{
    dirfd::{self, DIR_FLAGS},
    log::RelPath,
};

/// A file's identity across cuts: inode number plus birth time, so a reused inode number is
/// never mistaken for the file that had it before.
pub type Identity = (u64, i128);

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Kind {
    Dir,
    File { ident: Identity, size: u64 },
    Symlink { target: Vec<u8> },
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ScanEntry {
    pub kind: Kind,
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
}

/// The tree under a root, by relative path (parents sort before their children).
#[derive(Clone, Debug, Default)]
pub struct Scan {
    pub entries: BTreeMap<RelPath, ScanEntry>,
    /// Sockets, FIFOs and device nodes are not data: skipped, counted.
    pub skipped_special: u64,
    /// The volume's root directory as walked, and its device: files are read beneath it
    /// and must still be on it.
    pub root: Option<std::sync::Arc<OwnedFd>>,
    pub root_dev: u64,
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
        scan.root = Some(std::sync::Arc::new(nix::unistd::dup(&root_fd)?));
        let names = dirfd::list(&root_fd)?;
        let mut stack = vec![Frame {
            fd: root_fd,
            rel: Vec::new(),
            names,
        }];
        while let Some(top) = stack.last_mut() {
            let Some(name) = top.names.pop() else {
                stack.pop();
                continue;
            };
            let mut path = top.rel.clone();
            if !path.is_empty() {
                path.push(b'/');
            }
            path.extend_from_slice(&name);
            let st = match stat_at(&top.fd, &name) {
                Ok(st) => st,
                // Deleted between readdir and stat (only possible while unfrozen).
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
                Err(e) => return Err(e),
            };
            let kind = match st.mode & libc::S_IFMT {
                libc::S_IFDIR => {
                    if st.dev != root_dev {
                        continue; // another filesystem mounted inside the volume
                    }
                    let sub = match open_dir(Some(&top.fd), &name) {
                        Ok(fd) => fd,
                        // Gone, or swapped for a symlink or a file since the stat.
                        Err(e)
                            if matches!(
                                e.raw_os_error(),
                                Some(libc::ENOENT | libc::ELOOP | libc::ENOTDIR)
                            ) =>
                        {
                            continue;
                        }
                        Err(e) => return Err(e),
                    };
                    let names = dirfd::list(&sub)?;
                    scan.insert(path.clone(), Kind::Dir, &st);
                    stack.push(Frame {
                        fd: sub,
                        rel: path,
                        names,
                    });
                    continue;
                }
                libc::S_IFREG => Kind::File {
                    ident: (st.ino, st.btime),
                    size: st.size,
                },
                libc::S_IFLNK => match nix::fcntl::readlinkat(&top.fd, name.as_slice()) {
                    Ok(t) => Kind::Symlink {
                        target: t.as_bytes().to_vec(),
                    },
                    Err(nix::errno::Errno::ENOENT) => continue,
                    Err(e) => return Err(e.into()),
                },
                _ => {
                    scan.skipped_special += 1;
                    continue;
                }
            };
            scan.insert(path, kind, &st);
        }
        Ok(scan)
    }

    fn insert(&mut self, path: RelPath, kind: Kind, st: &Stat) {
        self.entries.insert(
            path,
            ScanEntry {
                kind,
                mode: st.mode & 0o7777,
                uid: st.uid,
                gid: st.gid,
            },
        );
    }

    /// Identity -> (first path, size) of every regular file.
    pub fn files(&self) -> BTreeMap<Identity, (&RelPath, u64)> {
        let mut out = BTreeMap::new();
        for (p, e) in &self.entries {
            if let Kind::File { ident, size } = e.kind {
                out.entry(ident).or_insert((p, size));
            }
        }
        out
    }
}

pub fn identity(md: &fs::Metadata) -> Identity {
    let btime = md
        .created()
        .ok()
        .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
        .map(|d| d.as_nanos() as i128)
        .unwrap_or(0);
    (md.ino(), btime)
}

/// One directory being walked: its descriptor, its path, the names not visited yet.
struct Frame {
    fd: OwnedFd,
    rel: RelPath,
    names: Vec<Vec<u8>>,
}

/// What the walk needs of a `statx`.
struct Stat {
    mode: u32,
    uid: u32,
    gid: u32,
    ino: u64,
    dev: u64,
    size: u64,
    /// Birth time in nanoseconds since the epoch, 0 where the filesystem has none (as
    /// [`identity`] has it).
    btime: i128,
}

fn stat_at(dir: &OwnedFd, name: &[u8]) -> std::io::Result<Stat> {
    let c = std::ffi::CString::new(name).map_err(std::io::Error::other)?;
    // SAFETY: zeroed is a valid statx buffer; the call fills it.
    let mut sx: libc::statx = unsafe { std::mem::zeroed() };
    // SAFETY: valid descriptor, NUL-terminated name and buffer.
    let r = unsafe {
        libc::statx(
            dir.as_raw_fd(),
            c.as_ptr(),
            libc::AT_SYMLINK_NOFOLLOW,
            libc::STATX_BASIC_STATS | libc::STATX_BTIME,
            &mut sx,
        )
    };
    if r != 0 {
        return Err(std::io::Error::last_os_error());
    }
    let btime = if sx.stx_mask & libc::STATX_BTIME != 0 && sx.stx_btime.tv_sec >= 0 {
        sx.stx_btime.tv_sec as i128 * 1_000_000_000 + sx.stx_btime.tv_nsec as i128
    } else {
        0
    };
    Ok(Stat {
        mode: sx.stx_mode as u32,
        uid: sx.stx_uid,
        gid: sx.stx_gid,
        ino: sx.stx_ino,
        dev: libc::makedev(sx.stx_dev_major, sx.stx_dev_minor),
        size: sx.stx_size,
        btime,
    })
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
