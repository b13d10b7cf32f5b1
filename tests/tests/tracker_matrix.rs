//! The tracker test matrix: every write path on loop-mounted ext4, xfs and btrfs.
//!
//! Each workload writes known byte ranges into one file of the tracked volume; after a cut-style
//! drain (freeze, flip, drain, thaw) we assert that every changed byte lies inside a reported
//! extent (zero misses), that no other file of the volume and no file of another device is
//! reported, and, for random 4 KiB pwrite and mmap stores, that amplification stays <= 1.25.
use std::{
    collections::BTreeMap,
    fs::{File, OpenOptions},
    io::{Seek, SeekFrom, Write},
    os::unix::{
        fs::{FileExt, MetadataExt, OpenOptionsExt},
        io::AsRawFd,
    },
    path::{Path, PathBuf},
};

use btm_agent::{
    tracker::{DirtySet, Limits, Tracker},
    volume::Mount,
};
use btm_tests::{LoopFs, Rng, can_run, drain_frozen};

const MIB: u64 = 1 << 20;
const FILE_SIZE: u64 = 16 * MIB;

/// What a workload changed in its file.
#[derive(Default)]
struct Changed {
    /// Byte ranges `[start, end)` whose content changed.
    ranges: Vec<(u64, u64)>,
    /// Unique 4 KiB blocks the workload wrote (amplification workloads only).
    amp_blocks: Option<u64>,
}

/// An aligned buffer for O_DIRECT.
fn aligned(len: usize, fill: u8) -> (*mut u8, std::alloc::Layout) {
    let layout = std::alloc::Layout::from_size_align(len, 4096).unwrap();
    // SAFETY: non-zero size layout.
    let p = unsafe { std::alloc::alloc(layout) };
    // SAFETY: freshly allocated `len` bytes.
    unsafe { std::ptr::write_bytes(p, fill, len) };
    (p, layout)
}

fn prepare(path: &Path, rng: &mut Rng) {
    let mut f = File::create(path).unwrap();
    for _ in 0..FILE_SIZE / MIB {
        f.write_all(&rng.bytes(MIB as usize)).unwrap();
    }
    f.sync_all().unwrap();
}

fn rw(path: &Path) -> File {
    OpenOptions::new()
        .read(true)
        .write(true)
        .open(path)
        .unwrap()
}

fn mmap_stores(path: &Path, rng: &mut Rng, n: usize, sync: bool) -> Changed {
    mmap_stores_with(path, rng, n, sync, false)
}

/// `blind`: store without reading first, so every first touch is a not-present write fault.
fn mmap_stores_with(path: &Path, rng: &mut Rng, n: usize, sync: bool, blind: bool) -> Changed {
    let f = rw(path);
    // SAFETY: a shared mapping of a file we own for the test's duration.
    let p = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            FILE_SIZE as usize,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_SHARED,
            f.as_raw_fd(),
            0,
        )
    } as *mut u8;
    assert!(p as isize != -1, "mmap failed");
    let mut blocks = std::collections::BTreeSet::new();
    let mut c = Changed::default();
    while blocks.len() < n {
        let b = rng.below(FILE_SIZE / 4096);
        if !blocks.insert(b) {
            continue;
        }
        let off = b * 4096 + rng.below(4000);
        // SAFETY: inside the mapping.
        unsafe {
            if blind {
                std::ptr::write_volatile(p.add(off as usize), (b as u8) ^ 0x5a);
            } else {
                *p.add(off as usize) = !*p.add(off as usize);
            }
        }
        c.ranges.push((off, off + 1));
    }
    // SAFETY: the mapping created above.
    unsafe {
        if sync {
            libc::msync(p as *mut _, FILE_SIZE as usize, libc::MS_SYNC);
        }
        libc::munmap(p as *mut _, FILE_SIZE as usize);
    }
    c.amp_blocks = Some(n as u64);
    c
}

