//! A chain-like data set, applied identically (same seed, same operations) to every volume.
//!
//! * `state.mdbx`: half the data set, a shared writable mapping updated by random 4 KiB pages
//!   (MDBX/LMDB-style engines).
//! * `blocks/blkNNNNN.dat`: append-only block files of 128 MiB.
//! * `chainstate/NNNNNN.ldb`: LSM tables of up to 8 MiB, written whole, the oldest removed.
use std::{
    collections::VecDeque,
    fs::{self, File, OpenOptions},
    io::Write,
    os::unix::{fs::FileExt, io::AsRawFd},
    path::{Path, PathBuf},
};

use anyhow::{Result, bail};

const PAGE: u64 = 4096;
const BLK_FILE: u64 = 128 << 20;
const LSM_FILE: u64 = 8 << 20;
/// The state file is first written in writes of this size; xfs and ext4 size page-cache folios
/// by the write, so its folios start at most this large (pages evicted and read back through
/// readahead may come back in 2 MiB folios).
pub const STATE_WRITE: u64 = 1 << 20;

/// Disables (`true`) or enables again THP for this process, the data set's writer, as
/// `btm-agent exec` disables it for a node (docs/NODES.md): with it disabled the kernel maps no
/// file folio with a PMD, so a store into a 2 MiB folio faults per 4 KiB page. Checked by the
/// kernel at each fault, so it applies to the mapping's next faults; pages already PMD-mapped
/// stay so until they are unmapped ([`DataSet::remap`]).
pub fn writer_thp(disabled: bool) -> Result<()> {
    // SAFETY: prctl with integer arguments.
    if unsafe { libc::prctl(libc::PR_SET_THP_DISABLE, u64::from(disabled), 0, 0, 0) } != 0 {
        bail!(
            "prctl(PR_SET_THP_DISABLE, {disabled}): {}",
            std::io::Error::last_os_error()
        );
    }
    Ok(())
}

pub struct DataSet {
    root: PathBuf,
    rng: u64,
    /// Of every 4 KiB of block files and tables, how many bytes are zeros (compressible).
    zeros: usize,
    state: *mut u8,
    state_len: u64,
    state_file: File,
    blk_no: u64,
    blk_len: u64,
    lsm: VecDeque<(PathBuf, u64)>,
    lsm_next: u64,
}

impl Drop for DataSet {
    fn drop(&mut self) {
        if self.state.is_null() {
            return;
        }
        // SAFETY: the mapping was created in `map` with this length and is not used after.
        unsafe { libc::munmap(self.state as *mut libc::c_void, self.state_len as usize) };
    }
}

impl DataSet {
    /// Writes the initial data set of about `bytes` under `root`.
    pub fn create(root: &Path, bytes: u64, seed: u64) -> Result<DataSet> {
        Self::create_with(root, bytes, seed, 0)
    }

    /// [`DataSet::create`] with `zeros` bytes of every 4 KiB of block files and tables left
    /// zero (the scale benchmark's logs must fit the machine's disk).
    pub fn create_with(root: &Path, bytes: u64, seed: u64, zeros: usize) -> Result<DataSet> {
        fs::create_dir_all(root.join("blocks"))?;
        fs::create_dir_all(root.join("chainstate"))?;
        let state_len = (bytes / 2) / PAGE * PAGE;
        let f = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(root.join("state.mdbx"))?;
        let mut ds = DataSet {
            root: root.to_path_buf(),
            rng: seed | 1,
            zeros: zeros.min(PAGE as usize),
            state: std::ptr::null_mut(),
            state_len,
            state_file: f.try_clone()?,
            blk_no: 0,
            blk_len: 0,
            lsm: VecDeque::new(),
            lsm_next: 0,
        };
        // The state file: pages half random, half zeros (compresses about 2:1, like MDBX pages).
        let mut off = 0;
        while off < state_len {
            let n = STATE_WRITE.min(state_len - off);
            let buf = ds.pages(n);
            f.write_all_at(&buf, off)?;
            off += n;
        }
        ds.map()?;
        // Block files: 30 %, LSM tables: 20 %.
        ds.append_blocks(bytes * 3 / 10)?;
        let mut lsm = bytes / 5;
        while lsm > 0 {
            let n = LSM_FILE.min(lsm);
            ds.new_table(n)?;
            lsm -= n;
        }
        Ok(ds)
    }

