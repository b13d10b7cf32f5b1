//! The main job end to end on loop-mounted ext4, xfs and btrfs: 50 heights of a random mix of
//! every write path and namespace change, each cut with the real freeze protocol. Replay to
//! every height (fresh and differential) must equal the tree hashed at the moment of its cut,
//! and so must in-place rollbacks through the cutter to random heights, each after changes no
//! height holds yet, comparing only what changed; the heights cut after them too.
use std::{
    collections::BTreeMap,
    ffi::OsStr,
    fs::{self, File, OpenOptions},
    io::Write,
    os::unix::{
        ffi::OsStrExt,
        fs::{FileExt, OpenOptionsExt, PermissionsExt},
        io::AsRawFd,
    },
    path::{Path, PathBuf},
};

use btm_agent::{
    cut::{CutReport, Cutter},
    log::{Log, PathGlobs, ReplayOptions},
    tracker::{Limits, Tracker},
    treehash::{TreeHash, diff, hash_tree},
    volume::Mount,
};
use btm_tests::{LoopFs, Rng, can_run, scratch};

const HEIGHTS: u64 = 50;
const STATE_LEN: usize = 8 << 20;

/// Applies random changes to the tree and keeps a shared mapping open like an mmap engine.
struct Mutator {
    root: PathBuf,
    rng: Rng,
    state: *mut u8,
    _state_file: File,
    n: u64,
    /// Bytes the workload changed in the current height (writes, zeroing, new files).
    changed: u64,
    /// What each height did, printed for the files of a failed comparison.
    history: Vec<String>,
}

