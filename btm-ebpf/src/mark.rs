//! Marking the bitmap of the current epoch.
//!
//! Missing a change loses data; over-marking only costs a read. So every failure path here
//! degrades towards marking more (a file tail, then the whole file) and is counted.
use core::{
    ffi::c_void,
    intrinsics::{AtomicOrdering, atomic_or},
};

use aya_ebpf::{
    bindings::BPF_NOEXIST,
    helpers::{
        bpf_get_current_pid_tgid, bpf_ktime_get_ns,
        generated::{bpf_get_current_task_btf, bpf_loop},
    },
    maps::HashMap,
};
use btm_common::dirty::{
    BLOCK_SHIFT, BLOCKS_PER_CHUNK, CHUNK_WORDS, Chunk, ChunkKey, FileKey, FileMark, PARTIAL_FILE,
    PreciseRange, WHY_OVERFLOW, stat,
};

use crate::kernel::{load, typed};
use crate::maps::{
    DIRTY0, DIRTY1, EPOCH, MARKS0, MARKS1, PARTIAL0, PARTIAL1, PRECISE, RANGE_INFLIGHT, STATS,
};

/// Chunks one event may mark bit by bit (16 GiB); a longer range marks the file's tail.
const MAX_CHUNKS_PER_EVENT: u64 = 8192;
/// A precise range suppresses folio events from the same task for this long at most; an
/// expired range only means the folio is marked whole (safe direction).
const PRECISE_TTL_NS: u64 = 1_000_000_000;

#[inline(always)]
pub fn count(slot: u32) {
    if let Some(p) = STATS.get_ptr_mut(slot) {
        // SAFETY: per-CPU slot; no other writer on this CPU while we run.
        unsafe { *p += 1 };
    }
}

#[inline(always)]
fn epoch_maps() -> (
    &'static HashMap<ChunkKey, Chunk>,
    &'static HashMap<FileKey, FileMark>,
) {
    let e = EPOCH.get(0).copied().unwrap_or(0);
    if e & 1 == 0 {
        (&DIRTY0, &MARKS0)
    } else {
        (&DIRTY1, &MARKS1)
    }
}

/// Marks every byte at or beyond `from` of the file (truncate, range shifts, clones, overflow).
#[inline(never)]
pub fn mark_tail(dev: u32, ino: u64, from: u64, why: u32) {
    let (_, marks) = epoch_maps();
    let key = FileKey { dev, _pad: 0, ino };
    if let Some(m) = marks.get_ptr_mut(&key) {
        // SAFETY: map value pointer; a lost race only leaves a larger `dirty_from`,
        // which the next writer or the retry below fixes.
        unsafe {
            if from < (*m).dirty_from {
                (*m).dirty_from = from;
            }
            (*m).why |= why;
        }
        return;
    }
    let mark = FileMark {
        dirty_from: from,
        why,
        _pad: 0,
    };
    match marks.insert(&key, &mark, BPF_NOEXIST as u64) {
        Ok(()) => {}
        Err(_) => {
            if let Some(m) = marks.get_ptr_mut(&key) {
                // SAFETY: as above.
                unsafe {
                    if from < (*m).dirty_from {
                        (*m).dirty_from = from;
                    }
                    (*m).why |= why;
                }
            } else {
                // Both maps full: the agent must rescan everything this epoch.
                count(stat::LOST);
            }
        }
    }
}

