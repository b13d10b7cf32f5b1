//! What the log's folded state costs per file and per piece (issue 14: bounded agent memory).
//!
//! `state_mem build DIR [FILES] [PIECES [shuffled]]` writes a log through the real [`Log`] API:
//! FILES files of one 4 KiB piece each (1,000 per directory, heights of 100,000 files), then one
//! file of PIECES 4 KiB pieces (in offset order, or shuffled), then a height of PIECES/100 writes
//! half a block off (each splits a piece in the middle of the map).
//! `state_mem compact DIR [HEIGHTS [all]]` appends HEIGHTS small heights, drops all but the
//! last (with `all`, the built heights too) and compacts, reporting the heap compaction adds at
//! its peak.
//! `state_mem measure DIR` opens it and reports the heap the folded state takes (a counting
//! allocator: bytes asked for, allocations, plus VmRSS/VmHWM from /proc), the time to open the
//! log, fold it, and append one more small height. The log's format does not depend on the
//! state's layout, so one log built once serves every version of the state being compared.
//!
//! Run with `--release`: `cargo run --release -p btm-log --example state_mem -- build /tmp/l`.

use std::alloc::{GlobalAlloc, Layout, System};
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Instant;

use btm_log::{
    CutRecord, Entry, ExtentBytes, ExtentData, FileState, Log, LogOptions, Node, NsOp, PayloadRef,
    Piece, RelPath,
};

/// The system allocator, counting live bytes and allocations.
struct Counting;

