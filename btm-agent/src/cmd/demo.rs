//! `btm-agent demo`: the main job end to end on a scratch loop-mounted ext4 volume.
//!
//! It simulates a chain node (append-only block files, LSM-style files that come and go, an
//! mmap'd state file with random page updates), cuts a height after each simulated block,
//! then replays heights into fresh directories and checks them against the tree hashed at
//! cut time, and does the same through an offsite copy (a `file://` store). Everything lives
//! under --dir and is removed at the end unless --keep.
use std::{
    collections::BTreeMap,
    fs::{self, OpenOptions},
    io::Write,
    os::unix::{fs::FileExt, io::AsRawFd},
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context, Result, bail};

use crate::{
    cut::Cutter,
    log::{Log, ReplayOptions},
    tracker::{Limits, Tracker},
    treehash::{TreeHash, diff, hash_tree},
    volume::Mount,
};

#[derive(clap::Args, Debug)]
pub struct DemoArgs {
    /// Scratch directory for the volume image, its mount point and the log.
    #[arg(long, default_value = "/var/tmp/btm-demo")]
    pub dir: PathBuf,
    /// Simulated blocks (heights) to cut.
    #[arg(long, default_value_t = 30)]
    pub heights: u64,
    /// Keep the volume and the log afterwards.
    #[arg(long)]
    pub keep: bool,
    /// Replay and compare after every cut, not only at the end.
    #[arg(long)]
    pub check: bool,
}

pub fn run(a: DemoArgs) -> Result<()> {
    let img = a.dir.join("volume.img");
    let mnt = a.dir.join("volume");
    let logdir = a.dir.join("log");
    let _ = Command::new("umount").arg("-d").arg(&mnt).output();
    let _ = fs::remove_dir_all(&a.dir);
    // Unmounted when the demo ends (left mounted with --keep).
    let vol = btm_testkit::LoopFs::create(&img, &mnt, "ext4", 1 << 30)
        .with_context(|| format!("loop-mounting a scratch ext4 volume at {}", mnt.display()))?;
    println!(
        "demo: ext4 volume at {} (1 GiB loop image), log at {}",
        mnt.display(),
        logdir.display()
    );

    let mount = Mount::at(&mnt)?;
    let tracker = Tracker::start(&mount, Limits::for_volume_bytes(1 << 30))?;
    fs::create_dir_all(&logdir)?;
    let mut cutter = Cutter::new(mount, tracker, Log::open_append(&logdir)?)?;

    let mut chain = Chain::new(&mnt)?;
    let mut expected: BTreeMap<u64, TreeHash> = BTreeMap::new();
    println!(
        "{:>6} {:>10} {:>12} {:>12} {:>7}",
        "height", "freeze ms", "read bytes", "stored", "files"
    );
    for h in 1..=a.heights {
        chain.block(h)?;
        let (rep, info) = cutter.cut(h)?;
        // The tree at the cut: the node is this process, so nothing moves in between.
        expected.insert(h, hash_tree(&mnt)?);
        if a.check {
            let into = a.dir.join("check");
            Log::open_read(&logdir)?.replay(h, &into, &ReplayOptions::default())?;
            let d = diff(&expected[&h], &hash_tree(&into)?);
            if !d.is_empty() {
                bail!(
                    "height {h}: replay differs right after its cut ({:?}):\n{}",
                    cutter.tracker().stats()?,
                    d.join("\n")
                );
            }
        }
        println!(
            "{:>6} {:>10.2} {:>12} {:>12} {:>7}{}",
            h,
            rep.freeze_ms,
            rep.read_unfrozen + rep.read_frozen,
            info.stored_bytes,
            rep.files_changed,
            if rep.full { "  (baseline)" } else { "" }
        );
    }
    println!(
        "demo: tracker counters {}",
        serde_json::to_string(&cutter.tracker().stats()?)?
    );
    drop(cutter);
    drop(chain); // unmaps the state file, so the volume can be unmounted

    let log = Log::open_read(&logdir)?;
    log.verify().context("verifying the log")?;
    println!("demo: log verified ({} heights)", log.heights().len());
    let into = a.dir.join("replay");
    for h in [1, a.heights / 2, a.heights]
        .into_iter()
        .filter(|&h| h >= 1)
    {
        let stats = log.replay(h, &into, &ReplayOptions::default())?;
        let d = diff(&expected[&h], &hash_tree(&into)?);
        if !d.is_empty() {
            bail!(
                "replay of height {h} differs from the tree at its cut:\n{}",
                d.join("\n")
            );
        }
        println!(
            "demo: replay --to {h} matches the tree hashed at cut {h} ({})",
            super::report::replay_summary(&stats)
        );
    }
    // Offsite: push to a file:// store (s3://, gs://, az:// work the same) and restore from it.
    let store = a.dir.join("offsite");
    let _ = fs::remove_dir_all(&store);
    let remote = crate::remote::Remote::open(&format!("file://{}", store.display()))?;
    let opts = crate::remote::PushOptions {
        name: "demo".into(),
        tag: Some("demo".into()),
        ..Default::default()
    };
    let pushed = crate::remote::push(&log, &remote, &opts).context("pushing offsite")?;
    println!(
        "demo: pushed offsite to {}: {} records, {} objects, {} bytes",
        remote.url(),
        pushed.records_uploaded,
        pushed.objects_uploaded,
        pushed.bytes_uploaded
    );
    let into = a.dir.join("offsite-restore");
    let rep = crate::remote::replay(
        &remote,
        "demo",
        Some(a.heights),
        true,
        &into,
        &ReplayOptions::default(),
    )?;
    let d = diff(&expected[&a.heights], &hash_tree(&into)?);
    if !d.is_empty() {
        bail!(
            "offsite restore of height {} differs from the tree at its cut:\n{}",
            a.heights,
            d.join("\n")
        );
    }
    println!(
        "demo: replay --remote --to {} matches the tree hashed at its cut ({} objects, {} bytes \
         downloaded)",
        a.heights, rep.objects_downloaded, rep.bytes_downloaded
    );
    println!("demo: OK");
    if a.keep {
        std::mem::forget(vol);
        println!("demo: kept {}", a.dir.display());
    } else {
        drop(vol);
        let _ = fs::remove_dir_all(&a.dir);
    }
    Ok(())
}

