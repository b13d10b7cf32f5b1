//! Read-faulting the node's shared mappings of tracked files, so that its stores are seen per
//! 4 KiB page.
//!
//! A store into a page its process has not mapped yet is a not-present write fault, and on
//! 6.18 such a fault maps the page's whole folio writable at once (`finish_fault`): the stores
//! into the folio's other pages raise no fault, and the tracker must mark the whole folio (up
//! to 2 MiB for one 4 KiB store: the benchmark's mmap writer read 37x what it changed). A page
//! that is already mapped read-only takes a write-protect fault instead, which makes exactly
//! that page writable, and the tracker marks 4 KiB. So after each cut the agent reads one byte
//! of every page of those mappings that is in the page cache but not mapped in the process
//! (`/proc/PID/pagemap`, `mincore`), with `process_vm_readv`: the kernel maps them read-only,
//! as the node's own `MADV_POPULATE_READ` would.
//!
//! It only ever reads: a page it maps is read-only until the node writes it, and that write
//! faults. Pages not in the page cache are left alone (reading them would cost disk reads).
//! PMD mappings are not helped (a write-protect fault on a PMD maps 2 MiB writable again);
//! `btm-agent exec` removes those.
use std::{
    fs::File,
    io::{BufRead, BufReader},
    os::unix::fs::FileExt,
};

use super::procmaps::MapsLine;

const PAGE: u64 = 4096;
/// Pages looked at per pagemap and mincore read (256 MiB of address space).
const WINDOW: u64 = 65536;
/// Remote pages read per `process_vm_readv` (the kernel's `IOV_MAX`).
const IOVS: usize = 1024;

/// What one pass did, for `status` and the tests.
#[derive(Clone, Copy, Debug, Default, serde::Serialize, PartialEq, Eq)]
pub struct PrefaultStats {
    /// Passes run since start.
    pub passes: u64,
    /// Shared mappings of tracked files found in mapping processes (last pass).
    pub mappings: u64,
    /// Pages of those mappings (last pass).
    pub pages: u64,
    /// Pages read-faulted: resident, not mapped before (since start).
    pub faulted: u64,
    /// Processes or mappings that could not be read (gone, or not permitted) (since start).
    pub errors: u64,
}

/// Runs passes on a thread of their own, one at a time: after each cut, the store asks for one
/// ([`Prefaulter::kick`]); a pass still running when the next cut ends is not doubled.
///
/// A pass costs time in proportion to the size of the mappings (pagemap and mincore of every
/// page): a pass starts only once the agent has been idle of passes for `IDLE_SHARE` times as
/// long as the last one took, so they take at most a fifth of one core however large the
/// node maps.
#[derive(Default)]
pub struct Prefaulter {
    running: Option<std::thread::JoinHandle<()>>,
    stats: std::sync::Arc<std::sync::Mutex<PrefaultStats>>,
    /// When the last pass may be followed by the next one.
    next_at: std::sync::Arc<std::sync::Mutex<Option<std::time::Instant>>>,
}

/// Idle time after a pass, in units of the pass's own duration.
const IDLE_SHARE: u32 = 4;

impl Prefaulter {
    /// Starts a pass over `pids` unless one is still running or the last one ended too
    /// recently.
    pub fn kick(&mut self, pids: Vec<u32>, major: u32, minor: u32) {
        if self.running.as_ref().is_some_and(|h| !h.is_finished()) {
            return;
        }
        let now = std::time::Instant::now();
        if self
            .next_at
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .is_some_and(|t| now < t)
        {
            return;
        }
        if let Some(h) = self.running.take() {
            let _ = h.join();
        }
        let stats = self.stats.clone();
        let next_at = self.next_at.clone();
        let spawned = std::thread::Builder::new()
            .name("prefault".into())
            .spawn(move || {
                let t0 = std::time::Instant::now();
                let mut st = *stats.lock().unwrap_or_else(|e| e.into_inner());
                pass(&pids, major, minor, &mut st);
                *stats.lock().unwrap_or_else(|e| e.into_inner()) = st;
                let end = std::time::Instant::now();
                *next_at.lock().unwrap_or_else(|e| e.into_inner()) =
                    Some(end + (end - t0) * IDLE_SHARE);
            });
        match spawned {
            Ok(h) => self.running = Some(h),
            Err(e) => tracing::warn!("cannot start the prefault thread: {e}"),
        }
    }