impl Mutator {
    fn new(root: &Path, seed: u64) -> Mutator {
        let f = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(root.join("state.db"))
            .unwrap();
        f.set_len(STATE_LEN as u64).unwrap();
        // SAFETY: shared mapping kept for the mutator's lifetime.
        let p = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                STATE_LEN,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED,
                f.as_raw_fd(),
                0,
            )
        };
        assert_ne!(p, libc::MAP_FAILED);
        fs::create_dir_all(root.join("blocks")).unwrap();
        Mutator {
            root: root.into(),
            rng: Rng(seed),
            state: p as *mut u8,
            _state_file: f,
            n: 0,
            changed: 0,
            history: Vec::new(),
        }
    }

    fn files(&self) -> Vec<PathBuf> {
        let mut out = Vec::new();
        let mut stack = vec![self.root.clone()];
        while let Some(d) = stack.pop() {
            for e in fs::read_dir(&d).unwrap().flatten() {
                let md = fs::symlink_metadata(e.path()).unwrap();
                if md.is_dir() {
                    stack.push(e.path());
                } else if md.is_file() && e.file_name() != "state.db" && e.file_name() != "huge" {
                    out.push(e.path());
                }
            }
        }
        out.sort();
        out
    }

    fn dirs(&self) -> Vec<PathBuf> {
        let mut out = vec![self.root.clone()];
        let mut i = 0;
        while i < out.len() {
            for e in fs::read_dir(&out[i]).unwrap().flatten() {
                if fs::symlink_metadata(e.path()).unwrap().is_dir() && e.file_name() != "lost+found"
                {
                    out.push(e.path());
                }
            }
            i += 1;
        }
        out
    }

    fn pick<T: Clone>(&mut self, v: &[T]) -> Option<T> {
        (!v.is_empty()).then(|| v[self.rng.below(v.len() as u64) as usize].clone())
    }

    /// `min + random(extra)` random bytes.
    fn bytes(&mut self, min: usize, extra: u64) -> Vec<u8> {
        let n = min + self.rng.below(extra) as usize;
        self.rng.bytes(n)
    }

    fn new_name(&mut self) -> PathBuf {
        self.n += 1;
        let dirs = self.dirs();
        let dir = self.pick(&dirs).unwrap();
        let name: Vec<u8> = match self.rng.below(4) {
            0 => format!("f{}", self.n).into_bytes(),
            1 => format!("with space {}", self.n).into_bytes(),
            2 => format!("new\nline{}", self.n).into_bytes(),
            _ => [b"\xff\xfe-".as_slice(), self.n.to_string().as_bytes()].concat(),
        };
        dir.join(OsStr::from_bytes(&name))
    }

    /// One height's worth of changes.
    fn height(&mut self, h: u64) {
        self.changed = 0;
        // Every block: append to the current block file, and update the mmap'd state.
        let blk = self.root.join(format!("blocks/blk{:03}.dat", h / 10));
        let data = self.bytes(20_000, 60_000);
        OpenOptions::new()
            .create(true)
            .append(true)
            .open(&blk)
            .unwrap()
            .write_all(&data)
            .unwrap();
        self.changed += data.len() as u64;
        for _ in 0..8 {
            let page = self.rng.below((STATE_LEN / 4096) as u64) as usize;
            let v = self.rng.next_u64().to_le_bytes();
            // SAFETY: inside the mapping.
            unsafe {
                std::ptr::copy_nonoverlapping(v.as_ptr(), self.state.add(page * 4096 + 8), 8)
            };
            self.changed += 8;
        }
        let ops = 3 + self.rng.below(5);
        for _ in 0..ops {
            self.op(h);
        }
    }

    fn op(&mut self, h: u64) {
        let files = self.files();
        let which = self.rng.below(18);
        let Some(f) = self.pick(&files).filter(|_| which > 0) else {
            // Create a file (also the fallback when there is none).
            let p = self.new_name();
            let data = self.bytes(0, 300_000);
            fs::write(&p, &data).unwrap();
            self.history
                .push(format!("h{h} create {p:?} ({} bytes)", data.len()));
            self.changed += data.len() as u64;
            return;
        };
        let size = fs::metadata(&f).unwrap().len();
        let rw = || OpenOptions::new().read(true).write(true).open(&f).unwrap();
        self.history
            .push(format!("h{h} op {which} on {:?} (size {size})", f));
        match which {
            1 | 2 => {
                let len = 1 + self.rng.below(50_000);
                let off = self.rng.below(size + 10_000);
                rw().write_all_at(&self.rng.bytes(len as usize), off)
                    .unwrap();
                self.changed += len;
            }
            3 => {
                let d = self.bytes(1, 30_000);
                OpenOptions::new()
                    .append(true)
                    .open(&f)
                    .unwrap()
                    .write_all(&d)
                    .unwrap();
                self.changed += d.len() as u64;
            }
            4 => rw().set_len(self.rng.below(size + 1)).unwrap(),
            5 => rw().set_len(size + self.rng.below(200_000)).unwrap(),
            6 | 7 if size > 8192 => {
                let mode = if which == 6 {
                    libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE
                } else {
                    libc::FALLOC_FL_ZERO_RANGE
                };
                let off = self.rng.below(size - 4096);
                let len = 1 + self.rng.below(size - off);
                // SAFETY: plain syscall.
                unsafe { libc::fallocate(rw().as_raw_fd(), mode, off as i64, len as i64) };
                self.changed += len;
            }
            8 => fs::remove_file(&f).unwrap(),
            9 => {
                let to = self.new_name();
                self.history.push(format!("  -> {to:?}"));
                fs::rename(&f, to).unwrap();
            }
            10 => {
                // Rename over an existing file.
                if let Some(g) = self.pick(&files).filter(|g| *g != f) {
                    self.history.push(format!("  -> {g:?}"));
                    fs::rename(&f, g).unwrap();
                }
            }
            11 => {
                let mode = [0o600, 0o644, 0o755, 0o640][self.rng.below(4) as usize];
                fs::set_permissions(&f, fs::Permissions::from_mode(mode)).unwrap();
            }
            12 => {
                let l = self.new_name();
                let target = if self.rng.below(2) == 0 {
                    f.file_name().unwrap().to_owned()
                } else {
                    "../dangling".into()
                };
                std::os::unix::fs::symlink(target, l).unwrap();
            }
            13 => {
                let l = self.new_name();
                self.history.push(format!("  link {l:?}"));
                fs::hard_link(&f, l).unwrap();
            }
            14 => {
                let d = self.new_name();
                fs::create_dir(&d).unwrap();
                if self.rng.below(2) == 0 {
                    fs::create_dir(d.join("empty")).unwrap();
                }
            }
            15 => {
                // Remove a whole directory (not the root, not blocks/).
                let dirs: Vec<PathBuf> = self
                    .dirs()
                    .into_iter()
                    .filter(|d| *d != self.root && !d.ends_with("blocks"))
                    .collect();
                if let Some(d) = self.pick(&dirs) {
                    fs::remove_dir_all(d).unwrap();
                }
            }
            16 => {
                // copy_file_range (a reflink on btrfs and xfs).
                if let Some(src) = self.pick(&files) {
                    let src_size = fs::metadata(&src).unwrap().len();
                    if src_size > 0 && src != f {
                        let s = File::open(&src).unwrap();
                        let d = rw();
                        let (mut oi, mut oo) = (0i64, (self.rng.below(size + 1) & !4095) as i64);
                        // SAFETY: valid fds.
                        unsafe {
                            libc::copy_file_range(
                                s.as_raw_fd(),
                                &mut oi,
                                d.as_raw_fd(),
                                &mut oo,
                                src_size as usize,
                                0,
                            )
                        };
                        self.changed += src_size;
                    }
                }
            }
            _ => {
                // O_DIRECT, aligned, within or past the end; and the sparse file beyond 4 GiB.
                let layout = std::alloc::Layout::from_size_align(16384, 4096).unwrap();
                // SAFETY: layout is non-zero; filled before use; freed below.
                let buf = unsafe { std::alloc::alloc(layout) };
                unsafe { std::ptr::write_bytes(buf, (h as u8) | 1, 16384) };
                let d = OpenOptions::new()
                    .write(true)
                    .custom_flags(libc::O_DIRECT)
                    .open(&f)
                    .unwrap();
                let off = (self.rng.below(size + 16384) & !4095) as i64;
                // SAFETY: aligned buffer.
                unsafe { libc::pwrite(d.as_raw_fd(), buf as *const _, 16384, off) };
                let huge = OpenOptions::new()
                    .create(true)
                    .truncate(false)
                    .write(true)
                    .open(self.root.join("huge"))
                    .unwrap();
                // SAFETY: aligned buffer.
                unsafe {
                    libc::pwrite(
                        huge.as_raw_fd(),
                        buf as *const _,
                        4096,
                        (5u64 << 30) as i64 + h as i64 * 4096,
                    )
                };
                // SAFETY: allocated above.
                unsafe { std::alloc::dealloc(buf, layout) };
                self.changed += 16384 + 4096;
            }
        }
    }
}

