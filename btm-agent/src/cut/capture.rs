//! Reading changed byte ranges into extents.
use std::{fs::File, os::unix::fs::FileExt, os::unix::io::AsRawFd};

use std::{
    os::unix::fs::MetadataExt,
    path::{Path, PathBuf},
};

use anyhow::{Context, Result};

use super::{
    Want,
    scan::{self, Identity, Scan, identity},
};
use crate::log::{ExtentBytes, ExtentData, FileId, RelPath};

/// Extents are cut at multiples of this offset, so an unchanged aligned piece has the same
/// bytes as before and the log deduplicates it by blake3 (what makes a resync cheap to store).
pub const PIECE: u64 = 1 << 20;
const BLOCK: usize = 4096;

/// The data (non-hole) ranges of a file below `size`, from SEEK_DATA / SEEK_HOLE.
pub fn data_ranges(f: &File, size: u64) -> Vec<(u64, u64)> {
    let fd = f.as_raw_fd();
    let mut out = Vec::new();
    let mut pos: i64 = 0;
    while (pos as u64) < size {
        // SAFETY: lseek on an open fd.
        let start = unsafe { libc::lseek(fd, pos, libc::SEEK_DATA) };
        if start < 0 {
            break; // ENXIO: no data after pos
        }
        // SAFETY: as above.
        let end = unsafe { libc::lseek(fd, start, libc::SEEK_HOLE) };
        let end = if end < 0 {
            size as i64
        } else {
            end.min(size as i64)
        };
        if end > start {
            out.push((start as u64, (end - start) as u64));
        }
        pos = end;
    }
    out
}

/// Bytes read and bytes that went out as data (not zeros).
#[derive(Clone, Copy, Debug, Default, serde::Serialize)]
pub struct CaptureStats {
    pub bytes_read: u64,
    pub data_bytes: u64,
}

/// Pieces read in one io_uring batch: bounds the memory a read takes (this many [`PIECE`]s).
const GROUP: usize = 16;

/// Reads `ranges` of `f` as extents of file `id`, cut at [`PIECE`] boundaries, and hands each
/// to `sink` as soon as its group of pieces is read (memory stays at [`GROUP`] pieces, whatever
/// the size of the file). Runs of zero blocks become `Zero` extents (punched holes, zeroed
/// ranges). A short read (the file shrank while unfrozen) just yields less: the frozen phase
/// records the final size.
pub fn read_ranges(
    f: &File,
    id: FileId,
    ranges: &[(u64, u64)],
    sink: &mut dyn FnMut(ExtentData) -> anyhow::Result<()>,
    stats: &mut CaptureStats,
) -> anyhow::Result<()> {
    let pieces = ranges.iter().flat_map(|&(off, len)| {
        let end = off + len;
        std::iter::successors(Some(off), move |&p| {
            let next = (p / PIECE + 1) * PIECE;
            (next < end).then_some(next)
        })
        .map(move |p| (p, (((p / PIECE + 1) * PIECE).min(end) - p) as usize))
    });
    let mut group = Vec::with_capacity(GROUP);
    let mut pieces = pieces.peekable();
    while pieces.peek().is_some() {
        group.clear();
        group.extend(pieces.by_ref().take(GROUP));
        for ((pos, _), buf) in group.iter().zip(uring::read_pieces(f, &group)?) {
            stats.bytes_read += buf.len() as u64;
            push_piece(id, *pos, buf, sink, stats)?;
        }
    }
    Ok(())
}

/// The holes of a file of `size` bytes whose data ranges are `data`, as `Zero` extents.
pub fn holes(id: FileId, data: &[(u64, u64)], size: u64) -> Vec<ExtentData> {
    let mut out = Vec::new();
    let mut at = 0;
    for &(start, len) in data.iter().chain(std::iter::once(&(size, 0))) {
        if start > at {
            out.push(ExtentData {
                id,
                offset: at,
                bytes: ExtentBytes::Zero(start - at),
            });
        }
        at = at.max(start + len);
    }
    out
}

/// Batched reads through io_uring (one submission for many pieces), with a pread fallback
/// where io_uring is unavailable (disabled by sysctl, seccomp).
mod uring {
    use std::{cell::RefCell, fs::File, os::unix::io::AsRawFd};

    use io_uring::{IoUring, opcode, types};

    use super::read_full;

    const DEPTH: u32 = 64;

    thread_local! {
        static RING: RefCell<Option<IoUring>> = RefCell::new(IoUring::new(DEPTH).ok());
    }