    /// What the passes did so far (the last finished pass's figures).
    pub fn stats(&self) -> PrefaultStats {
        *self.stats.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// One mapping of a tracked file, as /proc/PID/maps lists it.
#[derive(Debug, PartialEq, Eq)]
struct Mapping {
    start: u64,
    end: u64,
    /// File offset mapped at `start`.
    offset: u64,
}

/// The shared mappings of files on device `major:minor` in a /proc/PID/maps text.
fn shared_mappings(maps: impl BufRead, major: u32, minor: u32) -> Vec<Mapping> {
    maps.lines()
        .map_while(Result::ok)
        .filter_map(|l| MapsLine::parse(&l))
        .filter(|l| l.shares_file_on(major, minor))
        .map(|l| Mapping {
            start: l.start,
            end: l.end,
            offset: l.offset,
        })
        .collect()
}

/// Runs one pass over the processes `pids` (the tracker's mapping processes) for the volume
/// on `major:minor`, adding to `st`.
pub fn pass(pids: &[u32], major: u32, minor: u32, st: &mut PrefaultStats) {
    st.passes += 1;
    st.mappings = 0;
    st.pages = 0;
    let me = std::process::id();
    for &pid in pids.iter().filter(|&&p| p != me) {
        let Ok(maps) = File::open(format!("/proc/{pid}/maps")) else {
            continue; // gone
        };
        let maps = shared_mappings(BufReader::new(maps), major, minor);
        if maps.is_empty() {
            continue;
        }
        let Ok(pagemap) = File::open(format!("/proc/{pid}/pagemap")) else {
            st.errors += 1;
            continue;
        };
        for m in &maps {
            st.mappings += 1;
            st.pages += (m.end - m.start) / PAGE;
            if fault_in(pid, &pagemap, m, st).is_err() {
                st.errors += 1;
            }
        }
    }
}

/// Read-faults the resident, unmapped pages of one mapping, a window at a time.
fn fault_in(pid: u32, pagemap: &File, m: &Mapping, st: &mut PrefaultStats) -> std::io::Result<()> {
    // The file itself, through the process's own mapping of it (root may open map_files),
    // mapped here to ask mincore which of its pages the page cache holds.
    let file = File::open(format!("/proc/{pid}/map_files/{:x}-{:x}", m.start, m.end))?;
    let mut entries = vec![0u8; (WINDOW * 8) as usize];
    let mut resident = vec![0u8; WINDOW as usize];
    let mut addr = m.start;
    while addr < m.end {
        let n = ((m.end - addr) / PAGE).min(WINDOW);
        let want = &mut entries[..(n * 8) as usize];
        pagemap.read_exact_at(want, addr / PAGE * 8)?;
        let offset = m.offset + (addr - m.start);
        mincore_of(&file, offset, n, &mut resident[..n as usize])?;
        let todo: Vec<u64> = (0..n)
            .filter(|&i| {
                let e = u64::from_le_bytes(want[(i * 8) as usize..][..8].try_into().unwrap());
                // Bit 63: present (mapped in the process).
                e >> 63 == 0 && resident[i as usize] & 1 == 1
            })
            .map(|i| addr + i * PAGE)
            .collect();
        st.faulted += read_remote(pid, &todo);
        addr += n * PAGE;
    }
    Ok(())
}

/// Residency of `n` pages of `file` from `offset`, one byte per page (bit 0: resident).
fn mincore_of(file: &File, offset: u64, n: u64, out: &mut [u8]) -> std::io::Result<()> {
    use std::os::fd::AsRawFd;
    let len = (n * PAGE) as usize;
    // Private: a shared mapping of a tracked file would make the agent a "mapping process"
    // for the tracker, whose direct reads then count as remote writes and widen every cut.
    // SAFETY: a read-only mapping of our own, never dereferenced, unmapped below.
    let p = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            len,
            libc::PROT_READ,
            libc::MAP_PRIVATE,
            file.as_raw_fd(),
            offset as libc::off_t,
        )
    };
    if p == libc::MAP_FAILED {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: `p` maps `len` bytes; `out` holds one byte per page.
    let r = unsafe { libc::mincore(p, len, out.as_mut_ptr()) };
    let err = std::io::Error::last_os_error();
    // SAFETY: the mapping made above.
    unsafe { libc::munmap(p, len) };
    if r != 0 {
        return Err(err);
    }
    Ok(())
}

/// Reads one byte at each address of `pages` in process `pid`; returns how many were read.
/// A page that cannot be read (beyond the end of the file, or unmapped meanwhile) is skipped.
fn read_remote(pid: u32, pages: &[u64]) -> u64 {
    let mut sink = [0u8; IOVS];
    let mut done = 0u64;
    let mut rest = pages;
    while !rest.is_empty() {
        let batch = &rest[..rest.len().min(IOVS)];
        let local = libc::iovec {
            iov_base: sink.as_mut_ptr() as *mut libc::c_void,
            iov_len: batch.len(),
        };
        let remote: Vec<libc::iovec> = batch
            .iter()
            .map(|&a| libc::iovec {
                iov_base: a as *mut libc::c_void,
                iov_len: 1,
            })
            .collect();
        // SAFETY: reads into our own buffer of batch.len() bytes; the remote addresses are
        // only read by the kernel on the target's behalf.
        let r = unsafe {
            libc::process_vm_readv(
                pid as libc::pid_t,
                &local,
                1,
                remote.as_ptr(),
                remote.len() as libc::c_ulong,
                0,
            )
        };
        // It stops at the first page it cannot read: skip that one.
        let read = if r < 0 { 0 } else { r as usize };
        done += read as u64;
        let skip = if read < batch.len() { read + 1 } else { read };
        rest = &rest[skip..];
        if r < 0 && std::io::Error::last_os_error().raw_os_error() == Some(libc::ESRCH) {
            break;
        }
    }
    done
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_shared_mappings_of_the_device() {
        let maps = "\
7f0000000000-7f0000200000 rw-s 00000000 fd:01 1234 /vol/state.mdb
7f0000200000-7f0000400000 rw-p 00000000 fd:01 1235 /vol/private
7f0000400000-7f0000600000 r--s 00200000 fd:01 1234 /vol/state.mdb
7f0000600000-7f0000800000 rw-s 00000000 08:02 99 /other/dev
7f0000800000-7f0000a00000 rw-s 00000000 00:00 0 [anon shared]
garbage
";
        let got = shared_mappings(maps.as_bytes(), 0xfd, 1);
        assert_eq!(
            got,
            vec![
                Mapping {
                    start: 0x7f00_0000_0000,
                    end: 0x7f00_0020_0000,
                    offset: 0,
                },
                Mapping {
                    start: 0x7f00_0040_0000,
                    end: 0x7f00_0060_0000,
                    offset: 0x20_0000,
                },
            ]
        );
    }

    #[test]
    fn reads_fault_in_our_own_pages_and_skip_bad_ones() {
        let v = vec![7u8; 3 * PAGE as usize];
        let base = v.as_ptr() as u64;
        // A null page in the middle is skipped, the rest are read.
        let n = read_remote(std::process::id(), &[base, 0, base + PAGE, base + 2 * PAGE]);
        assert_eq!(n, 3);
    }
}