/// A separate, single-threaded process holding a shared mapping of a whole test file whose
/// PTEs were all faulted in by reads: how a node's mmap engine looks between cuts. (In this
/// multithreaded test process, sibling threads' mmap/munmap make `bpf_find_vma` busy; busy
/// faults are handled conservatively, which would blur the measurement.)
struct Mapping {
    child: std::process::Child,
}

const MAPPER: &str = r#"
import mmap, os, sys
fd = os.open(sys.argv[1], os.O_RDWR)
m = mmap.mmap(fd, int(sys.argv[2]))
s = 0
for p in range(0, len(m), 4096):
    s += m[p]
print("ready", flush=True)
for line in sys.stdin:
    off = int(line)
    m[off] = m[off] ^ 0xff
m.close()
print("done", flush=True)
"#;

impl Mapping {
    fn prefaulted(path: &Path) -> Mapping {
        use std::io::BufRead;
        let mut child = std::process::Command::new("python3")
            .args(["-c", MAPPER])
            .arg(path)
            .arg(FILE_SIZE.to_string())
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .spawn()
            .expect("python3");
        let mut line = String::new();
        std::io::BufReader::new(child.stdout.as_mut().unwrap())
            .read_line(&mut line)
            .unwrap();
        assert_eq!(line.trim(), "ready");
        Mapping { child }
    }

    fn stores(mut self, rng: &mut Rng, n: usize) -> Changed {
        use std::io::BufRead;
        let mut blocks = std::collections::BTreeSet::new();
        let mut c = Changed::default();
        let mut input = String::new();
        while blocks.len() < n {
            let b = rng.below(FILE_SIZE / 4096);
            if !blocks.insert(b) {
                continue;
            }
            let off = b * 4096 + rng.below(4000);
            input.push_str(&format!("{off}\n"));
            c.ranges.push((off, off + 1));
        }
        let mut stdin = self.child.stdin.take().unwrap();
        stdin.write_all(input.as_bytes()).unwrap();
        drop(stdin);
        let mut line = String::new();
        std::io::BufReader::new(self.child.stdout.as_mut().unwrap())
            .read_line(&mut line)
            .unwrap();
        assert_eq!(line.trim(), "done");
        self.child.wait().unwrap();
        c.amp_blocks = Some(n as u64);
        c
    }
}

fn uring_write(f: &File, buf: *const u8, len: u32, off: u64) {
    use io_uring::{opcode, types};
    let e = opcode::Write::new(types::Fd(f.as_raw_fd()), buf, len)
        .offset(off)
        .build();
    assert_eq!(uring(e), len as i32, "io_uring write");
}

/// Submits one entry to a new ring and waits for its result. The entry's buffers, if any,
/// must outlive the call.
fn uring(e: io_uring::squeue::Entry) -> i32 {
    let mut ring = io_uring::IoUring::new(4).unwrap();
    // SAFETY: the caller keeps the entry's buffers alive; we wait for the completion.
    unsafe { ring.submission().push(&e).unwrap() };
    ring.submit_and_wait(1).unwrap();
    ring.completion().next().unwrap().result()
}