    /// Reads each `(offset, len)` piece; a piece comes back shorter at end of file.
    pub fn read_pieces(f: &File, pieces: &[(u64, usize)]) -> std::io::Result<Vec<Vec<u8>>> {
        let mut bufs: Vec<Vec<u8>> = pieces.iter().map(|&(_, n)| vec![0u8; n]).collect();
        let used = RING.with(|r| {
            r.borrow_mut()
                .as_mut()
                .map(|ring| read_ring(ring, f, pieces, &mut bufs))
        });
        match used {
            Some(res) => res?,
            None => {
                for (buf, &(off, _)) in bufs.iter_mut().zip(pieces) {
                    let got = read_full(f, buf, off)?;
                    buf.truncate(got);
                }
            }
        }
        Ok(bufs)
    }

    fn read_ring(
        ring: &mut IoUring,
        f: &File,
        pieces: &[(u64, usize)],
        bufs: &mut [Vec<u8>],
    ) -> std::io::Result<()> {
        let fd = types::Fd(f.as_raw_fd());
        let mut done = vec![0usize; pieces.len()];
        let mut pending: Vec<usize> = (0..pieces.len()).rev().collect();
        let mut in_flight = 0usize;
        while !pending.is_empty() || in_flight > 0 {
            while in_flight < DEPTH as usize
                && let Some(i) = pending.pop()
            {
                let buf = &mut bufs[i][done[i]..];
                let e = opcode::Read::new(fd, buf.as_mut_ptr(), buf.len() as u32)
                    .offset(pieces[i].0 + done[i] as u64)
                    .build()
                    .user_data(i as u64);
                // SAFETY: the buffer lives in `bufs` until its completion is reaped below.
                unsafe { ring.submission().push(&e) }
                    .map_err(|_| std::io::Error::other("io_uring queue full"))?;
                in_flight += 1;
            }
            ring.submit_and_wait(1)?;
            let completed: Vec<(usize, i32)> = ring
                .completion()
                .map(|c| (c.user_data() as usize, c.result()))
                .collect();
            for (i, res) in completed {
                in_flight -= 1;
                match res {
                    r if r > 0 => {
                        done[i] += r as usize;
                        if done[i] < pieces[i].1 {
                            pending.push(i); // short read mid-file: continue from there
                        }
                    }
                    0 => {} // end of file
                    r if -r == libc::EINTR || -r == libc::EAGAIN => pending.push(i),
                    r => return Err(std::io::Error::from_raw_os_error(-r)),
                }
            }
        }
        for (buf, n) in bufs.iter_mut().zip(done) {
            buf.truncate(n);
        }
        Ok(())
    }
}

