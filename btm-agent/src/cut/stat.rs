//! A file's stat in the units the cutter keeps: one `statx` per entry of a walk, and the
//! identity (inode number, birth time) that tells a file from one reusing its inode number.
use std::{
    fs,
    os::{
        fd::{AsRawFd, OwnedFd},
        unix::fs::MetadataExt,
    },
};

use super::scan::Identity;

pub fn identity(md: &fs::Metadata) -> Identity {
    let btime = md
        .created()
        .ok()
        .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
        .map(|d| i64::try_from(d.as_nanos()).unwrap_or(i64::MAX))
        .unwrap_or(0);
    (md.ino(), btime)
}

/// Nanoseconds since the epoch in 8 bytes (half of an i128, for 10^6 entries and more),
/// saturating beyond the years 1678 and 2262: only a set mtime gets there, and the ctime
/// beside it, which nobody can set, still changes with every write.
pub fn ns_since_epoch(sec: i64, nsec: u32) -> i64 {
    sec.saturating_mul(1_000_000_000)
        .saturating_add(nsec as i64)
}

/// What the walk needs of a `statx`.
pub(super) struct Stat {
    pub(super) mode: u32,
    pub(super) nlink: u32,
    pub(super) mtime: i64,
    pub(super) ctime: i64,
    pub(super) uid: u32,
    pub(super) gid: u32,
    pub(super) ino: u64,
    pub(super) dev: u64,
    pub(super) size: u64,
    /// Birth time in nanoseconds since the epoch, 0 where the filesystem has none (as
    /// [`identity`] has it).
    pub(super) btime: i64,
}

pub(super) fn stat_at(dir: &OwnedFd, name: &[u8]) -> std::io::Result<Stat> {
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
        ns_since_epoch(sx.stx_btime.tv_sec, sx.stx_btime.tv_nsec)
    } else {
        0
    };
    let ns = |t: libc::statx_timestamp| ns_since_epoch(t.tv_sec, t.tv_nsec);
    Ok(Stat {
        mode: sx.stx_mode as u32,
        nlink: sx.stx_nlink,
        mtime: ns(sx.stx_mtime),
        ctime: ns(sx.stx_ctime),
        uid: sx.stx_uid,
        gid: sx.stx_gid,
        ino: sx.stx_ino,
        dev: libc::makedev(sx.stx_dev_major, sx.stx_dev_minor),
        size: sx.stx_size,
        btime,
    })
}
