//! The tracked volume: which mounted filesystem a path is, and freezing it.
use std::{
    fs,
    os::unix::io::AsRawFd,
    path::{Path, PathBuf},
};

/// A mounted filesystem, from `/proc/self/mountinfo` (the one parser of it: the tracker,
/// the cut and the native snapshot modes all use this).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Mount {
    pub mount_point: PathBuf,
    /// `ext4`, `btrfs`, `zfs`, `fuse.zfs`, ...
    pub fstype: String,
    /// Device or dataset.
    pub source: String,
    pub major: u32,
    pub minor: u32,
    /// The directory within the filesystem mounted here (Btrfs: the subvolume path).
    pub root: String,
}

impl Mount {
    /// The kernel's internal `dev_t` encoding (`MKDEV`: 12-bit major, 20-bit minor), which is
    /// what `sb->s_dev` and tracepoint `dev` fields hold.
    pub fn kernel_dev(&self) -> u32 {
        (self.major << 20) | self.minor
    }

    /// Size of the filesystem in bytes (sizes the tracker's maps).
    pub fn size_bytes(&self) -> u64 {
        nix::sys::statvfs::statvfs(&self.mount_point).map_or(0, |s| s.blocks() * s.fragment_size())
    }

    /// The mount whose mount point is exactly `path` (the last one when mounts are stacked).
    pub fn at(path: &Path) -> anyhow::Result<Mount> {
        let canon = fs::canonicalize(path).map_err(|e| {
            anyhow::anyhow!(
                "volume {}: {e}; create and mount the chain data volume there first",
                path.display()
            )
        })?;
        read_mountinfo()?
            .into_iter()
            .rev()
            .find(|m| m.mount_point == canon)
            .ok_or_else(|| {
                let containing = Mount::containing(&canon)
                    .map(|m| format!(" (it lives on {} mounted at {})", m.fstype, m.mount_point.display()))
                    .unwrap_or_default();
                anyhow::anyhow!(
                    "{} is not a mount point{containing}: btm tracks a whole filesystem. Mount the chain \
                     data volume at this path, or pass its mount point as --volume (`findmnt -T {}` shows it)",
                    canon.display(),
                    canon.display()
                )
            })
    }

    /// The mount that contains `path` (longest mount-point prefix).
    pub fn containing(path: &Path) -> Option<Mount> {
        containing_mount(&read_mountinfo().ok()?, path).cloned()
    }
}

/// The mounts of this process's namespace.
pub fn read_mountinfo() -> std::io::Result<Vec<Mount>> {
    Ok(parse_mountinfo(&fs::read("/proc/self/mountinfo")?))
}

/// Parses mountinfo (proc(5)): `id parent maj:min root mount_point options [optional...] -
/// fstype source super_options`, with space, tab, newline and backslash escaped as `\ooo`.
/// Lines that do not parse are left out.
pub fn parse_mountinfo(raw: &[u8]) -> Vec<Mount> {
    use std::os::unix::ffi::OsStringExt;
    let text = |f: &[u8]| String::from_utf8_lossy(&unescape(f)).into_owned();
    let mut out = Vec::new();
    for line in raw.split(|&b| b == b'\n') {
        let fields: Vec<&[u8]> = line.split(|&b| b == b' ').collect();
        let Some(dash) = fields.iter().position(|f| *f == b"-") else {
            continue;
        };
        if dash < 6 || fields.len() < dash + 3 {
            continue;
        }
        let Some((major, minor)) = std::str::from_utf8(fields[2])
            .ok()
            .and_then(|d| d.split_once(':'))
            .and_then(|(a, b)| Some((a.parse().ok()?, b.parse().ok()?)))
        else {
            continue;
        };
        out.push(Mount {
            mount_point: PathBuf::from(std::ffi::OsString::from_vec(unescape(fields[4]))),
            fstype: text(fields[dash + 1]),
            source: text(fields[dash + 2]),
            major,
            minor,
            root: text(fields[3]),
        });
    }
    out
}

/// mountinfo escapes space, tab, newline and backslash as `\ooo`.
fn unescape(f: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(f.len());
    let mut i = 0;
    while i < f.len() {
        if f[i] == b'\\'
            && i + 3 < f.len()
            && f[i + 1..i + 4].iter().all(|c| (b'0'..=b'7').contains(c))
        {
            let v = (f[i + 1] - b'0') as u32 * 64
                + (f[i + 2] - b'0') as u32 * 8
                + (f[i + 3] - b'0') as u32;
            out.push(v as u8);
            i += 4;
        } else {
            out.push(f[i]);
            i += 1;
        }
    }
    out
}

