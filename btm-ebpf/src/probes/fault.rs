//! `exceptions:page_fault_user` / `page_fault_kernel` (tp_btf): write faults on shared file
//! mappings, resolved to (inode, page) from the process's mapping cache (`vmas`), else with
//! `bpf_find_vma` (about 7 µs here: from this tracepoint it defers its unlock to an irq_work).
//!
//! A store through a shared mapping is only visible to the kernel as a write fault (after each
//! cut's writeback every mapping of a clean folio is read-only). What one fault makes writable
//! decides what must be marked:
//! - a write-protect fault on a PTE makes exactly that PTE writable: the page is marked and
//!   becomes a precise range, so the folio event that follows marks 4 KiB even in a large
//!   folio;
//! - a write-protect fault on a PMD (a 2 MiB folio mapped whole) splits it, and the refault
//!   maps the whole folio writable again: when the mapping may hold a PMD there (see
//!   [`pmd_possible`]), a PMD-sized folio is marked whole, here if it is already dirty with
//!   only part of it marked, else by its folio event;
//! - a not-present fault may map a whole large folio writable (`finish_fault`), after which
//!   stores into its other pages fault no more: its folio event marks the whole folio, and if
//!   that folio was already dirty with only part of it marked (see `PARTIAL*`), it is marked
//!   whole here.
use core::ffi::c_void;

use aya_ebpf::{
    helpers::generated::{bpf_find_vma, bpf_get_current_task_btf},
    macros::btf_tracepoint,
    programs::BtfTracePointContext,
};
use btm_common::{
    config::Config,
    dirty::{BLOCK_SHIFT, PMD_ORDER, PRECISE_PMD, stat},
};

use crate::{
    kernel::{config, current_tgid, load, read, tracked_file, typed},
    maps::MAPPERS,
    mark::{clear_precise, count, mark_precise, mark_range, partial_folio},
    vmas::{self, Vma},
};

/// x86 page fault error code: the PTE was present (a write-protect fault).
const X86_PF_PROT: u64 = 1 << 0;
/// x86 page fault error code: the access was a write.
const X86_PF_WRITE: u64 = 1 << 1;
/// `VM_SHARED`: stores reach the file (private mappings copy on write).
const VM_SHARED: u64 = 0x8;
/// `VM_NOHUGEPAGE` (`MADV_NOHUGEPAGE`): the kernel never maps this VMA by PMD.
const VM_NOHUGEPAGE: u64 = 0x4000_0000;
const PMD_BYTES: u64 = 1 << (BLOCK_SHIFT as u64 + PMD_ORDER);

#[repr(C)]
struct FaultCtx {
    addr: u64,
    found: u64,
    vma: Vma,
}

#[btf_tracepoint(function = "page_fault_user")]
pub fn btm_fault_user(ctx: BtfTracePointContext) -> u32 {
    on_fault(ctx.arg(0), ctx.arg(2));
    0
}

#[btf_tracepoint(function = "page_fault_kernel")]
pub fn btm_fault_kernel(ctx: BtfTracePointContext) -> u32 {
    on_fault(ctx.arg(0), ctx.arg(2));
    0
}

#[inline(always)]
fn on_fault(addr: u64, error_code: u64) {
    if error_code & X86_PF_WRITE == 0 {
        return;
    }
    let Some(cfg) = config() else { return };
    // Only a process that maps a file of the volume shared can store into it through a
    // mapping (the set is complete: seeded from /proc, kept by the mmap and fork probes).
    // Skipping the rest keeps bpf_find_vma, and its per-CPU deferred unlock, off other
    // processes' faults: less overhead, and fewer busy lookups for the node's own faults.
    let tgid = current_tgid();
    // SAFETY: value copied out immediately.
    if unsafe { MAPPERS.get(&tgid) }.is_none() {
        return;
    }
    let generation = vmas::generation(tgid);
    let vma = match generation.and_then(|g| vmas::lookup(tgid, g, addr)) {
        Some(v) => {
            count(stat::FAULT_CACHED);
            v
        }
        None => {
            let token = if generation.is_some() {
                vmas::placeholder(tgid, addr)
            } else {
                0
            };
            match find(cfg, addr) {
                Found::Vma(mut v) => {
                    if let Some(g) = generation
                        && v.end != 0
                    {
                        v.generation = g;
                        vmas::remember(tgid, addr, &v);
                    }
                    v
                }
                Found::Untracked => {
                    clear_precise();
                    return;
                }
                Found::Busy => {
                    clear_precise();
                    // Busy (its deferred mmap unlock is still pending on this CPU). Fail
                    // safe: the folio event this fault may cause is not suppressed, and the
                    // agent resolves the address at the drain and marks that page and its
                    // partially-marked folio (FAULT_DEFERRED), or, when it cannot be kept,
                    // widens this cut's marks to whole folios (FAULT_UNRESOLVED).
                    if let Some(g) = generation
                        && token != 0
                        && vmas::defer(tgid, addr, g, token)
                    {
                        count(stat::FAULT_DEFERRED);
                    } else {
                        count(stat::FAULT_UNRESOLVED);
                    }
                    return;
                }
            }
        }
    };
    count(stat::FAULT_MARKED);
    let (dev, ino) = (vma.dev, vma.ino);
    let page = ((addr - vma.start) >> BLOCK_SHIFT) + vma.pgoff;
    let start = page << BLOCK_SHIFT;
    if error_code & X86_PF_PROT != 0 {
        // Write-protect fault: on a PTE exactly this page becomes writable, a precise range
        // that the folio event following it marks alone. On a PMD the whole 2 MiB folio
        // does: the folio event marks it whole (PRECISE_PMD), and a dirty PMD-sized folio
        // marked only in part gets no event at all, so it is marked whole here.
        let pmd = pmd_possible(cfg, &vma, addr);
        mark_precise(
            dev,
            ino,
            start,
            start + (1 << BLOCK_SHIFT),
            if pmd { PRECISE_PMD } else { 0 },
        );
        if pmd
            && let Some((index, order)) = partial_folio(dev, ino, page)
            && order >= PMD_ORDER
        {
            count(stat::FAULT_WIDE);
            let s = index << BLOCK_SHIFT;
            mark_range(dev, ino, s, s + PMD_BYTES);
        }
        return;
    }
    // Not-present fault: the kernel may map the whole folio writable, so whatever folio
    // event follows must mark the whole folio, and a dirty folio marked only in part gets
    // no event at all: mark it whole here.
    clear_precise();
    mark_range(dev, ino, start, start + (1 << BLOCK_SHIFT));
    if let Some((index, order)) = partial_folio(dev, ino, page) {
        let s = index << BLOCK_SHIFT;
        mark_range(dev, ino, s, s + (1u64 << (BLOCK_SHIFT as u64 + order)));
    }
}