/// A toy chain node's data directory.
struct Chain {
    root: PathBuf,
    rng: u64,
    state: *mut u8,
    state_len: usize,
    _state_file: fs::File,
    lsm_next: u64,
}

impl Drop for Chain {
    fn drop(&mut self) {
        // SAFETY: the mapping made in `Chain::new`.
        unsafe { libc::munmap(self.state as *mut _, self.state_len) };
    }
}

impl Chain {
    fn new(root: &Path) -> Result<Chain> {
        fs::create_dir_all(root.join("blocks"))?;
        fs::create_dir_all(root.join("chainstate"))?;
        let state_len = 32 << 20;
        let f = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(root.join("state.mdbx"))?;
        f.set_len(state_len as u64)?;
        // SAFETY: shared mapping of a file we own for the demo's duration.
        let p = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                state_len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED,
                f.as_raw_fd(),
                0,
            )
        };
        if p == libc::MAP_FAILED {
            bail!("mmap: {}", std::io::Error::last_os_error());
        }
        Ok(Chain {
            root: root.to_path_buf(),
            rng: 0x2545_f491_4f6c_dd1d,
            state: p as *mut u8,
            state_len,
            _state_file: f,
            lsm_next: 0,
        })
    }

    fn next(&mut self) -> u64 {
        self.rng ^= self.rng << 13;
        self.rng ^= self.rng >> 7;
        self.rng ^= self.rng << 17;
        self.rng
    }

    fn bytes(&mut self, n: usize) -> Vec<u8> {
        (0..n.div_ceil(8))
            .flat_map(|_| self.next().to_le_bytes())
            .take(n)
            .collect()
    }

    fn block(&mut self, h: u64) -> Result<()> {
        // Append a block to the current block file (a new file every 10 heights).
        let blk = self.root.join(format!("blocks/blk{:05}.dat", h / 10));
        let n = 32 * 1024 + (self.next() % (192 * 1024)) as usize;
        let data = self.bytes(n);
        OpenOptions::new()
            .create(true)
            .append(true)
            .open(&blk)?
            .write_all(&data)?;
        // LSM: a new table file each height, the oldest removed once there are 5.
        let t = self
            .root
            .join(format!("chainstate/{:06}.ldb", self.lsm_next));
        let data = self.bytes(64 * 1024);
        fs::write(&t, data)?;
        if self.lsm_next >= 5 {
            fs::remove_file(
                self.root
                    .join(format!("chainstate/{:06}.ldb", self.lsm_next - 5)),
            )?;
        }
        self.lsm_next += 1;
        let cur = self.root.join("chainstate/CURRENT");
        fs::write(&cur, format!("MANIFEST-{h:06}\n"))?;
        // State: random 4 KiB page updates through the shared mapping.
        for _ in 0..16 {
            let page = (self.next() as usize % (self.state_len / 4096)) * 4096;
            let v = self.next().to_le_bytes();
            // SAFETY: inside the mapping.
            unsafe { std::ptr::copy_nonoverlapping(v.as_ptr(), self.state.add(page + 64), 8) };
        }
        // A pwrite-updated index too.
        let idx = OpenOptions::new()
            .create(true)
            .write(true)
            .truncate(false)
            .open(self.root.join("blocks/index"))?;
        idx.write_all_at(&h.to_le_bytes(), (h % 512) * 4096)?;
        Ok(())
    }
}