/// Reads until `buf` is full or the file ends; the bytes read.
pub fn read_full(f: &File, buf: &mut [u8], off: u64) -> std::io::Result<usize> {
    let mut done = 0;
    while done < buf.len() {
        match f.read_at(&mut buf[done..], off + done as u64) {
            Ok(0) => break,
            Ok(n) => done += n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(done)
}

/// Splits one piece into alternating data and zero extents at 4 KiB granularity.
fn push_piece(
    id: FileId,
    off: u64,
    buf: Vec<u8>,
    out: &mut dyn FnMut(ExtentData) -> anyhow::Result<()>,
    stats: &mut CaptureStats,
) -> anyhow::Result<()> {
    if !buf.iter().any(|&b| b != 0) {
        if !buf.is_empty() {
            out(ExtentData {
                id,
                offset: off,
                bytes: ExtentBytes::Zero(buf.len() as u64),
            })?;
        }
        return Ok(());
    }
    // Classify 4 KiB blocks on absolute (filesystem) boundaries: the first block runs from
    // `off` to the next boundary.
    let mut bounds = vec![0usize];
    let mut b = (BLOCK - (off as usize % BLOCK)) % BLOCK;
    if b == 0 {
        b = BLOCK;
    }
    while b < buf.len() {
        bounds.push(b);
        b += BLOCK;
    }
    bounds.push(buf.len());
    let data: Vec<bool> = bounds
        .windows(2)
        .map(|w| buf[w[0]..w[1]].iter().any(|&x| x != 0))
        .collect();
    let mut i = 0;
    while i < data.len() {
        let mut j = i;
        while j < data.len() && data[j] == data[i] {
            j += 1;
        }
        let (s, e) = (bounds[i], bounds[j]);
        if data[i] {
            stats.data_bytes += (e - s) as u64;
            out(ExtentData {
                id,
                offset: off + s as u64,
                bytes: ExtentBytes::Data(buf[s..e].to_vec()),
            })?;
        } else {
            out(ExtentData {
                id,
                offset: off + s as u64,
                bytes: ExtentBytes::Zero((e - s) as u64),
            })?;
        }
        i = j;
    }
    Ok(())
}

/// Opens `path`, checks it is still `ident`, and hands what `want` says to `sink` as extents
/// of file `id`. False when the path no longer holds that file.
#[allow(clippy::too_many_arguments)]
pub(super) fn read_identity(
    root: &Path,
    scan: &Scan,
    path: &RelPath,
    ident: &Identity,
    id: FileId,
    want: &Want,
    st: &mut CaptureStats,
    sink: &mut dyn FnMut(ExtentData) -> Result<()>,
) -> Result<bool> {
    use std::os::unix::ffi::OsStrExt;
    let full_path: PathBuf = root.join(std::ffi::OsStr::from_bytes(path));
    // The path may have changed since the walk: a symlink is not followed, and a FIFO or device
    // swapped in opens without blocking (O_NONBLOCK), then fails the identity check below.
    let root_fd = scan.root.as_deref().context("a scan without its root")?;
    // O_NOATIME: reading the node's files must not change them (a read under relatime dirties
    // a fresh file's inode, and the freeze then writes every such inode back: 140-190 ms at
    // the baseline of 10^5-10^6 files). Refused (EPERM) without CAP_FOWNER: read without it.
    let open = |flags: nix::fcntl::OFlag| {
        let base = nix::fcntl::OFlag::O_NOCTTY | flags;
        scan::open_beneath(root_fd, path, base | nix::fcntl::OFlag::O_NOATIME).or_else(|e| match e
            .raw_os_error()
        {
            Some(libc::EPERM) => scan::open_beneath(root_fd, path, base),
            _ => Err(e),
        })
    };
    let f = match open(nix::fcntl::OFlag::O_NONBLOCK).or_else(|e| {
        if e.raw_os_error() != Some(libc::EWOULDBLOCK) {
            return Err(e);
        }
        // Someone holds a write lease on it: O_NONBLOCK refuses to break it. The data is
        // needed, so break it and wait (the holder has the lease-break time to let go).
        tracing::warn!(
            "{} is under a write lease: waiting for its holder to release it",
            full_path.display()
        );
        open(nix::fcntl::OFlag::empty())
    }) {
        Ok(f) => f,
        // Gone, or a symlink, a non-directory or a mount now stands along its path.
        Err(e)
            if e.kind() == std::io::ErrorKind::NotFound
                || matches!(
                    e.raw_os_error(),
                    Some(libc::ELOOP | libc::ENOTDIR | libc::EXDEV)
                ) =>
        {
            return Ok(false);
        }
        Err(e) => return Err(e).with_context(|| format!("opening {}", full_path.display())),
    };
    let md = f.metadata()?;
    // Same inode and birth time, a regular file, and on the volume (a directory swapped for a
    // symlink along the path leads elsewhere).
    if identity(&md) != *ident || !md.is_file() || md.dev() != scan.root_dev {
        return Ok(false);
    }
    let ranges = match want {
        Want::Fresh | Want::Whole => data_ranges(&f, md.len()),
        Want::Ranges(r) => r.clone(),
    };
    if let Want::Whole = want {
        for e in holes(id, &ranges, md.len()) {
            sink(e)?;
        }
    }
    read_ranges(&f, id, &ranges, sink, st)
        .with_context(|| format!("reading {}", full_path.display()))?;
    Ok(true)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn zero_runs_split_and_pieces_align() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("f");
        let mut data = vec![7u8; 3 * PIECE as usize];
        data[4096..3 * 4096].fill(0);
        std::fs::write(&p, &data).unwrap();
        let f = File::open(&p).unwrap();
        let mut out = Vec::new();
        let mut st = CaptureStats::default();
        let mut sink = |e| {
            out.push(e);
            Ok(())
        };
        read_ranges(&f, 1, &[(100, 2 * PIECE)], &mut sink, &mut st).unwrap();
        // piece 1: [100, 1M) data, zeros on the 4 KiB blocks [4096, 12288), data;
        // piece 2: [1M, 2M); piece 3: [2M, 2M+100)
        let offs: Vec<u64> = out.iter().map(|e| e.offset).collect();
        assert_eq!(offs, vec![100, 4096, 3 * 4096, PIECE, 2 * PIECE]);
        assert!(matches!(out[1].bytes, ExtentBytes::Zero(8192)));
        assert_eq!(st.bytes_read, 2 * PIECE);
        assert_eq!(
            data_ranges(&f, data.len() as u64),
            vec![(0, data.len() as u64)]
        );
    }

    #[test]
    fn holes_fill_between_data_ranges() {
        let z = |e: &ExtentData| (e.offset, e.bytes.len());
        let h: Vec<_> = holes(1, &[(4096, 4096), (16384, 100)], 20000)
            .iter()
            .map(z)
            .collect();
        assert_eq!(h, vec![(0, 4096), (8192, 8192), (16484, 3516)]);
        assert!(holes(1, &[(0, 100)], 100).is_empty());
        let all: Vec<_> = holes(1, &[], 10).iter().map(z).collect();
        assert_eq!(all, vec![(0, 10)]);
    }
}