/// Sets bits `lo..=hi` (block numbers within the chunk) of one chunk. False when the chunk
/// can be neither found nor added (map full).
///
/// Each word is written in place with its mask: no array of masks on the stack, whose
/// per-word patterns the verifier followed one by one (half of the verified instructions of
/// a program that marks).
#[inline(always)]
fn mark_chunk(dirty: &HashMap<ChunkKey, Chunk>, key: &ChunkKey, lo: u64, hi: u64) -> bool {
    let c = match dirty.get_ptr_mut(key) {
        Some(c) => c,
        None => {
            // A clean chunk first, then its bits: whoever loses an insert race finds the
            // winner's entry and sets its bits there.
            let _ = dirty.insert(key, &CLEAN, BPF_NOEXIST as u64);
            match dirty.get_ptr_mut(key) {
                Some(c) => c,
                None => return false,
            }
        }
    };
    let (first, last) = (lo / 64, hi / 64);
    let mut w = 0;
    while w < CHUNK_WORDS {
        let wu = w as u64;
        if wu >= first && wu <= last {
            let mut mask = u64::MAX;
            if wu == first {
                mask &= u64::MAX << (lo % 64);
            }
            if wu == last {
                mask &= u64::MAX >> (63 - hi % 64);
            }
            // SAFETY: points into a live map value; atomic so concurrent CPUs never lose a
            // bit. A block written again in the same epoch (most writes of a busy file)
            // finds its bits set: a plain load then, not a locked read-modify-write of a
            // shared line. Bits are only cleared with the whole entry, after the epoch
            // switched.
            unsafe {
                let word = core::ptr::addr_of_mut!((*c).bits[w]);
                if core::ptr::read_volatile(word) & mask != mask {
                    atomic_or::<u64, u64, { AtomicOrdering::Relaxed }>(word, mask);
                }
            }
        }
        w += 1;
    }
    true
}

/// The value a chunk is added with (a static: no stack copy to zero on every insert).
static CLEAN: Chunk = Chunk {
    bits: [0; CHUNK_WORDS],
};

/// State shared with the per-chunk `bpf_loop` callback.
#[repr(C)]
struct RangeCtx {
    dev: u32,
    odd: u32,
    ino: u64,
    first: u64,
    last: u64,
    c0: u64,
    failed: u64,
}

/// Marks the bytes `[start, end)` of a file dirty.
///
/// A global function (`build.rs` exports it): the verifier checks it once per program, for
/// any arguments, instead of once per call site and caller state. As a static function it
/// was verified again at each of the fault programs' call sites, on every path to them:
/// 942,044 instructions of the kernel's limit of 1,000,000 for each fault program, and most
/// of the agent's start-up time. The kernel wants a scalar back; it is always 0.
#[inline(never)]
#[unsafe(no_mangle)]
pub extern "C" fn mark_range(dev: u32, ino: u64, start: u64, end: u64) -> u32 {
    mark_range_once(dev, ino, start, end);
    0
}

/// Chunks are visited with `bpf_loop` so the verifier checks the body once, whatever the
/// length of the range.
#[inline(always)]
fn mark_range_once(dev: u32, ino: u64, start: u64, end: u64) {
    if end <= start {
        return;
    }
    count(stat::EVENTS);
    let first = start >> BLOCK_SHIFT;
    let last = (end - 1) >> BLOCK_SHIFT;
    let c0 = first / BLOCKS_PER_CHUNK;
    let c1 = last / BLOCKS_PER_CHUNK;
    if c1 - c0 >= MAX_CHUNKS_PER_EVENT {
        mark_tail(dev, ino, first << BLOCK_SHIFT, 0);
        return;
    }
    let odd = EPOCH.get(0).copied().unwrap_or(0) & 1;
    if c0 == c1 {
        // One chunk (nearly every write): no loop to set up.
        let key = ChunkKey {
            dev,
            _pad: 0,
            ino,
            chunk: c0,
        };
        let dirty = if odd == 0 { &DIRTY0 } else { &DIRTY1 };
        let lo = first % BLOCKS_PER_CHUNK;
        let hi = last % BLOCKS_PER_CHUNK;
        if !mark_chunk(dirty, &key, lo, hi) {
            count(stat::CHUNK_OVERFLOW);
            mark_tail(dev, ino, 0, WHY_OVERFLOW);
        }
        return;
    }
    let mut ctx = RangeCtx {
        dev,
        odd,
        ino,
        first,
        last,
        c0,
        failed: 0,
    };
    // SAFETY: the callback only touches `ctx`, which outlives the call.
    unsafe {
        bpf_loop(
            (c1 - c0 + 1) as u32,
            chunk_cb as *mut c_void,
            &mut ctx as *mut RangeCtx as *mut c_void,
            0,
        );
    }
    if ctx.failed != 0 {
        count(stat::CHUNK_OVERFLOW);
        mark_tail(dev, ino, 0, WHY_OVERFLOW);
    }
}

