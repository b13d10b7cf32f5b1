//! The fault probe's mapping cache (btm-ebpf/src/vmas.rs) must never send a store to the file
//! that used to be mapped at its address.
//!
//! The test process maps file A shared and stores into pages of it: the first fault in each
//! 2 MiB region resolves the mapping with `bpf_find_vma`, the rest are answered from the cache
//! (asserted: `fault_cached` rises, so the cache is what is tested). Then file B takes A's
//! place at the same address, once by `mmap(MAP_FIXED)` over it and once by `mremap` of a
//! mapping of B made before A's stores were cached. Stores through the old address now land
//! in B, into folios a pwrite already dirtied (so no folio event follows): every one must be
//! marked in B. Without the invalidation in those system calls' probes they are marked in A
//! and B's changes are lost (checked by removing it: the stores go unmarked).
use std::{collections::BTreeSet, fs::File, io::Write, os::unix::fs::MetadataExt, path::Path};

use btm_agent::{
    tracker::{DirtySet, Limits, Tracker},
    volume::{Frozen, Mount},
};
use btm_tests::{LoopFs, Rng, can_run, missed};
use std::os::fd::AsRawFd;

const MIB: u64 = 1 << 20;
const LEN: u64 = 8 * MIB;
const PAGE: u64 = 4096;

/// One tracker at a time: concurrent trackers make VMA lookups busy.
static ONE_AT_A_TIME: std::sync::Mutex<()> = std::sync::Mutex::new(());

#[derive(Clone, Copy, Debug)]
enum Replace {
    /// `mmap(MAP_FIXED)` of B over A.
    Fixed,
    /// `mremap(MREMAP_FIXED)` of an older mapping of B onto A's address.
    Mremap,
}

/// A file written in writes of `chunk` bytes, so its page cache holds folios of up to that
/// size: in 4 KiB folios each page stored into takes a fault of its own (a 2 MiB folio may be
/// mapped whole, one fault per region).
fn file(path: &Path, rng: &mut Rng, chunk: u64) -> (File, u64) {
    let mut f = File::create(path).unwrap();
    for _ in 0..LEN / chunk {
        f.write_all(&rng.bytes(chunk as usize)).unwrap();
    }
    f.sync_all().unwrap();
    let ino = std::fs::metadata(path).unwrap().ino();
    let f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(path)
        .unwrap();
    (f, ino)
}

fn map(f: &File, at: *mut u8, fixed: bool) -> *mut u8 {
    let flags = libc::MAP_SHARED | if fixed { libc::MAP_FIXED } else { 0 };
    // SAFETY: a shared mapping of a file the test owns; with MAP_FIXED, `at` is a mapping of
    // the test's own that nothing else uses.
    let p = unsafe {
        libc::mmap(
            at as *mut libc::c_void,
            LEN as usize,
            libc::PROT_READ | libc::PROT_WRITE,
            flags,
            f.as_raw_fd(),
            0,
        )
    };
    assert!(
        p != libc::MAP_FAILED,
        "mmap: {}",
        std::io::Error::last_os_error()
    );
    p as *mut u8
}

/// Flips one byte in each page of `pages` through the mapping at `p`.
fn store(p: *mut u8, pages: &BTreeSet<u64>) {
    for &pg in pages {
        // SAFETY: every page lies inside the LEN-byte mapping at `p`.
        unsafe {
            let b = p.add((pg * PAGE + 7) as usize);
            std::ptr::write_volatile(b, !std::ptr::read_volatile(b));
        }
    }
}

fn cut(tracker: &mut Tracker, mnt: &Path) -> DirtySet {
    let frozen = Frozen::freeze(mnt).expect("freeze");
    let st = tracker.stats().unwrap();
    let mut set = tracker.take().expect("drain");
    frozen.thaw().expect("thaw");
    if st.fault_unresolved > 0 || st.remote_writes > 0 {
        set.widen_to_folios();
    }
    set
}

/// 16 random pages in each 2 MiB region of the file.
fn pages(rng: &mut Rng) -> BTreeSet<u64> {
    let mut s = BTreeSet::new();
    for region in 0..LEN / (2 * MIB) {
        while s.len() < ((region + 1) * 16) as usize {
            s.insert(region * 512 + rng.below(512));
        }
    }
    s
}

