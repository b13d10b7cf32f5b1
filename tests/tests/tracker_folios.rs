//! Large folios and PMD mappings: stores through a shared mapping whose pages sit in 2 MiB
//! folios, on ext4, xfs and btrfs.
//!
//! The file is written with 2 MiB buffered writes, so the page cache holds 2 MiB folios, and a
//! separate single-threaded process maps it shared and reads every page, so that ext4 and xfs
//! map those folios with PMDs (`FilePmdMapped` in its smaps, asserted: a workload that never
//! builds the condition would prove nothing). Between cuts it stores into one page of a folio,
//! then into other pages of the same folio, the way LMDB and MDBX reuse pages, and into pages
//! of folios it stored into before the last cut. After a PMD write-protect fault the kernel
//! maps the whole folio writable again: later stores fault no more, so every changed byte must
//! already lie in a marked extent.
//!
//! With THP disabled for the mapping process (started through `btm-agent exec`, which sets
//! `PR_SET_THP_DISABLE`) the folios are PTE-mapped, write-protect faults are per page again, and the
//! marks must come back to 4 KiB.
use std::{
    collections::BTreeSet,
    fs::File,
    io::{BufRead, BufReader, Write},
    os::unix::fs::MetadataExt,
    path::Path,
    process::{Child, Stdio},
};

use btm_agent::{
    tracker::{DirtySet, Limits, Tracker},
    volume::{Frozen, Mount},
};
use btm_tests::{LoopFs, Rng, can_run, missed, python3};

const MIB: u64 = 1 << 20;
const FOLIO: u64 = 2 * MIB;
const FILE_SIZE: u64 = 16 * MIB;
const PAGES_PER_FOLIO: u64 = FOLIO / 4096;

/// The mapping process: `ready <FilePmdMapped kB> <address of the mapping>` once every page
/// is mapped, then for each command line `ok <FilePmdMapped kB>`: `s OFF...` flips one byte at
/// each offset through the mapping, `w OFF...` through pwrite, `p OFF LEN` populates the
/// range writable (`MADV_POPULATE_WRITE`).
const MAPPER: &str = r#"
import ctypes, mmap, os, sys
path, size, nothp = sys.argv[1], int(sys.argv[2]), sys.argv[3] == "1"
if nothp and "THP_enabled:\t0" not in open("/proc/self/status").read():
    sys.exit("THP is not disabled for this process")
fd = os.open(path, os.O_RDWR)
m = mmap.mmap(fd, size)
addr = ctypes.addressof(ctypes.c_char.from_buffer(m))
def pmd_kb():
    inside = False
    for line in open("/proc/self/smaps"):
        head = line.split()[0]
        if "-" in head and not head.endswith(":"):
            inside = int(head.split("-")[0], 16) == addr
        elif inside and head == "FilePmdMapped:":
            return int(line.split()[1])
    return 0
s = 0
for p in range(0, size, 4096):
    s += m[p]