static LIVE: AtomicUsize = AtomicUsize::new(0);
static ALLOCS: AtomicUsize = AtomicUsize::new(0);
/// The most `LIVE` reached since the last [`reset_peak`].
static PEAK: AtomicUsize = AtomicUsize::new(0);

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, l: Layout) -> *mut u8 {
        let live = LIVE.fetch_add(l.size(), Ordering::Relaxed) + l.size();
        PEAK.fetch_max(live, Ordering::Relaxed);
        ALLOCS.fetch_add(1, Ordering::Relaxed);
        // SAFETY: forwarded unchanged.
        unsafe { System.alloc(l) }
    }
    unsafe fn dealloc(&self, p: *mut u8, l: Layout) {
        LIVE.fetch_sub(l.size(), Ordering::Relaxed);
        ALLOCS.fetch_sub(1, Ordering::Relaxed);
        // SAFETY: forwarded unchanged.
        unsafe { System.dealloc(p, l) }
    }
    unsafe fn realloc(&self, p: *mut u8, l: Layout, new: usize) -> *mut u8 {
        let live = LIVE.fetch_add(new, Ordering::Relaxed) + new;
        PEAK.fetch_max(live, Ordering::Relaxed);
        LIVE.fetch_sub(l.size(), Ordering::Relaxed);
        // SAFETY: forwarded unchanged.
        unsafe { System.realloc(p, l, new) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

const BLOCK: usize = 4096;
const PER_DIR: u64 = 1000;
const PER_HEIGHT: u64 = 100_000;
/// The many-pieces file's id (files are 1..=FILES).
const BIG: u64 = u64::MAX / 2;

fn heap() -> (usize, usize) {
    (LIVE.load(Ordering::Relaxed), ALLOCS.load(Ordering::Relaxed))
}

fn reset_peak() {
    PEAK.store(LIVE.load(Ordering::Relaxed), Ordering::Relaxed);
}

fn dir_op(path: &[u8]) -> NsOp {
    NsOp::Put {
        path: path.to_vec(),
        entry: Entry::Dir {
            mode: 0o755,
            uid: 0,
            gid: 0,
        },
    }
}

fn file_op(path: &[u8], id: u64) -> NsOp {
    NsOp::Put {
        path: path.to_vec(),
        entry: Entry::File {
            id,
            mode: 0o644,
            uid: 0,
            gid: 0,
        },
    }
}

/// 4 KiB that differ from every other block written here (so no two payloads dedupe).
fn block(tag: u64) -> Vec<u8> {
    let mut b = vec![0u8; BLOCK];
    b[..8].copy_from_slice(&tag.to_le_bytes());
    b
}

fn build(dir: &Path, files: u64, pieces: u64, shuffled: bool) {
    let opts = LogOptions {
        compress_threads: 2,
        ..LogOptions::default()
    };
    let mut log = Log::open_append_with(dir, opts).expect("open");
    let mut height = 1;
    let t = Instant::now();
    let mut id = 1;
    while id <= files {
        let mut ops = if height == 1 {
            vec![dir_op(b"chaindata")]
        } else {
            Vec::new()
        };
        let mut extents = Vec::new();
        let end = (id + PER_HEIGHT).min(files + 1);
        for i in id..end {
            let d = (i - 1) / PER_DIR;
            if (i - 1) % PER_DIR == 0 {
                ops.push(dir_op(format!("chaindata/d{d:04}").as_bytes()));
            }
            let path = format!("chaindata/d{d:04}/{:06}.ldb", (i - 1) % PER_DIR);
            ops.push(file_op(path.as_bytes(), i));
            ops.push(NsOp::SetSize {
                id: i,
                size: BLOCK as u64,
            });
            extents.push(ExtentData {
                id: i,
                offset: 0,
                bytes: ExtentBytes::Data(block(i)),
            });
        }
        log.append(CutRecord {
            height,
            time_unix_ms: height,
            ops,
            extents,
        })
        .expect("append files");
        height += 1;
        id = end;
    }
    eprintln!("{files} files in {} heights: {:?}", height - 1, t.elapsed());
    if pieces > 0 {
        // One file of `pieces` 4 KiB pieces, then a height of scattered writes half a block
        // off, each splitting a piece in the middle of the map.
        let t = Instant::now();
        let mut d = log.begin(height).expect("begin");
        let mut ops = if files == 0 {
            vec![dir_op(b"chaindata")]
        } else {
            Vec::new()
        };
        ops.extend([
            file_op(b"chaindata/state.mdbx", BIG),
            NsOp::SetSize {
                id: BIG,
                size: pieces * BLOCK as u64,
            },
        ]);
        d.sizes_from(&ops);
        // In offset order, or (`shuffled`) in an order that jumps around the file.
        let step = (pieces * 5 / 8..)
            .find(|&s| gcd(s, pieces) == 1)
            .unwrap_or(1);
        for k in 0..pieces {
            let slot = if shuffled { k * step % pieces } else { k };
            d.extent(ExtentData {
                id: BIG,
                offset: slot * BLOCK as u64,
                bytes: ExtentBytes::Data(block(BIG - slot)),
            })
            .expect("extent");
        }
        d.commit(height, ops).expect("commit");
        eprintln!("1 file of {pieces} pieces: {:?}", t.elapsed());
        height += 1;
        let t = Instant::now();
        let mut d = log.begin(height).expect("begin");
        let writes = (pieces / 100).max(1);
        for k in 0..writes {
            d.extent(ExtentData {
                id: BIG,
                offset: k * (pieces / writes) * BLOCK as u64 + BLOCK as u64 / 2,
                bytes: ExtentBytes::Data(block(BIG / 2 - k)),
            })
            .expect("extent");
        }
        d.commit(height, Vec::new()).expect("commit");
        eprintln!("{writes} scattered writes into it: {:?}", t.elapsed());
    }
}

fn gcd(a: u64, b: u64) -> u64 {
    if b == 0 { a } else { gcd(b, a % b) }
}

fn report(what: &str, before: (usize, usize), after: (usize, usize), n: u64) {
    let bytes = after.0 as i64 - before.0 as i64;
    let allocs = after.1 as i64 - before.1 as i64;
    println!(
        "{what}: {:.1} MiB in {allocs} allocations: {:.0} B per {} (+16 B malloc header per allocation: {:.0} B)",
        bytes as f64 / (1 << 20) as f64,
        bytes as f64 / n as f64,
        if n > 1 { "unit" } else { "state" },
        (bytes + 16 * allocs) as f64 / n as f64,
    );
}

fn measure(dir: &Path) {
    use std::mem::size_of;
    println!(
        "size_of: PayloadRef {}, Piece {}, (u64, Piece) {}, pieces {}, FileState {}, Node {}, (RelPath, Node) {}",
        size_of::<PayloadRef>(),
        size_of::<Piece>(),
        size_of::<(u64, Piece)>(),
        size_of::<FileState>() - 24, // mode, uid, gid, nlink, size: the rest is the pieces
        size_of::<FileState>(),
        size_of::<Node>(),
        size_of::<(RelPath, Node)>(),
    );
    let t = Instant::now();
    let log = Log::open_read(dir).expect("open");
    println!(
        "open_read: {:?} ({} records)",
        t.elapsed(),
        log.record_count()
    );
    let last = log.last_height().expect("a height");
    let h0 = heap();
    let rss0 = btm_testkit::self_status_kib("VmRSS:");
    let t = Instant::now();
    let st = log.state_at(last).expect("fold");
    let fold = t.elapsed();
    let h1 = heap();
    let rss1 = btm_testkit::self_status_kib("VmRSS:");
    let big = st.file(BIG).map_or(0, |f| f.pieces.len() as u64);
    let files = st.files.len() as u64 - u64::from(big > 0);
    println!(
        "fold to height {last}: {fold:?}; {files} small files, {big} pieces in the big file, {} paths",
        st.nodes.len()
    );
    report("whole state", h0, h1, 1);
    println!(
        "VmRSS grew {:.1} MiB for the state",
        (rss1 as f64 - rss0 as f64) / 1024.0
    );
    // What each part frees when dropped: the parts as the fold built them.
    let mut st = st;
    let h2 = heap();
    drop(std::mem::take(&mut st.nodes));
    let h3 = heap();
    report("  nodes (paths) per small file", h3, h2, files.max(1));
    if let Some(f) = st.files.remove(&BIG) {
        let h4 = heap();
        drop(f);
        let h5 = heap();
        report("  the big file per piece", h5, h4, big.max(1));
    }
    let h6 = heap();
    drop(std::mem::take(&mut st.files));
    let h7 = heap();
    report(
        "  files (inodes, pieces) per small file",
        h7,
        h6,
        files.max(1),
    );
    drop(st);
    println!(
        "VmHWM {} MiB",
        btm_testkit::self_status_kib("VmHWM:") / 1024
    );
    drop(log);

    let ha = heap();
    let t = Instant::now();
    let mut log = Log::open_append(dir).expect("open append");
    let open = t.elapsed();
    let h8 = heap();
    report("  open_append (record index, dedup index)", ha, h8, 1);
    // An empty height: the first begin folds the tip, which the log then keeps (a draft
    // dropped uncommitted would throw it away).
    let t = Instant::now();
    let d = log.begin(last + 1).expect("begin");
    let begin = t.elapsed();
    d.commit(last + 1, Vec::new()).expect("commit");
    let h9 = heap();
    println!("open_append: {open:?}; first begin (folds the tip): {begin:?}");
    report("  tip state held by the log", h8, h9, 1);
    let last = last + 1;
    // One more height: one small file and one block in the middle of the big file change.
    let t = Instant::now();
    let mut d = log.begin(last + 1).expect("begin");
    d.extent(ExtentData {
        id: 1,
        offset: 0,
        bytes: ExtentBytes::Data(block(u64::MAX - last)),
    })
    .expect("extent");
    if big > 0 {
        d.extent(ExtentData {
            id: BIG,
            offset: big / 2 * BLOCK as u64 + 512,
            bytes: ExtentBytes::Data(block(u64::MAX / 4 - last)),
        })
        .expect("extent");
    }
    d.commit(last + 1, Vec::new()).expect("commit");
    println!("append one small height to the open log: {:?}", t.elapsed());
    println!(
        "VmHWM {} MiB",
        btm_testkit::self_status_kib("VmHWM:") / 1024
    );
}

/// Appends `n` small heights (one block of a small file and one of the big file each), marks
/// all but the last dropped, and compacts: the heap compaction adds at its peak, and its time.
fn compact(dir: &Path, n: u64, all: bool) {
    let mut log = Log::open_append(dir).expect("open append");
    let first = log.last_height().expect("a height") + 1;
    let big = log.tip().expect("tip").file(BIG).map(|f| f.size);
    for h in first..first + n {
        let mut d = log.begin(h).expect("begin");
        d.extent(ExtentData {
            id: h - first + 1,
            offset: 0,
            bytes: ExtentBytes::Data(block(u64::MAX - h)),
        })
        .expect("extent");
        if let Some(size) = big {
            d.extent(ExtentData {
                id: BIG,
                offset: (h * 7919 * BLOCK as u64) % size,
                bytes: ExtentBytes::Data(block(u64::MAX / 3 - h)),
            })
            .expect("extent");
        }
        d.commit(h, Vec::new()).expect("commit");
    }
    // `all`: the built heights too, so that the run holds the baseline of every file.
    let from = if all { 1 } else { first };
    let dropped: Vec<u64> = (from..first + n - 1).collect();
    btm_log::record_dropped(dir, &dropped).expect("drop");
    drop(log);
    let log = Log::open_append(dir).expect("open append");
    let before = heap().0;
    reset_peak();
    let t = Instant::now();
    let (log, rep) = log.compact().expect("compact");
    println!(
        "compact {} dropped heights: {:?}, peak heap +{:.1} MiB over the open log ({:.1} MiB); {rep:?}",
        dropped.len(),
        t.elapsed(),
        (PEAK.load(Ordering::Relaxed) - before) as f64 / (1 << 20) as f64,
        before as f64 / (1 << 20) as f64,
    );
    drop(log);
    println!(
        "VmHWM {} MiB",
        btm_testkit::self_status_kib("VmHWM:") / 1024
    );
}

/// `verify DIR`: the heap `Log::verify` takes over the open log.
fn verify(dir: &Path) {
    let log = Log::open_read(dir).expect("open");
    let before = heap().0;
    reset_peak();
    let t = Instant::now();
    let rep = log.verify().expect("verify");
    println!(
        "verify {:?}: {} payloads, peak heap +{:.1} MiB over the open log ({:.1} MiB)",
        t.elapsed(),
        rep.payloads,
        (PEAK.load(Ordering::Relaxed) - before) as f64 / (1 << 20) as f64,
        before as f64 / (1 << 20) as f64,
    );
    println!(
        "VmHWM {} MiB",
        btm_testkit::self_status_kib("VmHWM:") / 1024
    );
}

fn main() {
    let a: Vec<String> = std::env::args().collect();
    let arg = |i: usize, d: u64| a.get(i).map_or(d, |s| s.parse().expect("a number"));
    match a.get(1).map(String::as_str) {
        Some("build") => build(
            Path::new(&a[2]),
            arg(3, 1_000_000),
            arg(4, 1_000_000),
            a.get(5).is_some_and(|s| s == "shuffled"),
        ),
        Some("measure") => measure(Path::new(&a[2])),
        Some("verify") => verify(Path::new(&a[2])),
        Some("compact") => compact(
            Path::new(&a[2]),
            arg(3, 6),
            a.get(4).is_some_and(|s| s == "all"),
        ),
        _ => eprintln!(
            "usage: state_mem build DIR [FILES] [PIECES [shuffled]] | state_mem measure DIR | state_mem verify DIR | state_mem compact DIR [HEIGHTS [all]]"
        ),
    }
}
