//! `exceptions:page_fault_user` / `page_fault_kernel` (tp_btf): write faults on shared file
//! mappings, resolved to (inode, page) with `bpf_find_vma`.
//!
//! A store through a shared mapping is only visible to the kernel as a fault on a
//! write-protected PTE (after each cut's writeback every PTE of a clean folio is read-only).
//! A write-protect fault (PTE present, read-only since the last writeback: the steady state
//! of a long-running mmap engine) makes exactly one PTE writable: the page is marked and
//! becomes a precise range, so the folio event that follows marks 4 KiB even in a large folio.
//! A not-present fault may map a whole large folio writable at once (`finish_fault`), after
//! which stores into its other pages fault no more: its folio event marks the whole folio,
//! and if that folio was already dirty with only part of it marked (see `PARTIAL*`), it is
//! marked whole here.
use core::ffi::c_void;

use aya_ebpf::{
    helpers::generated::{bpf_find_vma, bpf_get_current_task_btf},
    macros::btf_tracepoint,
    programs::BtfTracePointContext,
};
use btm_common::dirty::{BLOCK_SHIFT, stat};

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

#[repr(C)]
struct FaultCtx {
    addr: u64,
    dev: u32,
    found: u32,
    ino: u64,
    page: u64,
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
        // Write-protect fault: exactly this PTE becomes writable. The page is a precise
        // range; the folio event that may follow marks only it.
        mark_precise(fc.dev, fc.ino, start, start + (1 << BLOCK_SHIFT));
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
        (*fc).found = 1;
    }
    Some(())
}
