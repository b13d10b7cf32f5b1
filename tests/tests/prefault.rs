//! Blind stores through a shared mapping cost what they change once the agent has
//! read-faulted the node's mapping (btm-agent/src/tracker/prefault.rs).
//!
//! The file is written in 1 MiB writes, so its page cache holds large folios. A separate
//! process maps it shared and stores into pages it never touched (no read first, the way
//! LMDB and MDBX write new pages). On this kernel a not-present write fault maps the page's
//! whole folio writable, so without the prefault the tracker must mark whole folios: asserted
//! (read amplification above 4), or this test would prove nothing. With it, the agent has
//! mapped every resident page read-only in the mapper after the baseline (asserted from the
//! mapper's /proc/PID/pagemap, the kernel's own account), each store is a per-page
//! write-protect fault, and the next height reads at most 1.25 times what changed. Both
//! heights replay exactly.
use std::{
    collections::BTreeSet,
    fs::File,
    io::{BufRead, BufReader, Read, Write},
    os::unix::{fs::FileExt, net::UnixStream},
    path::Path,
    process::{Child, Stdio},
    time::{Duration, Instant},
};

use btm_tests::{LoopFs, Rng, agent_status, assert_replay_equals, can_run, start_agent, workdir};

const MIB: u64 = 1 << 20;
const FILE_SIZE: u64 = 64 * MIB;
const PAGE: u64 = 4096;
const STORES: usize = 200;

/// Maps the file shared, prints its address, then for each line of offsets stores one byte
/// at each without reading it first, and says "ok".
const MAPPER: &str = r#"
import mmap, os, sys, ctypes
fd = os.open(sys.argv[1], os.O_RDWR)
size = int(sys.argv[2])
m = mmap.mmap(fd, size, mmap.MAP_SHARED)
addr = ctypes.addressof(ctypes.c_char.from_buffer(m))
print("ready", addr, flush=True)
for line in sys.stdin:
    for off in map(int, line.split()):
        m[off] = (off // 4096 * 7 + 1) % 251
    print("ok", flush=True)
"#;

struct Mapper {
    child: Child,
    out: BufReader<std::process::ChildStdout>,
    addr: u64,
}

impl Mapper {
    fn spawn(path: &Path) -> Mapper {
        let mut child = std::process::Command::new("python3")
            .args(["-c", MAPPER])
            .arg(path)
            .arg(FILE_SIZE.to_string())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .expect("python3");
        let mut out = BufReader::new(child.stdout.take().unwrap());
        let mut line = String::new();
        out.read_line(&mut line).unwrap();
        let addr = line
            .strip_prefix("ready ")
            .expect(&line)
            .trim()
            .parse()
            .unwrap();
        Mapper { child, out, addr }
    }

    fn store(&mut self, offsets: &[u64]) {
        let line: Vec<String> = offsets.iter().map(u64::to_string).collect();
        writeln!(self.child.stdin.as_mut().unwrap(), "{}", line.join(" ")).unwrap();
        let mut ok = String::new();
        self.out.read_line(&mut ok).unwrap();
        assert_eq!(ok.trim(), "ok");
    }

    /// Pages of the mapping present in the mapper's page tables (pagemap bit 63).
    fn present(&self) -> u64 {
        let pm = File::open(format!("/proc/{}/pagemap", self.child.id())).unwrap();
        let mut buf = vec![0u8; (FILE_SIZE / PAGE * 8) as usize];
        pm.read_exact_at(&mut buf, self.addr / PAGE * 8).unwrap();
        buf.chunks(8)
            .filter(|e| u64::from_le_bytes((*e).try_into().unwrap()) >> 63 == 1)
            .count() as u64
    }
}

impl Drop for Mapper {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Cuts height `h` through the socket; returns the bytes the cut read.
fn snapshot(sock: &Path, h: u64) -> u64 {
    let mut s = UnixStream::connect(sock).unwrap();
    writeln!(s, r#"{{"cmd":"snapshot","height":{h}}}"#).unwrap();
    let mut reply = String::new();
    s.read_to_string(&mut reply).unwrap();
    let v: serde_json::Value = serde_json::from_str(reply.lines().next().unwrap()).unwrap();
    assert_eq!(v["ok"], true, "snapshot {h}: {v}");
    let d = &v["detail"];
    d["read_unfrozen"].as_u64().unwrap() + d["read_frozen"].as_u64().unwrap()
}

/// Stores into never-touched pages after a baseline; returns (read amplification of the
/// height, pages of the mapping present in the mapper just before the stores).
fn blind_stores(prefault: bool) -> (f64, u64) {
    let fs = LoopFs::new("xfs", 512).expect("loop fs");
    let work = workdir("btm-prefault");
    let (log, sock) = (work.path().join("log"), work.path().join("sock"));
    let path = fs.path("state.mdb");
    let mut rng = Rng(0x9f3e_0c11 ^ prefault as u64);
    let mut f = File::create(&path).unwrap();
    for _ in 0..FILE_SIZE / MIB {
        f.write_all(&rng.bytes(MIB as usize)).unwrap();
    }
    f.sync_all().unwrap();
    let extra: &[&str] = if prefault { &[] } else { &["--no-prefault"] };
    let mut agent = start_agent(&fs.mnt, &log, &sock, extra);
    let mut mapper = Mapper::spawn(&path);
    snapshot(&sock, 1);
    if prefault {
        let t0 = Instant::now();
        while agent_status(&sock)["prefault"]["passes"]
            .as_u64()
            .unwrap_or(0)
            < 1
        {
            assert!(t0.elapsed() < Duration::from_secs(60), "no prefault pass");
            std::thread::sleep(Duration::from_millis(100));
        }
    }
    let present = mapper.present();
    let mut pages = BTreeSet::new();
    while pages.len() < STORES {
        pages.insert(rng.below(FILE_SIZE / PAGE));
    }
    let offsets: Vec<u64> = pages.iter().map(|p| p * PAGE + 100).collect();
    mapper.store(&offsets);
    let read = snapshot(&sock, 2);
    assert_replay_equals(&log, 2, &fs.mnt, work.path());
    drop(mapper);
    agent.terminate();
    (read as f64 / (STORES as u64 * PAGE) as f64, present)
}

#[test]
fn prefault_makes_blind_stores_cost_what_they_change() {
    if !can_run("prefault") {
        return;
    }
    let pages = FILE_SIZE / PAGE;
    let (without, present_without) = blind_stores(false);
    assert!(
        present_without < pages / 10,
        "the mapper had {present_without} of {pages} pages mapped without the prefault"
    );
    assert!(
        without > 4.0,
        "without the prefault blind stores read only {without:.2}x what they changed: the \
         file's folios are not large, so this test exercises nothing"
    );
    let (with, present_with) = blind_stores(true);
    assert!(
        present_with >= pages * 9 / 10,
        "after the prefault pass only {present_with} of {pages} pages are mapped in the mapper"
    );
    assert!(
        with <= 1.25,
        "with the prefault the height read {with:.2}x what it changed (without: {without:.2}x)"
    );
    eprintln!("read amplification of blind stores: {without:.2}x without, {with:.2}x with");
}