/// Runs workload `name` on `path`; returns the changed ranges.
fn workload(
    name: &str,
    fs: &LoopFs,
    path: &Path,
    rng: &mut Rng,
    steady: &mut Option<Mapping>,
) -> Option<Changed> {
    let mut c = Changed::default();
    match name {
        "write" => {
            let mut f = rw(path);
            f.seek(SeekFrom::Start(MIB + 100)).unwrap();
            f.write_all(&rng.bytes(32 << 10)).unwrap();
            c.ranges.push((MIB + 100, MIB + 100 + (32 << 10)));
        }
        "pwrite" => {
            let f = rw(path);
            for _ in 0..20 {
                let len = 1 + rng.below(20_000);
                let off = rng.below(FILE_SIZE - len);
                f.write_all_at(&rng.bytes(len as usize), off).unwrap();
                c.ranges.push((off, off + len));
            }
        }
        "pwritev" => {
            let f = rw(path);
            let (a, b, d) = (rng.bytes(5000), rng.bytes(3), rng.bytes(9000));
            let iov = [
                libc::iovec {
                    iov_base: a.as_ptr() as *mut _,
                    iov_len: a.len(),
                },
                libc::iovec {
                    iov_base: b.as_ptr() as *mut _,
                    iov_len: b.len(),
                },
                libc::iovec {
                    iov_base: d.as_ptr() as *mut _,
                    iov_len: d.len(),
                },
            ];
            let off = 7 * MIB + 333;
            // SAFETY: valid iovecs over live buffers.
            let n = unsafe { libc::pwritev(f.as_raw_fd(), iov.as_ptr(), 3, off as i64) };
            assert_eq!(n, 14003);
            c.ranges.push((off, off + 14003));
        }
        "odirect" => {
            let f = OpenOptions::new()
                .write(true)
                .custom_flags(libc::O_DIRECT)
                .open(path)
                .unwrap();
            let (p, layout) = aligned(64 << 10, 0xa5);
            // SAFETY: aligned buffer of 64 KiB.
            let n =
                unsafe { libc::pwrite(f.as_raw_fd(), p as *const _, 64 << 10, (4 * MIB) as i64) };
            assert_eq!(n, 64 << 10, "O_DIRECT pwrite");
            // SAFETY: allocated above with this layout.
            unsafe { std::alloc::dealloc(p, layout) };
            c.ranges.push((4 * MIB, 4 * MIB + (64 << 10)));
        }
        "odirect_at_0" => {
            // The first iomap_iter of an operation at file offset 0 reports length 0.
            let f = OpenOptions::new()
                .write(true)
                .custom_flags(libc::O_DIRECT)
                .open(path)
                .unwrap();
            let (p, layout) = aligned(16 << 10, 0x3c);
            // SAFETY: aligned buffer of 16 KiB.
            let n = unsafe { libc::pwrite(f.as_raw_fd(), p as *const _, 16 << 10, 0) };
            assert_eq!(n, 16 << 10, "O_DIRECT pwrite at 0");
            // SAFETY: allocated above with this layout.
            unsafe { std::alloc::dealloc(p, layout) };
            c.ranges.push((0, 16 << 10));
        }
        "uring_direct_at_0" => {
            let f = OpenOptions::new()
                .write(true)
                .custom_flags(libc::O_DIRECT)
                .open(path)
                .unwrap();
            let (p, layout) = aligned(8 << 10, 0x6b);
            uring_write(&f, p, 8 << 10, 0);
            // SAFETY: allocated above with this layout.
            unsafe { std::alloc::dealloc(p, layout) };
            c.ranges.push((0, 8 << 10));
        }
        "pwrite_at_0_dirty_folio" => {
            // A buffered write at offset 0 into a (large) folio an earlier write of this
            // epoch already dirtied: no folio event, so only the write's own range marks it.
            let f = rw(path);
            f.write_all_at(&rng.bytes(4096), 8192).unwrap();
            f.write_all_at(&rng.bytes(100), 0).unwrap();
            c.ranges.push((8192, 8192 + 4096));
            c.ranges.push((0, 100));
        }
        "uring_buffered" => {
            let f = rw(path);
            let buf = rng.bytes(10_000);
            uring_write(&f, buf.as_ptr(), 10_000, 9 * MIB + 17);
            c.ranges.push((9 * MIB + 17, 9 * MIB + 10_017));
        }
        "uring_direct" => {
            let f = OpenOptions::new()
                .write(true)
                .custom_flags(libc::O_DIRECT)
                .open(path)
                .unwrap();
            let (p, layout) = aligned(32 << 10, 0x5a);
            uring_write(&f, p, 32 << 10, 11 * MIB);
            // SAFETY: allocated above with this layout.
            unsafe { std::alloc::dealloc(p, layout) };
            c.ranges.push((11 * MIB, 11 * MIB + (32 << 10)));
        }
        "mmap_msync" => return Some(mmap_stores(path, rng, 64, true)),
        "mmap_nosync" => return Some(mmap_stores(path, rng, 64, false)),
        "mmap_blind" => return Some(mmap_stores_with(path, rng, 256, false, true)),
        "mmap_steady" => {
            // What a long-running engine sees: the mapping's PTEs exist (faulted in by reads
            // before the baseline cut), so stores are write-protect faults.
            let map = steady.take().expect("mapping prepared before the cut");
            return Some(map.stores(rng, 256));
        }
        "append" => {
            let mut f = OpenOptions::new().append(true).open(path).unwrap();
            f.write_all(&rng.bytes(100_000)).unwrap();
            c.ranges.push((FILE_SIZE, FILE_SIZE + 100_000));
        }
        "truncate_shrink" => {
            rw(path).set_len(5 * MIB + 10).unwrap();
            c.ranges.push((5 * MIB + 10, FILE_SIZE));
        }
        "truncate_grow" => {
            rw(path).set_len(FILE_SIZE + 3 * MIB).unwrap();
            c.ranges.push((FILE_SIZE, FILE_SIZE + 3 * MIB));
        }
        "truncate_path" => {
            let cpath = std::ffi::CString::new(path.to_str().unwrap()).unwrap();
            // SAFETY: valid C string.
            assert_eq!(
                unsafe { libc::truncate(cpath.as_ptr(), (3 * MIB) as i64) },
                0
            );
            c.ranges.push((3 * MIB, FILE_SIZE));
        }
        "uring_punch" => {
            // io_uring's fallocate calls vfs_fallocate itself: no fallocate system call.
            use io_uring::{opcode, types};
            let f = rw(path);
            let (off, len) = (7 * MIB + 4096, 64 << 10);
            let mode = libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE;
            let e = opcode::Fallocate::new(types::Fd(f.as_raw_fd()), len)
                .offset(off)
                .mode(mode)
                .build();
            assert_eq!(uring(e), 0, "io_uring punch");
            c.ranges.push((off, off + len));
        }
        "uring_ftruncate_grow" => {
            // io_uring's ftruncate: no ftruncate system call, and growth dirties nothing.
            use io_uring::{opcode, types};
            let f = rw(path);
            let e = opcode::Ftruncate::new(types::Fd(f.as_raw_fd()), FILE_SIZE + 2 * MIB).build();
            assert_eq!(uring(e), 0, "io_uring ftruncate");
            assert_eq!(f.metadata().unwrap().len(), FILE_SIZE + 2 * MIB);
            c.ranges.push((FILE_SIZE, FILE_SIZE + 2 * MIB));
        }
        "fallocate_grow" => {
            // Plain allocation past the end: the file grows by zeros, no folio is dirtied.
            let f = rw(path);
            let (off, len) = (FILE_SIZE + MIB, 2 * MIB);
            // SAFETY: plain syscall.
            let r = unsafe { libc::fallocate(f.as_raw_fd(), 0, off as i64, len as i64) };
            assert_eq!(r, 0, "fallocate: {}", std::io::Error::last_os_error());
            assert_eq!(f.metadata().unwrap().len(), off + len);
            c.ranges.push((FILE_SIZE, off + len));
        }
        "punch" | "zero" => {
            let f = rw(path);
            let mode = if name == "punch" {
                libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE
            } else {
                libc::FALLOC_FL_ZERO_RANGE
            };
            let (off, len) = (2 * MIB + 4096 * 3, 40_960);
            // SAFETY: plain syscall.
            let r = unsafe { libc::fallocate(f.as_raw_fd(), mode, off as i64, len as i64) };
            assert_eq!(
                r,
                0,
                "fallocate {name}: {}",
                std::io::Error::last_os_error()
            );
            c.ranges.push((off, off + len));
        }
        "copy_file_range" => {
            let src_path = fs.path("cfr-src");
            prepare(&src_path, rng);
            let src = File::open(&src_path).unwrap();
            let dst = rw(path);
            let (mut off_in, mut off_out): (i64, i64) = (0, (6 * MIB) as i64);
            let len = 2 * MIB as usize;
            // SAFETY: valid fds and offsets.
            let n = unsafe {
                libc::copy_file_range(
                    src.as_raw_fd(),
                    &mut off_in,
                    dst.as_raw_fd(),
                    &mut off_out,
                    len,
                    0,
                )
            };
            assert_eq!(
                n as usize,
                len,
                "copy_file_range: {}",
                std::io::Error::last_os_error()
            );
            c.ranges.push((6 * MIB, 8 * MIB));
        }
        "clone_range" => {
            if fs.fstype == "ext4" {
                return None; // ext4 has no reflinks
            }
            let src_path = fs.path("clone-src");
            prepare(&src_path, rng);
            let src = File::open(&src_path).unwrap();
            let dst = rw(path);
            #[repr(C)]
            struct FileCloneRange {
                src_fd: i64,
                src_offset: u64,
                src_length: u64,
                dest_offset: u64,
            }
            let arg = FileCloneRange {
                src_fd: src.as_raw_fd() as i64,
                src_offset: MIB,
                src_length: MIB,
                dest_offset: 12 * MIB,
            };
            // SAFETY: FICLONERANGE with a valid struct.
            let r = unsafe { libc::ioctl(dst.as_raw_fd(), 0x4020_940d, &arg) };
            assert_eq!(r, 0, "FICLONERANGE: {}", std::io::Error::last_os_error());
            c.ranges.push((12 * MIB, 13 * MIB));
        }
        "beyond_4g" => {
            let f = rw(path);
            let off = 5 * 1024 * MIB + 123;
            f.write_all_at(&rng.bytes(9000), off).unwrap();
            c.ranges.push((off, off + 9000));
        }
        "random_4k_pwrite" => {
            let f = rw(path);
            let mut blocks = std::collections::BTreeSet::new();
            while blocks.len() < 256 {
                let b = rng.below(FILE_SIZE / 4096);
                if blocks.insert(b) {
                    f.write_all_at(&rng.bytes(4096), b * 4096).unwrap();
                    c.ranges.push((b * 4096, b * 4096 + 4096));
                }
            }
            c.amp_blocks = Some(256);
        }
        "random_mmap" => return Some(mmap_stores(path, rng, 256, false)),
        "mmap_sparse" => {
            // A sparse file faulted in through the mapping gets PMD-sized folios, which one
            // write fault maps writable whole: later stores in them fault no more.
            return Some(Changed {
                amp_blocks: None,
                ..mmap_stores(path, rng, 64, false)
            });
        }
        other => panic!("unknown workload {other}"),
    }
    Some(c)
}