#[inline(never)]
unsafe extern "C" fn chunk_cb(i: u64, data: *mut c_void) -> i64 {
    // SAFETY: `data` is the RangeCtx passed by mark_range.
    let ctx = unsafe { &mut *(data as *mut RangeCtx) };
    let c = ctx.c0 + i;
    let c_first = ctx.first / BLOCKS_PER_CHUNK;
    let c_last = ctx.last / BLOCKS_PER_CHUNK;
    let lo = if c == c_first {
        ctx.first % BLOCKS_PER_CHUNK
    } else {
        0
    };
    let hi = if c == c_last {
        ctx.last % BLOCKS_PER_CHUNK
    } else {
        BLOCKS_PER_CHUNK - 1
    };
    let key = ChunkKey {
        dev: ctx.dev,
        _pad: 0,
        ino: ctx.ino,
        chunk: c,
    };
    let dirty = if ctx.odd == 0 { &DIRTY0 } else { &DIRTY1 };
    if mark_chunk(dirty, &key, lo, hi) {
        0
    } else {
        ctx.failed = 1;
        1
    }
}

/// Marks `[start, end)` and remembers it as the current task's precise write range;
/// `flags` is [`btm_common::dirty::PRECISE_PMD`] or 0.
#[inline(always)]
pub fn mark_precise(dev: u32, ino: u64, start: u64, end: u64, flags: u32) {
    count(stat::PRECISE);
    mark_range(dev, ino, start, end);
    let Some(p) = PRECISE.get_ptr_mut(0) else {
        return;
    };
    let r = PreciseRange {
        tid: bpf_get_current_pid_tgid(),
        // A task whose counters cannot be read never matches (u64::MAX is never reached).
        switches: switches().unwrap_or(u64::MAX),
        dev,
        flags,
        ino,
        start,
        end,
        // SAFETY: plain helper call.
        expires: unsafe { bpf_ktime_get_ns() } + PRECISE_TTL_NS,
        epoch: EPOCH.get(0).copied().unwrap_or(0),
        _pad: 0,
    };
    // SAFETY: this CPU's slot; programs do not nest on a CPU (a nested run is skipped and
    // counted in `prog_misses`), and a preempted writer finds its range invalid anyway.
    unsafe { *p = r };
}

/// The current task's context switches so far. Between two equal readings the task ran on
/// this CPU without a break: nothing else of its own ran elsewhere.
#[inline(always)]
fn switches() -> Option<u64> {
    // SAFETY: a trusted BTF pointer to the current task, only read with typed loads.
    let task = unsafe { bpf_get_current_task_btf() } as *const u8;
    let v: u64 = load(task, typed!(task_nvcsw))?;
    let n: u64 = load(task, typed!(task_nivcsw))?;
    Some(v.wrapping_add(n))
}

/// The flags of the current task's precise range when it covers part of `[start, end)` of
/// this file.
#[inline(always)]
pub fn covered_by_precise(dev: u32, ino: u64, start: u64, end: u64) -> Option<u32> {
    let p = PRECISE.get_ptr(0)?;
    // SAFETY: this CPU's slot, copied out.
    let r = unsafe { *p };
    (r.tid == bpf_get_current_pid_tgid()
        && r.dev == dev
        && r.ino == ino
        && r.epoch == EPOCH.get(0).copied().unwrap_or(0)
        && r.start < end
        && r.end > start
        && Some(r.switches) == switches()
        // SAFETY: plain helper call.
        && unsafe { bpf_ktime_get_ns() } < r.expires)
        .then_some(r.flags)
}