    /// Maps the state file (shared, writable) into `self.state`.
    fn map(&mut self) -> Result<()> {
        // SAFETY: a shared mapping of a file we keep open for the data set's lifetime.
        let p = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                self.state_len as usize,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED,
                self.state_file.as_raw_fd(),
                0,
            )
        };
        if p == libc::MAP_FAILED {
            bail!("mmap: {}", std::io::Error::last_os_error());
        }
        self.state = p as *mut u8;
        Ok(())
    }

    /// Drops the state file's mapping and maps it again, as a node that starts maps it: no
    /// page of it is mapped in this process afterwards (those the agent's prefault had mapped
    /// read-only included), so the first store into each page is a not-present fault.
    pub fn remap(&mut self) -> Result<()> {
        // SAFETY: the mapping was created in `map` with this length; `map` replaces the
        // pointer before anything uses it again.
        if unsafe { libc::munmap(self.state as *mut libc::c_void, self.state_len as usize) } != 0 {
            bail!("munmap: {}", std::io::Error::last_os_error());
        }
        self.state = std::ptr::null_mut();
        self.map()
    }

    /// `FilePmdMapped` of the state file's mapping in /proc/self/smaps, in kB (how much of it
    /// the kernel maps with 2 MiB PMDs); `None` when the mapping or the field is not found.
    pub fn file_pmd_mapped_kb(&self) -> Option<u64> {
        let smaps = fs::read_to_string("/proc/self/smaps").ok()?;
        let start = format!("{:x}-", self.state as usize);
        let mut lines = smaps.lines().skip_while(|l| !l.starts_with(&start));
        lines.next()?;
        lines
            // The next mapping's header: "start-end perms ...", whose first word has a '-'.
            .take_while(|l| !l.split_whitespace().next().is_some_and(|w| w.contains('-')))
            .find_map(|l| l.strip_prefix("FilePmdMapped:"))
            .and_then(|r| r.split_whitespace().next()?.parse().ok())
    }

    fn next(&mut self) -> u64 {
        self.rng ^= self.rng << 13;
        self.rng ^= self.rng >> 7;
        self.rng ^= self.rng << 17;
        self.rng
    }

    fn random(&mut self, n: u64) -> Vec<u8> {
        let mut v = Vec::with_capacity(n as usize + 8);
        while (v.len() as u64) < n {
            v.extend_from_slice(&self.next().to_le_bytes());
        }
        v.truncate(n as usize);
        if self.zeros > 0 {
            let keep = PAGE as usize - self.zeros;
            for page in v.chunks_mut(PAGE as usize) {
                let from = keep.min(page.len());
                page[from..].fill(0);
            }
        }
        v
    }

    /// `n` bytes of state pages: each page half random, half zeros.
    fn pages(&mut self, n: u64) -> Vec<u8> {
        let mut v = vec![0u8; n as usize];
        for page in v.chunks_mut(PAGE as usize) {
            let half = page.len() / 2;
            for w in page[..half].chunks_mut(8) {
                let r = self.next().to_le_bytes();
                w.copy_from_slice(&r[..w.len()]);
            }
        }
        v
    }

    fn append_blocks(&mut self, mut n: u64) -> Result<()> {
        while n > 0 {
            if self.blk_len >= BLK_FILE {
                self.blk_no += 1;
                self.blk_len = 0;
            }
            let take = n.min(BLK_FILE - self.blk_len).min(1 << 20);
            let data = self.random(take);
            OpenOptions::new()
                .create(true)
                .append(true)
                .open(self.root.join(format!("blocks/blk{:05}.dat", self.blk_no)))?
                .write_all(&data)?;
            self.blk_len += take;
            n -= take;
        }
        Ok(())
    }

    fn new_table(&mut self, n: u64) -> Result<()> {
        let p = self
            .root
            .join(format!("chainstate/{:06}.ldb", self.lsm_next));
        self.lsm_next += 1;
        let mut f = File::create(&p)?;
        let mut left = n;
        while left > 0 {
            let take = left.min(1 << 20);
            f.write_all(&self.random(take))?;
            left -= take;
        }
        self.lsm.push_back((p, n));
        Ok(())
    }

    /// What a durable node does at its commit: makes this height's writes durable (its
    /// fsyncs and msyncs, here all at once with a syncfs of the volume). Seconds it took.
    pub fn commit(&self) -> Result<f64> {
        let t = std::time::Instant::now();
        let dir = File::open(&self.root)?;
        // SAFETY: plain syscall on an fd this function owns.
        if unsafe { libc::syncfs(dir.as_raw_fd()) } != 0 {
            bail!(
                "syncfs {}: {}",
                self.root.display(),
                std::io::Error::last_os_error()
            );
        }
        Ok(t.elapsed().as_secs_f64())
    }

    /// One height's changes, about `bytes` in all: half random state pages through the mapping,
    /// a quarter appended to block files, a quarter new LSM tables (as many bytes of the oldest
    /// tables are removed, so the data set keeps its size apart from the blocks).
    pub fn height(&mut self, bytes: u64) -> Result<()> {
        let pages = (bytes / 2 / PAGE).max(1);
        let npages = self.state_len / PAGE;
        for _ in 0..pages {
            let page = self.next() % npages;
            let data = self.pages(PAGE);
            // SAFETY: `page < npages`, so the 4 KiB at page*PAGE lie inside the mapping.
            unsafe {
                std::ptr::copy_nonoverlapping(
                    data.as_ptr(),
                    self.state.add((page * PAGE) as usize),
                    PAGE as usize,
                )
            };
        }
        self.append_blocks((bytes / 4).max(PAGE))?;
        let mut lsm = (bytes / 4).max(PAGE);
        let mut removed = 0;
        while lsm > 0 {
            let n = LSM_FILE.min(lsm);
            self.new_table(n)?;
            lsm -= n;
            while removed < n {
                let Some((p, sz)) = self.lsm.pop_front() else {
                    break;
                };
                fs::remove_file(p)?;
                removed += sz;
            }
            removed = removed.saturating_sub(n);
        }
        // The CURRENT pointer, rewritten each height.
        fs::write(
            self.root.join("chainstate/CURRENT"),
            format!("MANIFEST-{:06}\n", self.lsm_next),
        )?;
        Ok(())
    }
}
