//! A per-process cache of the tracked shared mappings its write faults resolved, so that a
//! fault costs a hash lookup instead of `bpf_find_vma`. The fault tracepoint runs with
//! interrupts off, where `bpf_find_vma` must defer its mmap unlock to an irq_work (a
//! self-interrupt, a VM exit under a hypervisor): measured at about 7 µs a fault.
//!
//! Only positive answers are cached: an address whose VMA is a shared mapping of a tracked
//! file, with what that VMA says (start, end, file offset, `MADV_NOHUGEPAGE`). Such an entry
//! goes stale only when something is unmapped, remapped or re-advised in the process, so
//! every call that can do that (mmap, munmap, mremap, remap_file_pages, shmat, madvise of
//! huge-page advice, exec) gives the process a fresh generation first, and an entry counts
//! only under the generation it was resolved in. A new process (fork, possibly with a
//! recycled pid) starts with none, so nothing of a dead process is ever read.
//!
//! A fault races a concurrent unmap in another thread the same way with or without the cache:
//! the tracepoint runs before the fault is handled, `bpf_find_vma` drops the lock before too.
use aya_ebpf::{bindings::BPF_NOEXIST, helpers::bpf_get_smp_processor_id};

use crate::maps::{GENS, NEXT_GEN, SHARES, VMAS};

/// Bytes of address space one cache entry is keyed by (a PMD's span).
const REGION_SHIFT: u64 = 21;

#[repr(C)]
#[derive(Clone, Copy)]
pub struct VmaKey {
    pub tgid: u32,
    pub _pad: u32,
    pub region: u64,
}

/// What the fault probe needs of a VMA.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct Vma {
    pub start: u64,
    pub end: u64,
    pub pgoff: u64,
    pub ino: u64,
    pub dev: u32,
    /// Non-zero when the VMA is `MADV_NOHUGEPAGE`.
    pub nohuge: u32,
    /// The process's generation when this was resolved.
    pub generation: u64,
}

/// A generation number never handed out before: a per-CPU count and the CPU's number
/// (programs never nest on a CPU, so no two runs get the same count).
#[inline(always)]
fn fresh_gen() -> Option<u64> {
    let p = NEXT_GEN.get_ptr_mut(0)?;
    // SAFETY: this CPU's slot; nothing else writes it while we run.
    let n = unsafe {
        *p += 1;
        *p
    };
    // SAFETY: plain helper call.
    let cpu = unsafe { bpf_get_smp_processor_id() } as u64 & 0xffff;
    Some((n << 16) | cpu)
}

/// A generation that disables the cache for a process: one whose address space another
/// process shares (`CLONE_VM` without `CLONE_THREAD`), whose changes are not all keyed by its
/// own pid.
const NO_CACHE: u64 = u64::MAX;

/// Forgets what is cached for `tgid`, and for the process whose address space it shares:
/// its mappings may change.
#[inline(always)]
pub fn invalidate(tgid: u32) {
    renew(tgid);
    // SAFETY: value copied out immediately.
    if let Some(root) = unsafe { SHARES.get(&tgid) }.copied() {
        renew(root);
    }
}

#[inline(always)]
fn renew(tgid: u32) {
    // SAFETY: value copied out immediately.
    match unsafe { GENS.get(&tgid) }.copied() {
        None | Some(NO_CACHE) => {}
        Some(_) => match fresh_gen() {
            Some(g) => {
                let _ = GENS.insert(&tgid, &g, 0);
            }
            None => {
                let _ = GENS.remove(&tgid);
            }
        },
    }
}

/// A new process `child` of `parent` (not a thread of it): whatever a dead process with the
/// same pid left must not count for it, and when it shares the parent's address space
/// (`shared_mm`) neither caches, except the parent, which its changes then invalidate too.
#[inline(always)]
pub fn on_fork(parent: u32, child: u32, shared_mm: bool) {
    let _ = GENS.remove(&child);
    let _ = SHARES.remove(&child);
    if !shared_mm {
        return;
    }
    let _ = GENS.insert(&child, &NO_CACHE, 0);
    // SAFETY: value copied out immediately.
    let root = unsafe { SHARES.get(&parent) }.copied().unwrap_or(parent);
    if SHARES.insert(&child, &root, 0).is_err() {
        // Cannot record who to invalidate: the parent stops caching for good.
        let _ = GENS.insert(&root, &NO_CACHE, 0);
    }
}

/// After exec the process has an address space of its own, shared with nobody.
#[inline(always)]
pub fn on_exec(tgid: u32) {
    invalidate(tgid);
    let _ = SHARES.remove(&tgid);
    let _ = GENS.remove(&tgid);
}

/// The process's generation: None when it must not use the cache, or when it has none yet
/// (created here: the first fault of a generation must come after its creation).
#[inline(always)]
pub fn generation(tgid: u32) -> Option<u64> {
    // SAFETY: value copied out immediately.
    match unsafe { GENS.get(&tgid) }.copied() {
        Some(NO_CACHE) => None,
        Some(g) => Some(g),
        None => {
            if let Some(g) = fresh_gen() {
                let _ = GENS.insert(&tgid, &g, BPF_NOEXIST as u64);
            }
            None
        }
    }
}

/// The cached VMA of `addr` under generation `g`.
#[inline(always)]
pub fn lookup(tgid: u32, g: u64, addr: u64) -> Option<Vma> {
    let key = VmaKey {
        tgid,
        _pad: 0,
        region: addr >> REGION_SHIFT,
    };
    // SAFETY: value copied out immediately.
    let v = *unsafe { VMAS.get(&key) }?;
    (v.generation == g && v.start <= addr && addr < v.end).then_some(v)
}

/// Caches `vma` for the region of `addr`, resolved under generation `g` (read before the
/// lookup, so an invalidation during it leaves the entry dead).
#[inline(always)]
pub fn remember(tgid: u32, addr: u64, vma: &Vma) {
    let key = VmaKey {
        tgid,
        _pad: 0,
        region: addr >> REGION_SHIFT,
    };
    let _ = VMAS.insert(&key, vma, 0);
}