impl Drop for Mutator {
    fn drop(&mut self) {
        // SAFETY: the mapping created in new().
        unsafe { libc::munmap(self.state as *mut _, STATE_LEN) };
    }
}

fn pct(v: &mut [f64], p: f64) -> f64 {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    v[((v.len() - 1) as f64 * p).round() as usize]
}

fn e2e(fstype: &str) {
    if !can_run(&format!("cut end-to-end on {fstype}")) {
        return;
    }
    let fs = LoopFs::new(fstype, 8192).expect("loop fs");
    let work = tempfile::Builder::new()
        .prefix("btm-e2e-")
        .tempdir_in(scratch())
        .unwrap();
    let logdir = work.path().join("log");
    fs::create_dir(&logdir).unwrap();
    let mount = Mount::at(&fs.mnt).unwrap();
    let tracker = Tracker::start(&mount, Limits::for_volume_bytes(8 << 30)).unwrap();
    let mut cutter = Cutter::new(mount, tracker, Log::open_append(&logdir).unwrap()).unwrap();
    // Most heights patch the namespace the last freeze left from events; every 4th walks and
    // checks it against the tree.
    cutter.walk_every = 4;
    let mut m = Mutator::new(&fs.mnt, 0x51ed_270b ^ fstype.len() as u64);
    let mut expected: BTreeMap<u64, TreeHash> = BTreeMap::new();
    let mut reports: Vec<(CutReport, u64)> = Vec::new();
    let mut sizes: Vec<usize> = Vec::new(); // paths in the tree at each height
    for h in 1..=HEIGHTS {
        m.height(h);
        let (rep, _) = cutter
            .cut(h)
            .unwrap_or_else(|e| panic!("{fstype}: cut {h}: {e:#}"));
        expected.insert(h, hash_tree(&fs.mnt).unwrap());
        let st = cutter.tracker().stats().unwrap();
        m.history.push(format!(
            "cut {h}: read {}+{}, unresolved {}, fault_marked {}",
            rep.read_unfrozen, rep.read_frozen, st.fault_unresolved, st.fault_marked
        ));
        if std::env::var_os("BTM_E2E_TRACE").is_some() {
            let copy = work.path().join(format!("copy-{h}"));
            std::process::Command::new("cp")
                .arg("-a")
                .arg(&fs.mnt)
                .arg(&copy)
                .status()
                .unwrap();
            eprintln!("{fstype} cut {h}: {rep:?}");
        }
        sizes.push(expected[&h].len());
        reports.push((rep, m.changed));
    }
    let stats = cutter.tracker().stats().unwrap();
    let patched = reports.iter().filter(|(r, _)| !r.unfrozen_walk).count();
    let missed: Vec<(u64, usize)> = reports
        .iter()
        .filter(|(r, _)| r.namespace_missed > 0)
        .map(|(r, _)| (r.height, r.namespace_missed))
        .collect();
    assert!(
        patched as u64 >= HEIGHTS / 2,
        "{fstype}: only {patched} of {HEIGHTS} heights patched the namespace from events"
    );
    // A height kept from events builds its record from the changed paths only (and, in this
    // debug build, checks it against the record built from every path).
    let record: Vec<(u64, usize, usize)> = (reports.iter().zip(&sizes))
        .filter(|((r, _), _)| !r.full && !r.unfrozen_walk && !r.frozen_walk)
        .map(|((r, _), &tree)| (r.height, r.record_paths, tree))
        .collect();
    let fewer = record.iter().filter(|(_, p, t)| p < t).count();
    assert!(
        fewer * 2 >= record.len() && !record.is_empty(),
        "{fstype}: (height, record paths, tree paths) {record:?}"
    );
    assert!(
        missed.is_empty(),
        "{fstype}: the namespace kept from events missed paths at (height, paths) {missed:?}"
    );
    // Replay every height fresh, and differentially into one directory in shuffled order.
    let log = Log::open_read(&logdir).unwrap();
    log.verify().unwrap();
    let opts = ReplayOptions {
        progress: false,
        ..Default::default()
    };
    let stale = work.path().join("stale");
    let mut order: Vec<u64> = (1..=HEIGHTS).collect();
    let mut rng = Rng(7);
    for i in (1..order.len()).rev() {
        order.swap(i, rng.below(i as u64 + 1) as usize);
    }
    let mut failures = Vec::new();
    for &h in &order {
        let fresh = work.path().join(format!("fresh-{h}"));
        log.replay(h, &fresh, &opts).unwrap();
        let d = diff(&expected[&h], &hash_tree(&fresh).unwrap());
        if !d.is_empty() {
            failures.push(format!(
                "{fstype}: fresh replay of {h}:\n  {}",
                d.join("\n  ")
            ));
            if std::env::var_os("BTM_E2E_TRACE").is_some() {
                // Keep the per-height copies and this replay for a block-level look.
                eprintln!(
                    "{fstype} {h}: kept {} and copy-{h} beside it",
                    fresh.display()
                );
                std::mem::forget(work);
                panic!("stop at first failure: {}", failures.join("\n"));
            }
        }
        fs::remove_dir_all(&fresh).unwrap();
        log.replay(h, &stale, &opts).unwrap();
        let d = diff(&expected[&h], &hash_tree(&stale).unwrap());
        if !d.is_empty() {
            failures.push(format!(
                "{fstype}: differential replay of {h}:\n  {}",
                d.join("\n  ")
            ));
        }
    }
    drop(log);

    // In-place rollbacks of the volume through the cutter, each after changes no height
    // holds yet (the node wrote part of a block); the heights cut after them go on from the
    // target.
    let mut scoped = Vec::new();
    for _ in 0..3 {
        let next = expected.keys().last().unwrap() + 1;
        m.height(next);
        let kept: Vec<u64> = expected.keys().copied().collect();
        let h = kept[rng.below(kept.len() as u64) as usize];
        let st = cutter
            .rollback(h, &PathGlobs::default())
            .unwrap_or_else(|e| panic!("{fstype}: rollback to {h}: {e:#}"));
        scoped.push((h, st.scoped, st.bytes_compared));
        let d = diff(&expected[&h], &hash_tree(&fs.mnt).unwrap());
        if !d.is_empty() {
            failures.push(format!(
                "{fstype}: in-place rollback to {h}:\n  {}",
                d.join("\n  ")
            ));
        }
        expected.retain(|&k, _| k <= h);
        for k in h + 1..h + 3 {
            m.height(k);
            let (rep, _) = cutter
                .cut(k)
                .unwrap_or_else(|e| panic!("{fstype}: cut {k} after the rollback: {e:#}"));
            assert!(
                !rep.full,
                "{fstype}: the cut after a rollback to {h} was full"
            );
            expected.insert(k, hash_tree(&fs.mnt).unwrap());
            let fresh = work.path().join(format!("after-{k}"));
            Log::open_read(&logdir)
                .and_then(|log| log.replay(k, &fresh, &opts))
                .unwrap();
            let d = diff(&expected[&k], &hash_tree(&fresh).unwrap());
            if !d.is_empty() {
                failures.push(format!(
                    "{fstype}: height {k} cut after the rollback to {h}:\n  {}",
                    d.join("\n  ")
                ));
            }
            fs::remove_dir_all(&fresh).unwrap();
        }
    }
    drop(cutter);
    let m_history = std::mem::take(&mut m.history);
    drop(m);
    eprintln!("{fstype}: rollbacks (height, scope, bytes compared): {scoped:?}");
    assert!(
        scoped.iter().all(|(_, s, _)| s.is_some()),
        "{fstype}: a rollback compared the whole volume: {scoped:?}"
    );

    let mut freeze: Vec<f64> = reports.iter().skip(1).map(|(r, _)| r.freeze_ms).collect();
    let mut enter: Vec<f64> = reports
        .iter()
        .skip(1)
        .map(|(r, _)| r.freeze_enter_ms)
        .collect();
    let captured: u64 = reports
        .iter()
        .skip(1)
        .map(|(r, _)| r.read_unfrozen + r.read_frozen)
        .sum();
    let changed: u64 = reports.iter().skip(1).map(|(_, c)| *c).sum();
    eprintln!(
        "{fstype}: {HEIGHTS} heights; freeze p50 {:.2} ms p99 {:.2} ms (FIFREEZE p50 {:.2} p99 {:.2}); bytes captured {captured} vs changed {changed} \
         ({:.2}x); baseline read {}; tracker {stats:?}",
        pct(&mut freeze, 0.5),
        pct(&mut freeze, 0.99),
        pct(&mut enter, 0.5),
        pct(&mut enter, 0.99),
        captured as f64 / changed.max(1) as f64,
        reports[0].0.read_unfrozen + reports[0].0.read_frozen,
    );
    if !failures.is_empty() {
        eprintln!("{fstype} history:\n{}", m_history.join("\n"));
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[test]
fn e2e_ext4() {
    e2e("ext4");
}

#[test]
fn e2e_xfs() {
    e2e("xfs");
}

#[test]
fn e2e_btrfs() {
    e2e("btrfs");
}