/// The mount `path` lives on: the longest mount point that is `path` or an ancestor of it; of
/// equal ones the last (a later mount hides an earlier one).
pub fn containing_mount<'a>(mounts: &'a [Mount], path: &Path) -> Option<&'a Mount> {
    let mut best: Option<&Mount> = None;
    for m in mounts {
        if path.starts_with(&m.mount_point)
            && best
                .is_none_or(|b| m.mount_point.as_os_str().len() >= b.mount_point.as_os_str().len())
        {
            best = Some(m);
        }
    }
    best
}

/// Where volume locks live: a directory only root can enter, so no other user can open a
/// lock file and hold a lock on it to keep agents from starting.
pub const LOCK_DIR: &str = "/run/btm/locks";

/// Another agent holds the volume's lock.
#[derive(Debug, thiserror::Error)]
#[error(
    "another btm agent already tracks {} (lock {}); stop it first, or ask it through its socket",
    volume.display(),
    lock.display()
)]
pub struct VolumeLocked {
    pub volume: PathBuf,
    pub lock: PathBuf,
}

/// Exclusive claim on a volume for one agent: an flock on `/run/btm/locks/vol-MAJ-MIN.lock`
/// (the volume's `st_dev`: the filesystem's device, or a btrfs subvolume's own), held while
/// the agent lives (the kernel drops it if the agent dies).
pub struct VolumeLock {
    _file: fs::File,
}

impl VolumeLock {
    pub fn acquire(volume: &Path) -> anyhow::Result<VolumeLock> {
        use std::os::unix::fs::{DirBuilderExt, MetadataExt, PermissionsExt};
        let dev = fs::metadata(volume)?.dev();
        let dir = Path::new(LOCK_DIR);
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)?;
        fs::set_permissions(dir, fs::Permissions::from_mode(0o700))?;
        let path = dir.join(format!(
            "vol-{}-{}.lock",
            libc::major(dev),
            libc::minor(dev)
        ));
        let file = crate::log::open_lock_file(&path)?;
        match file.try_lock() {
            Ok(()) => Ok(VolumeLock { _file: file }),
            Err(fs::TryLockError::WouldBlock) => Err(VolumeLocked {
                volume: volume.to_path_buf(),
                lock: path,
            }
            .into()),
            Err(fs::TryLockError::Error(e)) => Err(e.into()),
        }
    }
}

nix::ioctl_readwrite_bad!(fifreeze_raw, 0xc004_5877, libc::c_int);
nix::ioctl_readwrite_bad!(fithaw_raw, 0xc004_5878, libc::c_int);

/// The agent's thaw guard, when it runs one (see [`ThawGuard`]).
static GUARD: std::sync::Mutex<Option<ThawGuard>> = std::sync::Mutex::new(None);

/// A small child process that thaws the volume if the agent dies while the volume is frozen.
/// A freeze outlives the process that made it: an agent killed (SIGKILL, OOM) between
/// `FIFREEZE` and `FITHAW` would leave the node blocked until someone ran `fsfreeze -u`. The
/// agent tells the guard "frozen" and "thawed" through a pipe; when the pipe closes (the agent
/// is gone) while the volume is frozen, the guard thaws it. With `run --freeze-cgroup` it
/// thaws the node's cgroup as well (a frozen cgroup outlives the agent the same way).
pub struct ThawGuard {
    tx: std::os::fd::OwnedFd,
    pid: libc::pid_t,
}

impl ThawGuard {
    /// Starts the guard for `mount_point`; every later [`Frozen`] reports to it. Fork it early
    /// (before the agent holds much memory).
    pub fn install(mount_point: &Path, cgroup: Option<&Path>) -> anyhow::Result<()> {
        let dir = fs::File::open(mount_point)?;
        let cgroup_freeze = match cgroup {
            Some(c) => Some(
                fs::OpenOptions::new()
                    .write(true)
                    .open(c.join("cgroup.freeze"))?,
            ),
            None => None,
        };
        // Close-on-exec: a child the agent starts later (a snapshot command, say) must not
        // hold the write end, or the guard would not see the agent die while that child lives.
        let (rx, tx) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC)?;
        // SAFETY: the child makes only raw system calls (async-signal-safe after fork in a
        // multithreaded process) and leaves with _exit.
        let pid = unsafe { libc::fork() };
        if pid == 0 {
            // SAFETY: raw system calls on descriptors this child owns.
            unsafe {
                libc::close(tx.as_raw_fd());
                let (mut frozen, mut b) = (false, 0u8);
                loop {
                    match libc::read(rx.as_raw_fd(), (&mut b as *mut u8).cast(), 1) {
                        1 => frozen = b == b'F',
                        n if n < 0 && *libc::__errno_location() == libc::EINTR => {}
                        _ => break,
                    }
                }
                if frozen {
                    let mut zero: libc::c_int = 0;
                    let _ = fithaw_raw(dir.as_raw_fd(), &mut zero);
                    if let Some(f) = &cgroup_freeze {
                        let _ = libc::write(f.as_raw_fd(), b"0".as_ptr().cast(), 1);
                    }
                }
                libc::_exit(0);
            }
        }
        if pid < 0 {
            anyhow::bail!(
                "starting the thaw guard: {}",
                std::io::Error::last_os_error()
            );
        }
        drop(rx);
        drop(cgroup_freeze);
        let old = GUARD
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .replace(ThawGuard { tx, pid });
        drop(old);
        Ok(())
    }

    pub(crate) fn tell(frozen: bool) {
        if let Some(g) = GUARD.lock().unwrap_or_else(|e| e.into_inner()).as_ref() {
            let _ = nix::unistd::write(&g.tx, if frozen { b"F" } else { b"T" });
        }
    }
}