enum Found {
    Vma(Vma),
    Untracked,
    Busy,
}

/// The VMA of `addr` in the current process, through `bpf_find_vma`.
#[inline(always)]
fn find(cfg: &Config, addr: u64) -> Found {
    if cfg.defer_all != 0 {
        return Found::Busy;
    }
    let mut fc = FaultCtx {
        addr,
        found: 0,
        vma: Vma::default(),
    };
    // SAFETY: the task pointer is a trusted BTF pointer; the callback only reads through
    // probe_read and writes into `fc` on our stack.
    let ret = unsafe {
        let task = bpf_get_current_task_btf();
        bpf_find_vma(
            task,
            addr,
            find_cb as *mut c_void,
            &mut fc as *mut FaultCtx as *mut c_void,
            0,
        )
    };
    // -ENOENT: no VMA at that address (a kernel address, stack guard, bad pointer).
    if ret < 0 && ret != -2 {
        Found::Busy
    } else if fc.found == 0 {
        Found::Untracked
    } else {
        Found::Vma(fc.vma)
    }
}

#[inline(never)]
unsafe extern "C" fn find_cb(_task: *mut c_void, vma: *mut c_void, data: *mut c_void) -> i64 {
    let _ = resolve(vma as *const u8, data as *mut FaultCtx);
    0
}

#[inline(always)]
fn resolve(vma: *const u8, fc: *mut FaultCtx) -> Option<()> {
    let cfg = config()?;
    let flags: u64 = read(vma, cfg.vma_flags)?;
    if flags & VM_SHARED == 0 {
        return None;
    }
    let (dev, ino) = tracked_file(cfg, read(vma, cfg.vma_file)?)?;
    // SAFETY: `fc` points at the caller's stack object, passed through bpf_find_vma.
    unsafe {
        (*fc).vma = Vma {
            start: read(vma, cfg.vma_start)?,
            // 0 when unreadable: never cached, and a PMD counts as possible.
            end: read(vma, cfg.vma_end).unwrap_or(0),
            pgoff: read(vma, cfg.vma_pgoff)?,
            ino,
            dev,
            nohuge: (flags & VM_NOHUGEPAGE != 0) as u32,
            generation: 0,
            token: 0,
        };
        (*fc).found = 1;
    }
    Some(())
}

/// False only when the kernel cannot map `addr` of this VMA by PMD (the checks of
/// `do_set_pmd`): the VMA is `MADV_NOHUGEPAGE`, its process has THP disabled
/// (`PR_SET_THP_DISABLE`, the bit measured by the agent, read live since prctl can set it at
/// any time), or the 2 MiB around `addr` is not inside the VMA at a 2 MiB-aligned file
/// offset. Anything unreadable counts as possible.
#[inline(always)]
fn pmd_possible(cfg: &Config, vma: &Vma, addr: u64) -> bool {
    if vma.nohuge != 0 {
        return false;
    }
    let haddr = addr & !(PMD_BYTES - 1);
    if vma.end != 0 && (haddr < vma.start || haddr + PMD_BYTES > vma.end) {
        return false;
    }
    if ((vma.start >> BLOCK_SHIFT).wrapping_sub(vma.pgoff)) & ((1 << PMD_ORDER) - 1) != 0 {
        return false;
    }
    let bit = cfg.thp_off_bit;
    // SAFETY: a trusted BTF pointer to the current task, only read with typed loads.
    let task = unsafe { bpf_get_current_task_btf() } as *const u8;
    if bit < 64
        && let Some(mm) = load::<*const u8>(task, typed!(task_mm))
        && let Some(word) = load::<u64>(mm, typed!(mm_flags))
        && word & (1u64 << bit) != 0
    {
        return false;
    }
    true
}