print("ready", pmd_kb(), addr, flush=True)
for line in sys.stdin:
    cmd, *args = line.split()
    args = [int(a) for a in args]
    if cmd == "s":
        for o in args:
            m[o] = m[o] ^ 0xff
    elif cmd == "w":
        for o in args:
            os.pwrite(fd, bytes([m[o] ^ 0xff]), o)
    elif cmd == "p":
        m.madvise(23, args[0], args[1])
    elif cmd == "populate":  # a second mapping, MAP_POPULATE, stored through
        m2 = mmap.mmap(fd, size, flags=mmap.MAP_SHARED | mmap.MAP_POPULATE)
        m2[args[0]] = m2[args[0]] ^ 0xff
        m2.close()
    elif cmd == "mlock":
        base = (addr + args[0]) & ~4095
        assert ctypes.CDLL(None).mlock(ctypes.c_void_p(base), 4096) == 0
        m[args[0]] = m[args[0]] ^ 0xff
    elif cmd == "fork":  # the child stores
        pid = os.fork()
        if pid == 0:
            m[args[0]] = m[args[0]] ^ 0xff
            os._exit(0)
        os.waitpid(pid, 0)
    elif cmd == "pipe":  # the kernel copies into the mapping (a kernel-mode write fault)
        r, w = os.pipe()
        os.write(w, bytes([m[args[0]] ^ 0xff]))
        os.readv(r, [memoryview(m)[args[0]:args[0] + 1]])
        os.close(r)
        os.close(w)
    elif cmd == "mremap":  # a mapping moved elsewhere, then stored through
        c = ctypes.CDLL(None)
        c.mmap.restype = c.mremap.restype = ctypes.c_void_p
        c.mmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t] + [ctypes.c_int] * 3 + [ctypes.c_long]
        c.mremap.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_size_t, ctypes.c_int, ctypes.c_void_p]
        a = c.mmap(None, size, 3, 1, fd, 0)  # PROT_READ|PROT_WRITE, MAP_SHARED
        ctypes.string_at(a + (args[0] & ~4095), 1)  # fault the page in
        hole = c.mmap(None, size, 0, 0x22, -1, 0)  # PROT_NONE, MAP_PRIVATE|MAP_ANONYMOUS
        b = c.mremap(a, size, size, 3, hole)  # MREMAP_MAYMOVE|MREMAP_FIXED
        assert b == hole
        v = ctypes.c_ubyte.from_address(b + args[0])
        v.value ^= 0xff
        c.munmap(ctypes.c_void_p(b), ctypes.c_size_t(size))
    elif cmd == "dio":  # an O_DIRECT read into a page of the mapping
        src = os.open(os.path.join(os.path.dirname(path), "dio-src"), os.O_RDONLY | os.O_DIRECT)
        page = args[0] & ~4095
        assert os.preadv(src, [memoryview(m)[page:page + 4096]], 0) == 4096
        os.close(src)
    print("ok", pmd_kb(), flush=True)
"#;

struct Mapper {
    child: Child,
    out: BufReader<std::process::ChildStdout>,
    /// `FilePmdMapped` of the mapping, in kB, after the last command.
    pmd_kb: u64,
    /// Where the mapping starts in the mapper's address space.
    addr: u64,
}

impl Mapper {
    /// With `thp_disabled`, started the way a node would be: `btm-agent exec -- python3 ...`.
    fn spawn(path: &Path, thp_disabled: bool) -> Mapper {
        let mut child = python3(thp_disabled)
            .args(["-c", MAPPER])
            .arg(path)
            .arg(FILE_SIZE.to_string())
            .arg(if thp_disabled { "1" } else { "0" })
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .expect("python3");
        let out = BufReader::new(child.stdout.take().unwrap());
        let mut m = Mapper {
            child,
            out,
            pmd_kb: 0,
            addr: 0,
        };
        let ready = m.answer("ready");
        (m.pmd_kb, m.addr) = (ready[0], ready[1]);
        m
    }

    fn answer(&mut self, word: &str) -> Vec<u64> {
        let mut line = String::new();
        self.out.read_line(&mut line).unwrap();
        let mut it = line.split_whitespace();
        assert_eq!(it.next(), Some(word), "mapper said {line:?}");
        it.map(|v| v.parse().unwrap()).collect()
    }

    fn command(&mut self, cmd: &str, args: &[u64]) {
        let args: Vec<String> = args.iter().map(u64::to_string).collect();
        let stdin = self.child.stdin.as_mut().unwrap();
        writeln!(stdin, "{cmd} {}", args.join(" ")).unwrap();
        self.pmd_kb = self.answer("ok")[0];
    }

    /// Flips one byte at each offset through the mapping, in order.
    fn store(&mut self, offsets: &[u64]) {
        self.command("s", offsets);
    }
}