/// Workloads whose amplification must stay <= 1.25. First-touch mmap stores (`mmap_*`,
/// `random_mmap`) are folio-granular by design on large-folio filesystems: a not-present write
/// fault may map the whole folio writable. Their amplification is printed, not bounded.
const AMP_BOUNDED: &[&str] = &["random_4k_pwrite", "mmap_steady"];

const WORKLOADS: &[&str] = &[
    "write",
    "pwrite",
    "pwritev",
    "odirect",
    "odirect_at_0",
    "uring_buffered",
    "uring_direct",
    "uring_direct_at_0",
    "pwrite_at_0_dirty_folio",
    "mmap_msync",
    "mmap_nosync",
    "append",
    "truncate_shrink",
    "truncate_grow",
    "truncate_path",
    "fallocate_grow",
    "uring_punch",
    "uring_ftruncate_grow",
    "punch",
    "zero",
    "copy_file_range",
    "clone_range",
    "beyond_4g",
    "random_4k_pwrite",
    "random_mmap",
    "mmap_sparse",
    "mmap_steady",
    "mmap_blind",
];

fn covered(set: &DirtySet, ino: u64, start: u64, end: u64) -> Result<(), String> {
    let Some(f) = set.files.get(&ino) else {
        return Err(format!("file not reported at all (wanted {start}..{end})"));
    };
    for b in start / 4096..end.div_ceil(4096) {
        // The first changed byte within this block.
        let first = start.max(b * 4096);
        let in_tail = f.tail_from.is_some_and(|t| t <= first);
        if !f.blocks.contains(&b) && !in_tail {
            return Err(format!("block {b} (byte {first}) of {start}..{end} missed"));
        }
    }
    Ok(())
}