fn replaced(fstype: &str, how: Replace) {
    let _serial = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    if !can_run(&format!("tracker_remap on {fstype}")) {
        return;
    }
    let mut rng = Rng(0x7e3a_9c01 ^ fstype.len() as u64 ^ how as u64);
    let fs = LoopFs::new(fstype, 512).expect("loop fs");
    let mount = Mount::at(&fs.mnt).unwrap();
    let (fa, ia) = file(&fs.path("a.mdb"), &mut rng, PAGE);
    let (fb, ib) = file(&fs.path("b.mdb"), &mut rng, 2 * MIB);
    let mut tracker = Tracker::start(&mount, Limits::for_volume_bytes(512 * MIB)).unwrap();
    let _ = cut(&mut tracker, &fs.mnt);

    // Mapped now, before A's stores fill the cache: only mremap's own probe can then
    // invalidate what the cache holds for A's address.
    let older_b = matches!(how, Replace::Mremap).then(|| map(&fb, std::ptr::null_mut(), false));
    let x = map(&fa, std::ptr::null_mut(), false);
    let before = tracker.stats().unwrap();
    let pa = pages(&mut rng);
    store(x, &pa);
    let after = tracker.stats().unwrap();
    let set = cut(&mut tracker, &fs.mnt);
    assert_eq!(
        missed(&set, ia, &pa),
        Vec::<u64>::new(),
        "{fstype}: A's stores"
    );
    let cached = after.fault_cached - before.fault_cached;
    assert!(
        cached >= pa.len() as u64 / 2,
        "{fstype} {how:?}: only {cached} of {} faults came from the cache: the cache is not \
         what this test exercises",
        pa.len()
    );

    match how {
        Replace::Fixed => {
            assert_eq!(map(&fb, x, true), x);
        }
        Replace::Mremap => {
            // SAFETY: moves the test's own mapping of B onto the test's own mapping of A.
            let p = unsafe {
                libc::mremap(
                    older_b.unwrap() as *mut libc::c_void,
                    LEN as usize,
                    LEN as usize,
                    libc::MREMAP_MAYMOVE | libc::MREMAP_FIXED,
                    x as *mut libc::c_void,
                )
            };
            assert_eq!(
                p as *mut u8,
                x,
                "mremap: {}",
                std::io::Error::last_os_error()
            );
        }
    }
    // The same regions again (the cache held A for each), now through B. First one pwrite
    // into each of B's 2 MiB folios: the folio is then dirty with only that page marked, so a
    // store into its other pages raises no folio event, and only the fault probe, resolving
    // the address to B, can mark it. A fault resolved to A instead loses it.
    let before = tracker.stats().unwrap();
    let mut pb = pages(&mut rng);
    use std::os::unix::fs::FileExt;
    for region in 0..LEN / (2 * MIB) {
        let pg = region * 512 + 511;
        fb.write_all_at(&rng.bytes(PAGE as usize), pg * PAGE)
            .unwrap();
        pb.remove(&pg);
    }
    store(x, &pb);
    let after = tracker.stats().unwrap();
    let set = cut(&mut tracker, &fs.mnt);
    assert!(
        after.fault_marked - before.fault_marked >= LEN / (2 * MIB),
        "{fstype} {how:?}: B's stores took {} resolved faults, fewer than B's folios",
        after.fault_marked - before.fault_marked,
    );
    assert_eq!(
        missed(&set, ib, &pb),
        Vec::<u64>::new(),
        "{fstype} {how:?}: stores into B through A's old address were not marked in B"
    );
    // SAFETY: the mapping at x is the test's own and is not used after.
    unsafe { libc::munmap(x as *mut libc::c_void, LEN as usize) };
}

#[test]
fn remap_fixed_xfs() {
    replaced("xfs", Replace::Fixed);
}

#[test]
fn remap_mremap_xfs() {
    replaced("xfs", Replace::Mremap);
}

#[test]
fn remap_fixed_ext4() {
    replaced("ext4", Replace::Fixed);
}

#[test]
fn remap_mremap_ext4() {
    replaced("ext4", Replace::Mremap);
}

/// Which processes count as mappers (only their write faults are looked at): mapping a file
/// of the volume opened read-only does not make one (no store can go through it), opening it
/// for writing does, and exec forgets it (no mapping survives exec; the children a node or
/// the benchmark spawns inherit its mappings only until they exec).
#[test]
fn mappers_are_writers_until_exec() {
    use std::io::{BufRead, BufReader};
    use std::process::{Command, Stdio};
    let _serial = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    if !can_run("tracker_remap mappers") {
        return;
    }
    const SCRIPT: &str = r#"
import mmap, os, sys
ro = os.open(sys.argv[1], os.O_RDONLY)
m1 = mmap.mmap(ro, 1 << 20, mmap.MAP_SHARED, mmap.PROT_READ)
print(os.getpid(), flush=True)
sys.stdin.readline()
rw = os.open(sys.argv[1], os.O_RDWR)
m2 = mmap.mmap(rw, 1 << 20)
print("rw", flush=True)
sys.stdin.readline()
os.execv("/bin/sleep", ["sleep", "30"])
"#;
    let fs = LoopFs::new("xfs", 512).expect("loop fs");
    let path = fs.path("db");
    std::fs::write(&path, vec![1u8; 1 << 20]).unwrap();
    let mount = Mount::at(&fs.mnt).unwrap();
    let tracker = Tracker::start(&mount, Limits::for_volume_bytes(512 * MIB)).unwrap();
    let mut child = Command::new("python3")
        .args(["-c", SCRIPT])
        .arg(&path)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut out = BufReader::new(child.stdout.take().unwrap());
    let mut line = String::new();
    out.read_line(&mut line).unwrap();
    let pid: u32 = line.trim().parse().unwrap();
    assert!(
        !tracker.is_mapper(pid),
        "a read-only mapping made process {pid} a mapper"
    );
    writeln!(child.stdin.as_mut().unwrap()).unwrap();
    line.clear();
    out.read_line(&mut line).unwrap();
    assert_eq!(line.trim(), "rw");
    assert!(
        tracker.is_mapper(pid),
        "a writable shared mapping did not make {pid} a mapper"
    );
    writeln!(child.stdin.as_mut().unwrap()).unwrap();
    let t0 = std::time::Instant::now();
    while std::fs::read_to_string(format!("/proc/{pid}/comm")).unwrap_or_default() != "sleep\n" {
        assert!(t0.elapsed().as_secs() < 30, "the child never exec'd sleep");
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    assert!(
        !tracker.is_mapper(pid),
        "process {pid} exec'd sleep and still counts as a mapper"
    );
    let _ = child.kill();
    let _ = child.wait();
}