impl Drop for Mapper {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A cut as the cutter makes it: freeze (writeback), flip and drain, thaw; partial folios
/// widened when a write fault could not be resolved, or a write took no fault, meanwhile.
fn cut(tracker: &mut Tracker, mnt: &Path, seen: &mut (u64, u64)) -> DirtySet {
    let frozen = Frozen::freeze(mnt).expect("freeze");
    let st = tracker.stats().unwrap();
    let mut set = tracker.take().expect("drain");
    frozen.thaw().expect("thaw");
    let now = (st.fault_unresolved, st.remote_writes);
    if now.0 > seen.0 || now.1 > seen.1 || st.mem_opens > 0 {
        set.widen_to_folios();
    }
    *seen = now;
    set
}

fn seen(tracker: &Tracker) -> (u64, u64) {
    let st = tracker.stats().unwrap();
    (st.fault_unresolved, st.remote_writes)
}

/// A volume holding one 16 MiB file written in 2 MiB writes (its last 2 MiB in 4 KiB writes,
/// so 4 KiB folios), tracked.
fn volume(fstype: &str, rng: &mut Rng) -> (LoopFs, Tracker, std::path::PathBuf, u64) {
    let fs = LoopFs::new(fstype, 512).expect("loop fs");
    let mount = Mount::at(&fs.mnt).unwrap();
    let tracker = Tracker::start(&mount, Limits::for_volume_bytes(512 * MIB)).unwrap();
    let path = fs.path("state.mdb");
    let mut f = File::create(&path).unwrap();
    for _ in 0..FILE_SIZE / FOLIO - 1 {
        f.write_all(&rng.bytes(FOLIO as usize)).unwrap();
    }
    for _ in 0..PAGES_PER_FOLIO {
        f.write_all(&rng.bytes(4096)).unwrap();
    }
    f.sync_all().unwrap();
    let ino = std::fs::metadata(&path).unwrap().ino();
    (fs, tracker, path, ino)
}

/// One filesystem at a time (see tracker_matrix.rs: concurrent trackers make lookups busy).
static ONE_AT_A_TIME: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// Returns the amplification: bytes marked / bytes of the pages stored into.
fn folio_stores(fstype: &str, thp_disabled: bool) -> f64 {
    let _serial = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let mut rng = Rng(0x2f01_10e5 ^ fstype.len() as u64 ^ thp_disabled as u64);
    let (fs, mut tracker, path, ino) = volume(fstype, &mut rng);
    let mut mapper = Mapper::spawn(&path, thp_disabled);
    let what = format!(
        "{fstype}{}",
        if thp_disabled { " (THP disabled)" } else { "" }
    );
    eprintln!("{what}: FilePmdMapped {} kB after mapping", mapper.pmd_kb);
    if thp_disabled {
        assert_eq!(
            mapper.pmd_kb, 0,
            "{what}: PMD mappings despite THP disabled"
        );
    } else if fstype != "btrfs" {
        // The condition this test exists for: ext4 and xfs PMD-map 2 MiB file folios.
        assert!(
            mapper.pmd_kb >= 4096,
            "{what}: the mapping holds no PMD-mapped folios ({} kB): this test would prove nothing",
            mapper.pmd_kb
        );
    }
    let mut unresolved = seen(&tracker);
    cut(&mut tracker, &fs.mnt, &mut unresolved);

    let mut failures = Vec::new();
    let (mut marked, mut stored) = (0u64, 0u64);
    let mut last_round: Vec<u64> = Vec::new();
    for round in 0..6 {
        let mut offsets = Vec::new();
        let mut pages = BTreeSet::new();
        // One store opens each folio (the write-protect fault), then more pages of it.
        let folios: Vec<u64> = (0..3).map(|_| rng.below(FILE_SIZE / FOLIO)).collect();
        for pass in 0..6 {
            for &f in &folios {
                let page = f * PAGES_PER_FOLIO + rng.below(PAGES_PER_FOLIO);
                offsets.push(page * 4096 + pass * 8 + rng.below(4000));
            }
        }
        // Pages of folios stored into before the last cut.
        for &p in last_round.iter().take(4) {
            offsets.push((p ^ 1) * 4096 + 100);
        }
        for &o in &offsets {
            pages.insert(o / 4096);
        }
        mapper.store(&offsets);
        let set = cut(&mut tracker, &fs.mnt, &mut unresolved);
        let miss = missed(&set, ino, &pages);
        if !miss.is_empty() {
            failures.push(format!(
                "{what} round {round}: {} of {} stored pages not marked (first {:?}); \
                 FilePmdMapped {} kB",
                miss.len(),
                pages.len(),
                &miss[..miss.len().min(4)],
                mapper.pmd_kb
            ));
        }
        marked += set.files.get(&ino).map_or(0, |f| f.block_bytes());
        stored += pages.len() as u64 * 4096;
        last_round = pages.into_iter().collect();
    }
    let stats = tracker.stats().unwrap();
    let amp = marked as f64 / stored as f64;
    eprintln!(
        "{what}: amplification {amp:.2}; FilePmdMapped {} kB at the end; {stats:?}",
        mapper.pmd_kb
    );
    assert!(failures.is_empty(), "{}", failures.join("\n"));
    assert_eq!(stats.lost, 0, "{what}: tracker lost events");
    if mapper.pmd_kb > 0 {
        // The PMD path ran: write-protect faults on PMD-mapped folios were marked whole.
        assert!(
            stats.fault_wide > 0,
            "{what}: no fault was widened to its folio"
        );
    }
    if thp_disabled {
        // Without the measured bit every 2 MiB-aligned mapping would be marked per folio.
        assert!(
            tracker.thp_off_bit.is_some(),
            "{what}: the PR_SET_THP_DISABLE bit of mm flags was not measured"
        );
    }
    amp
}

/// Every other way into a mapped page, each into a folio already dirty with only part of it
/// marked (a pwrite first), so that no folio event fires: writes that take no fault the fault
/// probes see (the kernel faults the pages in through get_user_pages: MADV_POPULATE_WRITE,
/// process_vm_writev, ptrace pokes, O_DIRECT reads into the mapping), and stores that do fault
/// after MAP_POPULATE, mlock, mremap, in a forked child, or by the kernel copying into the
/// mapping.
fn faultless_writes(fstype: &str, thp_disabled: bool) {
    let _serial = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let mut rng = Rng(0x7e40_11e5 ^ fstype.len() as u64);
    let (fs, mut tracker, path, ino) = volume(fstype, &mut rng);
    let mut mapper = Mapper::spawn(&path, thp_disabled);
    let pid = mapper.child.id() as libc::pid_t;
    let mut seen_now = seen(&tracker);
    cut(&mut tracker, &fs.mnt, &mut seen_now);
    std::fs::write(fs.path("dio-src"), rng.bytes(8192)).unwrap();
    let mut proc_mem: Option<std::fs::File> = None;
    let mut failures = Vec::new();
    for (i, how) in [
        "MADV_POPULATE_WRITE",
        "process_vm_writev",
        "ptrace",
        "dio",
        "populate",
        "mlock",
        "fork",
        "pipe",
        "mremap",
        "proc_mem",
        "proc_mem",
    ]
    .into_iter()
    .enumerate()
    {
        let folio = (i as u64 % (FILE_SIZE / FOLIO - 1)) * FOLIO;
        let (first, target) = (folio + 3 * 4096 + 5, folio + 100 * 4096 + 8);
        mapper.command("w", &[first]);
        match how {
            "MADV_POPULATE_WRITE" => {
                mapper.command("p", &[folio, FOLIO]);
                mapper.store(&[target]);
            }
            "process_vm_writev" => {
                let byte = [0xa5u8];
                let local = libc::iovec {
                    iov_base: byte.as_ptr() as *mut _,
                    iov_len: 1,
                };
                let remote = libc::iovec {
                    iov_base: (mapper.addr + target) as *mut _,
                    iov_len: 1,
                };
                // SAFETY: valid iovecs; the remote one is inside the mapper's mapping.
                let n = unsafe { libc::process_vm_writev(pid, &local, 1, &remote, 1, 0) };
                assert_eq!(
                    n,
                    1,
                    "process_vm_writev: {}",
                    std::io::Error::last_os_error()
                );
            }
            "ptrace" => poke(pid, mapper.addr + target),
            "proc_mem" => {
                // Through /proc/PID/mem, twice: the second in a later cut, the file still open.
                use std::os::unix::fs::FileExt;
                let mem = proc_mem.get_or_insert_with(|| {
                    std::fs::OpenOptions::new()
                        .read(true)
                        .write(true)
                        .open(format!("/proc/{pid}/mem"))
                        .unwrap()
                });
                mem.write_all_at(&[0x5a], mapper.addr + target).unwrap();
            }
            other => mapper.command(other, &[target]),
        }
        let set = cut(&mut tracker, &fs.mnt, &mut seen_now);
        let pages: BTreeSet<u64> = [first / 4096, target / 4096].into();
        let miss = missed(&set, ino, &pages);
        if !miss.is_empty() {
            failures.push(format!("{fstype}/{how}: pages {miss:?} not marked"));
        }
    }
    // A pwrite's precise range must not outlive its epoch: the page written just before a
    // cut and again right after it, through MADV_POPULATE_WRITE (no fault event), in a 4 KiB
    // folio (so no partial-folio record can rescue it), must be marked again.
    let page = FILE_SIZE - FOLIO + 9 * 4096;
    mapper.command("w", &[page + 3]);
    cut(&mut tracker, &fs.mnt, &mut seen_now);
    mapper.command("p", &[page, 4096]);
    mapper.store(&[page + 4]);
    let set = cut(&mut tracker, &fs.mnt, &mut seen_now);
    if !missed(&set, ino, &[page / 4096].into()).is_empty() {
        failures.push(format!(
            "{fstype}: page {} written again after a cut not marked",
            page / 4096
        ));
    }
    let stats = tracker.stats().unwrap();
    eprintln!("{fstype} faultless writes: {stats:?}");
    assert!(failures.is_empty(), "{}", failures.join("\n"));
    assert!(
        stats.remote_writes >= 4,
        "{fstype}: calls not counted: {stats:?}"
    );
}

/// Flips the byte at `addr` of process `pid` with ptrace (attach, peek, poke, detach).
fn poke(pid: libc::pid_t, addr: u64) {
    let word = (addr & !7) as *mut libc::c_void;
    // SAFETY: ptrace on our own child; the address is inside its mapping.
    unsafe {
        assert_eq!(
            libc::ptrace(libc::PTRACE_ATTACH, pid, 0, 0),
            0,
            "PTRACE_ATTACH"
        );
        let mut status = 0;
        libc::waitpid(pid, &mut status, 0);
        *libc::__errno_location() = 0;
        let v = libc::ptrace(libc::PTRACE_PEEKDATA, pid, word, 0);
        assert_eq!(*libc::__errno_location(), 0, "PTRACE_PEEKDATA");
        let shift = (addr & 7) * 8;
        let r = libc::ptrace(libc::PTRACE_POKEDATA, pid, word, v ^ (0xff << shift));
        assert_eq!(r, 0, "PTRACE_POKEDATA");
        libc::ptrace(libc::PTRACE_DETACH, pid, 0, 0);
    }
}

fn folios(fstype: &str) {
    if !can_run(&format!("large-folio mmap stores on {fstype}")) {
        return;
    }
    faultless_writes(fstype, true);
    faultless_writes(fstype, false);
    folio_stores(fstype, false);
    let amp = folio_stores(fstype, true);
    // PTE-mapped: each write-protect fault makes one page writable, so marks are 4 KiB.
    assert!(
        amp <= 1.25,
        "{fstype} with THP disabled: amplification {amp:.2} > 1.25"
    );
}

#[test]
fn folio_stores_ext4() {
    folios("ext4");
}

#[test]
fn folio_stores_xfs() {
    folios("xfs");
}

#[test]
fn folio_stores_btrfs() {
    folios("btrfs");
}