/// Records that folio `index` (of `order`) is dirty with only part of it marked. False when
/// the record cannot be kept (map full): the caller must then mark the whole folio. The
/// file's own entry ([`PARTIAL_FILE`]) goes in first, so a fault on a file with no such folio
/// costs one lookup per epoch instead of one per possible folio order.
#[inline(always)]
pub fn note_partial(dev: u32, ino: u64, index: u64, order: u64) -> bool {
    let odd = EPOCH.get(0).copied().unwrap_or(0) & 1;
    let map = if odd == 0 { &PARTIAL0 } else { &PARTIAL1 };
    let file = ChunkKey {
        dev,
        _pad: 0,
        ino,
        chunk: PARTIAL_FILE,
    };
    // SAFETY: value not kept.
    if unsafe { map.get(&file) }.is_none() && map.insert(&file, &0, 0).is_err() {
        return false;
    }
    let key = ChunkKey {
        dev,
        _pad: 0,
        ino,
        chunk: index,
    };
    map.insert(&key, &(order as u32), 0).is_ok()
}

/// The partially-marked folio (index, order) containing `page`, from either epoch's record.
#[inline(always)]
pub fn partial_folio(dev: u32, ino: u64, page: u64) -> Option<(u64, u64)> {
    let file = ChunkKey {
        dev,
        _pad: 0,
        ino,
        chunk: PARTIAL_FILE,
    };
    for map in [&PARTIAL0, &PARTIAL1] {
        // SAFETY: value not kept.
        if unsafe { map.get(&file) }.is_none() {
            continue;
        }
        let mut order = 1u64;
        while order <= 9 {
            let index = page & !((1u64 << order) - 1);
            let key = ChunkKey {
                dev,
                _pad: 0,
                ino,
                chunk: index,
            };
            // SAFETY: value copied out immediately.
            if let Some(o) = unsafe { map.get(&key) }
                && *o as u64 == order
            {
                return Some((index, order));
            }
            order += 1;
        }
    }
    None
}

/// What a range-changing system call marks: `[start, end)`, or with `why` set every byte
/// from `start` on ([`mark_tail`]).
#[repr(C)]
#[derive(Clone, Copy)]
pub struct RangeMark {
    pub dev: u32,
    pub why: u32,
    pub ino: u64,
    pub start: u64,
    pub end: u64,
}

#[inline(always)]
fn apply(m: &RangeMark) {
    if m.why != 0 {
        mark_tail(m.dev, m.ino, m.start, m.why);
    } else {
        mark_range(m.dev, m.ino, m.start, m.end);
    }
}

/// Marks what a range call is about to change, and remembers it for [`range_call_done`]:
/// the call may wait (for the frozen volume, for a lock) past the next epoch flip and change
/// the file only then, after the cut that drained this mark read it.
#[inline(always)]
pub fn range_call(m: RangeMark) {
    count(stat::RANGE_CALLS);
    apply(&m);
    let _ = RANGE_INFLIGHT.insert(&bpf_get_current_pid_tgid(), &m, 0);
}

/// At a range call's exit: marks again, in the epoch current now, what it marked at entry.
#[inline(always)]
pub fn range_call_done() {
    let tid = bpf_get_current_pid_tgid();
    // SAFETY: value copied out immediately.
    let Some(m) = (unsafe { RANGE_INFLIGHT.get(&tid) }).copied() else {
        return;
    };
    let _ = RANGE_INFLIGHT.remove(&tid);
    apply(&m);
}

/// Forgets the current task's precise range, so no folio event it causes next is suppressed.
/// Only this CPU's slot can hold a range of the task that still counts.
#[inline(always)]
pub fn clear_precise() {
    if let Some(p) = PRECISE.get_ptr_mut(0) {
        // SAFETY: this CPU's slot.
        unsafe { (*p).tid = 0 };
    }
}