/// One filesystem at a time: a host runs one tracker, and concurrent trackers' probes share
/// the per-CPU state behind bpf_find_vma (busy lookups would blur the amplification bound).
static ONE_AT_A_TIME: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn matrix(fstype: &str) {
    if !can_run(&format!("tracker matrix on {fstype}")) {
        return;
    }
    let _serial = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let fs = LoopFs::new(fstype, 2048).expect("loop fs");
    let mount = Mount::at(&fs.mnt).unwrap();
    let mut tracker =
        Tracker::start(&mount, Limits::for_volume_bytes(2048 * MIB)).expect("tracker");
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15 ^ fstype.len() as u64);
    // A file on another device written during every workload must never show up.
    let other_dir = tempfile::tempdir().unwrap();
    let other = other_dir.path().join("other");
    let mut amp: BTreeMap<&str, f64> = BTreeMap::new();
    let mut failures = Vec::new();

    for &name in WORKLOADS {
        let path: PathBuf = fs.path(&format!("wp-{name}"));
        if name == "mmap_sparse" {
            File::create(&path).unwrap().set_len(FILE_SIZE).unwrap();
        } else {
            prepare(&path, &mut rng);
        }
        // A bystander in the same volume, written before the cut baseline only.
        let bystander = fs.path(&format!("by-{name}"));
        prepare(&bystander, &mut rng);
        let mut steady = (name == "mmap_steady").then(|| Mapping::prefaulted(&path));
        drain_frozen(&mut tracker, &fs.mnt);

        let Some(changed) = workload(name, &fs, &path, &mut rng, &mut steady) else {
            continue;
        };
        std::fs::write(&other, rng.bytes(8192)).unwrap();
        let set = drain_frozen(&mut tracker, &fs.mnt);

        let ino = std::fs::metadata(&path).unwrap().ino();
        for &(s, e) in &changed.ranges {
            if let Err(msg) = covered(&set, ino, s, e) {
                failures.push(format!("{fstype}/{name}: {msg}"));
            }
        }
        let by_ino = std::fs::metadata(&bystander).unwrap().ino();
        if set.files.contains_key(&by_ino) {
            failures.push(format!(
                "{fstype}/{name}: untouched file {} reported",
                bystander.display()
            ));
        }
        let other_ino = std::fs::metadata(&other).unwrap().ino();
        let tracked_inos: Vec<u64> = std::fs::read_dir(&fs.mnt)
            .unwrap()
            .flatten()
            .map(|e| e.metadata().unwrap().ino())
            .collect();
        if set.files.contains_key(&other_ino) && !tracked_inos.contains(&other_ino) {
            failures.push(format!(
                "{fstype}/{name}: a file of another device was reported"
            ));
        }
        if let Some(blocks) = changed.amp_blocks {
            let f = &set.files[&ino];
            assert!(
                f.tail_from.is_none(),
                "{fstype}/{name}: unexpected tail mark {:?}",
                f.tail_from
            );
            let a = f.block_bytes() as f64 / (blocks * 4096) as f64;
            amp.insert(name, a);
        }
        std::fs::remove_file(&path).unwrap();
        std::fs::remove_file(&bystander).unwrap();
    }
    let stats = tracker.stats().unwrap();
    eprintln!("{fstype}: amplification {amp:?}; tracker stats {stats:?}");
    assert!(failures.is_empty(), "misses:\n{}", failures.join("\n"));
    assert_eq!(stats.lost, 0, "{fstype}: tracker lost events");
    for (name, a) in amp {
        assert!(
            a <= 1.25 || !AMP_BOUNDED.contains(&name),
            "{fstype}/{name}: amplification {a:.3} > 1.25"
        );
        assert!(
            a >= 1.0,
            "{fstype}/{name}: amplification {a:.3} < 1: blocks missed"
        );
    }
}

#[test]
fn tracker_matrix_ext4() {
    matrix("ext4");
}

#[test]
fn tracker_matrix_xfs() {
    matrix("xfs");
}

#[test]
fn tracker_matrix_btrfs() {
    matrix("btrfs");
}
