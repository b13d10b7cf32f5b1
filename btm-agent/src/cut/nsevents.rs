//! Namespace changes as they happen: a fanotify filesystem mark on the volume reporting, for
//! every create, delete, move and attribute change, the directory (by file handle) and the
//! name. The cut walks the tree unfrozen, then inside the freeze re-reads only the entries
//! named since the walk began, instead of walking the tree again (see [`super::scan::Scan::patch`]).
//!
//! Writes (`FAN_MODIFY`, which also reports truncation) are watched only while a cut runs, from
//! before its first flip until its thaw ([`NsWatch::watch_writes`]): a notification on every
//! write costs the node more than all the tracker's programs together (4 KiB buffered
//! writes: +15 %, measured). Between heights the tracker names the written files instead:
//! every write after a thaw dirties a folio the freeze left clean, or goes through a probed
//! range call, and the cut re-reads the entries of the files it marked. Writes through `mmap`
//! report nothing here anyway. Whatever cannot be trusted (a queue overflow, a read error, a
//! truncation by path, which no probe can place) makes the cut walk the whole tree.
use std::{
    collections::BTreeSet,
    os::{
        fd::{AsRawFd, FromRawFd, OwnedFd},
        unix::{ffi::OsStrExt, fs::MetadataExt},
    },
    path::{Path, PathBuf},
};

use crate::log::RelPath;

/// The events that change what a walk would find, besides writes.
const NAMESPACE: u64 = libc::FAN_CREATE
    | libc::FAN_DELETE
    | libc::FAN_MOVED_FROM
    | libc::FAN_MOVED_TO
    | libc::FAN_ATTRIB
    | libc::FAN_ONDIR;
/// Writes and truncations: watched only while a cut runs (see the module documentation).
pub const WRITES: u64 = libc::FAN_MODIFY;

/// A fanotify group watching one filesystem.
pub struct NsWatch {
    fd: OwnedFd,
    /// File handles are opened relative to the mount point, opened for each drain that has
    /// events (held for the agent's life, it would keep the volume from being unmounted).
    mount_point: PathBuf,
    /// The volume's device: the mount point is opened again to change the mark, and must
    /// still lead to it (not to something mounted over it since).
    dev: u64,
}

/// What changed since the last drain.
#[derive(Debug, Default)]
pub struct NsChanges {
    /// (directory, name) of every entry an event named, relative to the volume root.
    pub entries: BTreeSet<(RelPath, Vec<u8>)>,
    /// Events were lost (queue overflow) or unreadable: walk everything.
    pub lost: bool,
}

impl NsWatch {
    /// Marks the filesystem mounted at `mount_point` (needs CAP_SYS_ADMIN and a filesystem
    /// that reports file handles: ext4, xfs, btrfs).
    pub fn new(mount_point: &Path) -> std::io::Result<NsWatch> {
        let init_flags = libc::FAN_CLASS_NOTIF
            | libc::FAN_CLOEXEC
            | libc::FAN_NONBLOCK
            | libc::FAN_UNLIMITED_QUEUE
            | libc::FAN_REPORT_DFID_NAME;
        // SAFETY: plain syscall; the descriptor is owned below.
        let fd = unsafe { libc::fanotify_init(init_flags, libc::O_RDONLY as u32) };
        if fd < 0 {
            return Err(std::io::Error::last_os_error());
        }
        // SAFETY: fanotify_init returned a new descriptor.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        let dev = std::fs::metadata(mount_point)?.dev();
        let w = NsWatch {
            fd,
            mount_point: mount_point.canonicalize()?,
            dev,
        };
        w.mark(libc::FAN_MARK_ADD, NAMESPACE)?;
        Ok(w)
    }

    /// Starts (`on`) or stops reporting writes and truncations. Started before a cut's first
    /// flip, so that every write from then on is named, and stopped after its thaw.
    pub fn watch_writes(&self, on: bool) -> std::io::Result<()> {
        let how = if on {
            libc::FAN_MARK_ADD
        } else {
            libc::FAN_MARK_REMOVE
        };
        self.mark(how, WRITES)
    }

    /// Adds or removes `mask` on the mark of the volume's filesystem.
    fn mark(&self, how: libc::c_uint, mask: u64) -> std::io::Result<()> {
        let dir = std::fs::File::open(&self.mount_point)?;
        if dir.metadata()?.dev() != self.dev {
            return Err(std::io::Error::other(format!(
                "{} is no longer the volume's mount point (something is mounted over it)",
                self.mount_point.display()
            )));
        }
        // SAFETY: valid descriptors; a null path marks what `dir` refers to.
        let r = unsafe {
            libc::fanotify_mark(
                self.fd.as_raw_fd(),
                how | libc::FAN_MARK_FILESYSTEM,
                mask,
                dir.as_raw_fd(),
                std::ptr::null(),
            )
        };
        if r != 0 {
            return Err(std::io::Error::last_os_error());
        }
        Ok(())
    }

    /// Drops every queued event: what follows is covered by a walk that starts now.
    pub fn discard(&self) {
        let mut buf = vec![0u8; 64 << 10];
        while self.read(&mut buf).is_ok_and(|n| n > 0) {}
    }

