//! Directories by descriptor: what the cut's walk and replay share to never follow a symlink
//! and never hand the kernel a path longer than one name.
use std::os::fd::{AsFd, OwnedFd};

use nix::{
    NixPath,
    dir::Dir,
    errno::Errno,
    fcntl::{OFlag, openat},
    sys::stat::{FileStat, Mode, SFlag},
};

use super::record::RelPath;

/// Opening a directory that must not be a symlink.
pub const DIR_FLAGS: OFlag = OFlag::O_RDONLY
    .union(OFlag::O_DIRECTORY)
    .union(OFlag::O_NOFOLLOW)
    .union(OFlag::O_CLOEXEC);

/// `openat` with O_NOATIME: reading must not change what is read. Under relatime a read, or
/// a directory's listing, of an inode whose access time is not newer than its change updates
/// that time: btm would write to the node's volume, and the next freeze would write every
/// such inode back. The kernel refuses O_NOATIME (EPERM) to a caller that neither owns the
/// inode nor has CAP_FOWNER: it is then opened without.
pub fn openat_noatime<P: ?Sized + NixPath>(
    dir: impl AsFd,
    path: &P,
    flags: OFlag,
    mode: Mode,
) -> Result<OwnedFd, Errno> {
    let dir = dir.as_fd();
    match openat(dir, path, flags | OFlag::O_NOATIME, mode) {
        Err(Errno::EPERM) => openat(dir, path, flags, mode),
        r => r,
    }
}

/// The names in a directory, without `.` and `..` (listed without changing its access time).
pub fn list(fd: &OwnedFd) -> Result<Vec<Vec<u8>>, Errno> {
    let flags = OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC;
    let mut d = Dir::from_fd(openat_noatime(fd, ".", flags, Mode::empty())?)?;
    let mut names = Vec::new();
    for ent in d.iter() {
        let ent = ent?;
        let n = ent.file_name().to_bytes();
        if n != b"." && n != b".." {
            names.push(n.to_vec());
        }
    }
    Ok(names)
}

/// The kind of entry a stat describes (`S_IFMT` bits).
pub fn kind(st: &FileStat) -> SFlag {
    SFlag::from_bits_truncate(st.st_mode & SFlag::S_IFMT.bits())
}

/// `prefix/name`, or `name` at the root (empty prefix).
pub fn join(prefix: &[u8], name: &[u8]) -> RelPath {
    if prefix.is_empty() {
        return name.to_vec();
    }
    let mut p = Vec::with_capacity(prefix.len() + 1 + name.len());
    p.extend_from_slice(prefix);
    p.push(b'/');
    p.extend_from_slice(name);
    p
}