impl Drop for ThawGuard {
    fn drop(&mut self) {
        // Closing the pipe (after this) ends the guard; reap it.
        let _ = nix::unistd::write(&self.tx, b"T");
        // SAFETY: plain kill/waitpid on our own child.
        unsafe {
            libc::kill(self.pid, libc::SIGKILL);
            libc::waitpid(self.pid, std::ptr::null_mut(), 0);
        }
    }
}

/// A frozen filesystem; thawed on drop so no error path can leave the node's volume frozen.
pub struct Frozen {
    dir: fs::File,
    thawed: bool,
}

impl Frozen {
    /// `FIFREEZE`: blocks new writers and page faults, drains in-flight ones and writes back
    /// every dirty page, so every folio is clean when this returns.
    pub fn freeze(mount_point: &Path) -> anyhow::Result<Frozen> {
        let dir = fs::File::open(mount_point)?;
        let mut zero: libc::c_int = 0;
        // The three freeze levels each wait for a grace period (see [`crate::rcu`]).
        let _fast = crate::rcu::Expedited::start();
        ThawGuard::tell(true);
        // SAFETY: FIFREEZE on an open directory of the filesystem; the argument is unused.
        unsafe { fifreeze_raw(dir.as_raw_fd(), &mut zero) }.map_err(|e| {
            ThawGuard::tell(false);
            anyhow::anyhow!(
                "cannot freeze {}: {e}; the filesystem must support FIFREEZE (ext4, xfs, btrfs do) \
                 and not be frozen already (`fsfreeze -u {}` thaws a stuck one)",
                mount_point.display(),
                mount_point.display()
            )
        })?;
        Ok(Frozen { dir, thawed: false })
    }

    /// Thaws a volume left frozen by an agent that died inside a cut (FIFREEZE outlives the
    /// process). True when it was frozen.
    pub fn thaw_leftover(mount_point: &Path) -> anyhow::Result<bool> {
        let dir = fs::File::open(mount_point)?;
        let mut zero: libc::c_int = 0;
        // SAFETY: FITHAW on an open directory of the filesystem.
        match unsafe { fithaw_raw(dir.as_raw_fd(), &mut zero) } {
            Ok(_) => Ok(true),
            Err(nix::errno::Errno::EINVAL) => Ok(false),
            Err(e) => Err(e.into()),
        }
    }

    pub fn thaw(mut self) -> anyhow::Result<()> {
        self.do_thaw()
    }

    fn do_thaw(&mut self) -> anyhow::Result<()> {
        if self.thawed {
            return Ok(());
        }
        self.thawed = true;
        let mut zero: libc::c_int = 0;
        // SAFETY: FITHAW on the directory we froze.
        unsafe { fithaw_raw(self.dir.as_raw_fd(), &mut zero) }?;
        ThawGuard::tell(false);
        Ok(())
    }
}

impl Drop for Frozen {
    fn drop(&mut self) {
        if let Err(e) = self.do_thaw() {
            tracing::error!("thawing the volume failed: {e}; run `fsfreeze -u` on it");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_mountinfo() {
        let text = "36 35 98:0 / /mnt/my\\040data rw,noatime master:1 - ext4 /dev/loop0 rw,errors=continue\n\
                    37 35 0:45 / /mnt/b rw shared:2 - btrfs /dev/loop1 rw\n";
        let m = parse_mountinfo(text.as_bytes());
        assert_eq!(m.len(), 2);
        assert_eq!(m[0].mount_point, PathBuf::from("/mnt/my data"));
        assert_eq!((m[0].major, m[0].minor), (98, 0));
        assert_eq!(m[0].kernel_dev(), 98 << 20);
        assert_eq!(m[1].fstype, "btrfs");
        assert_eq!(m[1].kernel_dev(), 45);
    }
}