    /// Every event queued since the last drain or discard, with directories resolved to paths.
    pub fn drain(&self) -> NsChanges {
        let mut out = NsChanges::default();
        let mut buf = vec![0u8; 64 << 10];
        let mut dirs: std::collections::HashMap<Vec<u8>, std::io::Result<Option<RelPath>>> =
            Default::default();
        // An O_PATH descriptor is refused by open_by_handle_at (EBADF): a plain one.
        let mut mount_fd: Option<std::io::Result<std::fs::File>> = None;
        loop {
            let n = match self.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => n,
                Err(e) => {
                    tracing::warn!("reading namespace events: {e}; walking the whole tree");
                    out.lost = true;
                    break;
                }
            };
            for ev in Events(&buf[..n]) {
                let Some((mask, handle, name)) = ev else {
                    out.lost = true; // malformed: trust nothing
                    continue;
                };
                if mask & libc::FAN_Q_OVERFLOW != 0 {
                    out.lost = true;
                    continue;
                }
                let dir = dirs.entry(handle.to_vec()).or_insert_with(|| {
                    let m = mount_fd.get_or_insert_with(|| std::fs::File::open(&self.mount_point));
                    match m {
                        Ok(m) => self.resolve(m, handle),
                        Err(e) => Err(std::io::Error::new(e.kind(), e.to_string())),
                    }
                });
                // A directory gone (or outside the volume): its removal was reported by its
                // parent. One that cannot be named (deeper than PATH_MAX): trust nothing.
                let dir = match dir {
                    Ok(d) => d,
                    Err(e) => {
                        tracing::debug!("cannot name a changed directory ({e}); walking");
                        out.lost = true;
                        continue;
                    }
                };
                if let Some(dir) = dir
                    && !name.is_empty()
                    && name != b"."
                {
                    out.entries.insert((dir.clone(), name.to_vec()));
                }
            }
        }
        out
    }

    fn read(&self, buf: &mut [u8]) -> std::io::Result<usize> {
        // SAFETY: reading into a live buffer of its length.
        let n = unsafe { libc::read(self.fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len()) };
        if n < 0 {
            let e = std::io::Error::last_os_error();
            return if e.kind() == std::io::ErrorKind::WouldBlock {
                Ok(0)
            } else {
                Err(e)
            };
        }
        Ok(n as usize)
    }

    /// The path, relative to the volume root, of the directory a file handle names; None when
    /// it is gone or not under the mount point; an error when it exists but cannot be named.
    fn resolve(&self, mount: &std::fs::File, handle: &[u8]) -> std::io::Result<Option<RelPath>> {
        let mut h = handle.to_vec();
        // SAFETY: `h` holds a complete `struct file_handle` (header and f_handle bytes).
        let fd = unsafe {
            libc::open_by_handle_at(
                mount.as_raw_fd(),
                h.as_mut_ptr().cast(),
                libc::O_PATH | libc::O_CLOEXEC,
            )
        };
        if fd < 0 {
            let e = std::io::Error::last_os_error();
            return match e.raw_os_error() {
                Some(libc::ESTALE | libc::ENOENT) => Ok(None), // deleted
                _ => Err(e),
            };
        }
        // SAFETY: open_by_handle_at returned a new descriptor.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        // Unlinked: its parent reported the removal. (Asked of the inode, not read from the
        // path: a directory may be named "x (deleted)".)
        if nix::sys::stat::fstat(&fd)?.st_nlink == 0 {
            return Ok(None);
        }
        let at = std::fs::read_link(format!("/proc/self/fd/{}", fd.as_raw_fd()))?;
        if !at.as_os_str().as_bytes().starts_with(b"/") {
            return Err(std::io::Error::other(format!(
                "unreachable directory {at:?}"
            )));
        }
        Ok(at
            .strip_prefix(&self.mount_point)
            .ok()
            .map(|rel| rel.as_os_str().as_bytes().to_vec()))
    }
}

/// The events in a read buffer: (mask, directory file handle, name), or None for one that
/// does not parse.
struct Events<'a>(&'a [u8]);

type Event<'a> = Option<(u64, &'a [u8], &'a [u8])>;

impl<'a> Iterator for Events<'a> {
    type Item = Event<'a>;

    fn next(&mut self) -> Option<Event<'a>> {
        const META: usize = std::mem::size_of::<libc::fanotify_event_metadata>();
        let b = self.0;
        if b.len() < META {
            return None;
        }
        let len = u32::from_ne_bytes(b[0..4].try_into().ok()?) as usize;
        let meta_len = u16::from_ne_bytes(b[6..8].try_into().ok()?) as usize;
        if len < META || len > b.len() || meta_len < META || meta_len > len {
            self.0 = &[];
            return Some(None);
        }
        self.0 = &b[len..];
        let mask = u64::from_ne_bytes(b[8..16].try_into().ok()?);
        Some(parse_info(mask, &b[meta_len..len]))
    }
}

/// The DFID_NAME record of one event: header (4), fsid (8), file_handle (8 + bytes), name.
fn parse_info(mask: u64, mut info: &[u8]) -> Event<'_> {
    if mask & libc::FAN_Q_OVERFLOW != 0 {
        return Some((mask, &[], &[]));
    }
    while info.len() >= 4 {
        let kind = info[0];
        let len = u16::from_ne_bytes([info[2], info[3]]) as usize;
        if len < 4 || len > info.len() {
            return None;
        }
        let rec = &info[..len];
        info = &info[len..];
        if kind != libc::FAN_EVENT_INFO_TYPE_DFID_NAME || rec.len() < 20 {
            continue;
        }
        let handle_bytes = u32::from_ne_bytes(rec[12..16].try_into().ok()?) as usize;
        let handle = rec.get(12..20 + handle_bytes)?;
        let name = &rec[20 + handle_bytes..];
        let name = &name[..name.iter().position(|&c| c == 0).unwrap_or(name.len())];
        return Some((mask, handle, name));
    }
    None
}
