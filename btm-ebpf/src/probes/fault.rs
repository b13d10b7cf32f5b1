//! `exceptions:page_fault_user` / `page_fault_kernel` (tp_btf): write faults on shared file
//! mappings, resolved to (inode, page) with `bpf_find_vma`.
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
    kernel::{config, current_tgid, read, tracked_inode},
    maps::MAPPERS,
    mark::{clear_precise, count, mark_precise, mark_range, partial_folio},
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
    dev: u32,
    found: u32,
    ino: u64,
    page: u64,
    /// Non-zero when a PMD may map the faulting address (see [`pmd_possible`]).
    pmd: u64,
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
    if error_code & X86_PF_WRITE == 0 || config().is_none() {
        return;
    }
    // Only a process that maps a file of the volume shared can store into it through a
    // mapping (the set is complete: seeded from /proc, kept by the mmap and fork probes).
    // Skipping the rest keeps bpf_find_vma, and its per-CPU deferred unlock, off other
    // processes' faults: less overhead, and fewer busy lookups for the node's own faults.
    // SAFETY: value copied out immediately.
    if unsafe { MAPPERS.get(&current_tgid()) }.is_none() {
        return;
    }
    let mut fc = FaultCtx {
        addr,
        dev: 0,
        found: 0,
        ino: 0,
        page: 0,
        pmd: 0,
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
        clear_precise();
        // Busy (its deferred mmap unlock is still pending on this CPU). Fail safe: the folio
        // event this fault may cause is not suppressed, and the agent widens this cut's
        // marks to whole folios (see FAULT_UNRESOLVED).
        count(stat::FAULT_UNRESOLVED);
        return;
    }
    if fc.found == 0 {
        clear_precise();
        return;
    }
    count(stat::FAULT_MARKED);
    let start = fc.page << BLOCK_SHIFT;
    if error_code & X86_PF_PROT != 0 {
        // Write-protect fault: on a PTE exactly this page becomes writable, a precise range
        // that the folio event following it marks alone. On a PMD the whole 2 MiB folio
        // does: the folio event marks it whole (PRECISE_PMD), and a dirty PMD-sized folio
        // marked only in part gets no event at all, so it is marked whole here.
        let pmd = fc.pmd != 0;
        mark_precise(
            fc.dev,
            fc.ino,
            start,
            start + (1 << BLOCK_SHIFT),
            if pmd { PRECISE_PMD } else { 0 },
        );
        if pmd
            && let Some((index, order)) = partial_folio(fc.dev, fc.ino, fc.page)
            && order >= PMD_ORDER
        {
            count(stat::FAULT_WIDE);
            let s = index << BLOCK_SHIFT;
            mark_range(fc.dev, fc.ino, s, s + PMD_BYTES);
        }
        return;
    }
    // Not-present fault: the kernel may map the whole folio writable, so whatever folio
    // event follows must mark the whole folio, and a dirty folio marked only in part gets
    // no event at all: mark it whole here.
    clear_precise();
    mark_range(fc.dev, fc.ino, start, start + (1 << BLOCK_SHIFT));
    if let Some((index, order)) = partial_folio(fc.dev, fc.ino, fc.page) {
        let s = index << BLOCK_SHIFT;
        mark_range(
            fc.dev,
            fc.ino,
            s,
            s + (1u64 << (BLOCK_SHIFT as u64 + order)),
        );
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
    let file: *const u8 = read(vma, cfg.vma_file)?;
    let inode: *const u8 = read(file, cfg.file_inode)?;
    let (dev, ino) = tracked_inode(cfg, inode)?;
    let start: u64 = read(vma, cfg.vma_start)?;
    let pgoff: u64 = read(vma, cfg.vma_pgoff)?;
    // SAFETY: `fc` points at the caller's stack object, passed through bpf_find_vma.
    unsafe {
        let addr = (*fc).addr;
        (*fc).dev = dev;
        (*fc).ino = ino;
        (*fc).page = ((addr - start) >> BLOCK_SHIFT) + pgoff;
        (*fc).pmd = pmd_possible(cfg, vma, flags, start, pgoff, addr) as u64;
        (*fc).found = 1;
    }
    Some(())
}

/// False only when the kernel cannot map `addr` of this VMA by PMD (the checks of
/// `do_set_pmd`): the VMA is `MADV_NOHUGEPAGE`, its process has THP disabled
/// (`PR_SET_THP_DISABLE`, the bit measured by the agent), or the 2 MiB around `addr` is not
/// inside the VMA at a 2 MiB-aligned file offset. Anything unreadable counts as possible.
#[inline(always)]
fn pmd_possible(
    cfg: &Config,
    vma: *const u8,
    flags: u64,
    start: u64,
    pgoff: u64,
    addr: u64,
) -> bool {
    if flags & VM_NOHUGEPAGE != 0 {
        return false;
    }
    let haddr = addr & !(PMD_BYTES - 1);
    if let Some(end) = read::<u64>(vma, cfg.vma_end)
        && (haddr < start || haddr + PMD_BYTES > end)
    {
        return false;
    }
    if ((start >> BLOCK_SHIFT).wrapping_sub(pgoff)) & ((1 << PMD_ORDER) - 1) != 0 {
        return false;
    }
    let bit = cfg.thp_off_bit;
    if bit < 64
        && let Some(mm) = read::<*const u8>(vma, cfg.vma_mm)
        && let Some(word) = read::<u64>(mm, cfg.mm_flags)
        && word & (1u64 << bit) != 0
    {
        return false;
    }
    true
}
