//! A per-process cache of the tracked shared mappings its write faults resolved, so that a
//! fault costs a hash lookup instead of `bpf_find_vma`. The fault tracepoint runs with
//! interrupts off, where `bpf_find_vma` must defer its mmap unlock to an irq_work (a
//! self-interrupt, a VM exit under a hypervisor): measured at about 7 µs a fault.
//!
//! Only positive answers are cached: an address whose VMA is a shared mapping of a tracked
//! file, with what that VMA says (start, end, file offset, `MADV_NOHUGEPAGE`), under the key of
//! its 2 MiB region. An entry goes stale only when something in that region is unmapped,
//! remapped or re-advised: the system calls that can (munmap, mremap, `MAP_FIXED` mmap,
//! remap_file_pages, `SHM_REMAP` shmat, huge-page madvise) note their ranges on entry
//! ([`note_change`]) and on exit ([`settle`]), once the change is made, delete the keys of
//! the regions they touched (a change spanning more than [`MAX_REGIONS`] regions and shmat
//! renew the process's generation instead, and exec drops it: entries count only under the
//! generation they were resolved in). A new process (fork, possibly with a recycled pid) starts with no
//! generation. Processes that share an address space without being threads of one another do
//! not cache, and their changes settle their parent's cache.
//!
//! Settling on exit leaves one interleaving: a fault resolves the old mapping, the change and
//! its exit run, then the fault stores its (now stale) entry. So a fault first puts a
//! placeholder (matching no address, with a fresh token) under its region, and stores its
//! entry only over a key that still exists: a settle in between deleted it. The token also
//! dates a fault whose lookup was busy ([`defer`]): the agent trusts /proc/PID/maps for it
//! only while the region's key still holds that token and the generation is unchanged.
//!
//! A fault still races a concurrent change in another thread as it always did: the
//! tracepoint runs before the fault is handled, and `bpf_find_vma` drops the lock before too.
use aya_ebpf::{
    bindings::{BPF_EXIST, BPF_NOEXIST},
    helpers::{bpf_get_current_pid_tgid, bpf_get_smp_processor_id},
};

use btm_common::dirty::REGION_SHIFT;

use crate::maps::{DEFER0, DEFER1, EPOCH, GENS, MAPPERS, NEXT_GEN, PENDING, SHARES, VMAS};

/// Regions a change may span and still be checked one by one; a larger one renews.
const MAX_REGIONS: u64 = 64;

/// The ranges a system call in flight may unmap or remap (`[start, len]`, len 0 for none),
/// or `all` for one whose range is not known on entry.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct Pending {
    pub ranges: [[u64; 2]; 2],
    pub all: u64,
}

/// (tgid, 2 MiB region) for the cache, (tgid, page address) for deferred faults.
pub type VmaKey = btm_common::dirty::ProcKey;

/// The cache key of `addr`'s region.
#[inline(always)]
fn region_key(tgid: u32, addr: u64) -> VmaKey {
    VmaKey {
        tgid,
        _pad: 0,
        at: addr >> REGION_SHIFT,
    }
}

/// What the fault probe needs of a VMA.
#[repr(C)]
#[derive(Clone, Copy, Default)]
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
    /// Set by the placeholder that first held the key and kept by the entries stored over
    /// it, until a change settling over the region deletes the key: what dates a deferred
    /// fault (see the module doc).
    pub token: u64,
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

/// After exec the process has an address space of its own, shared with nobody; the one it
/// leaves (a parent's, after vfork) is unchanged. Without its generation nothing cached or
/// deferred under the old one counts (see [`defer`]).
#[inline(always)]
pub fn on_exec(tgid: u32) {
    let _ = SHARES.remove(&tgid);
    let _ = GENS.remove(&tgid);
}

/// On entry to a system call that may change what `ranges` map (see [`Pending`]): kept
/// for [`settle`] at its exit. Only processes that map the volume can have cached entries.
#[inline(always)]
pub fn note_change(ranges: [[u64; 2]; 2], all: bool) {
    let tid = bpf_get_current_pid_tgid();
    let tgid = (tid >> 32) as u32;
    // SAFETY: value not kept.
    if unsafe { MAPPERS.get(&tgid) }.is_none() {
        return;
    }
    let p = Pending {
        ranges,
        all: all as u64,
    };
    if PENDING.insert(&tid, &p, 0).is_err() {
        // Nowhere to keep it: this process stops caching for good.
        let _ = GENS.insert(&tgid, &NO_CACHE, 0);
    }
}

/// On exit from such a call: the change is made; entries of regions it touched die.
#[inline(always)]
pub fn settle() {
    let tid = bpf_get_current_pid_tgid();
    // SAFETY: value copied out immediately.
    let Some(p) = (unsafe { PENDING.get(&tid) }).copied() else {
        return;
    };
    let _ = PENDING.remove(&tid);
    let tgid = (tid >> 32) as u32;
    // SAFETY: value copied out immediately.
    let owner = unsafe { SHARES.get(&tgid) }.copied().unwrap_or(tgid);
    if p.all != 0
        || !drop_regions(owner, p.ranges[0][0], p.ranges[0][1])
        || !drop_regions(owner, p.ranges[1][0], p.ranges[1][1])
    {
        renew(owner);
    }
}

/// Deletes the keys of `tgid` in the regions `[start, start + len)` touches; false when they
/// are too many to visit (then the caller renews the generation).
#[inline(always)]
fn drop_regions(tgid: u32, start: u64, len: u64) -> bool {
    if len == 0 {
        return true;
    }
    let r0 = start >> REGION_SHIFT;
    let r1 = start.saturating_add(len - 1) >> REGION_SHIFT;
    if r1 - r0 >= MAX_REGIONS {
        return false;
    }
    let mut i = 0;
    while i < MAX_REGIONS {
        let at = r0 + i;
        if at > r1 {
            break;
        }
        let _ = VMAS.remove(&VmaKey { tgid, _pad: 0, at });
        i += 1;
    }
    true
}

/// Before a fault looks its VMA up: a placeholder under its region (matching no address)
/// with a fresh token, unless the key holds something already. Returns the token the key
/// holds, which only a change settling over the region takes away by deleting the key (see
/// the module doc), or 0 (never a token) when there is none. A plain integer: the verifier
/// rejects the undefined payload of a None spilled to the stack.
#[inline(always)]
pub fn placeholder(tgid: u32, addr: u64) -> u64 {
    let key = region_key(tgid, addr);
    let v = Vma {
        token: fresh_gen().unwrap_or(0),
        ..Vma::default()
    };
    if v.token == 0 {
        return 0;
    }
    let _ = VMAS.insert(&key, &v, BPF_NOEXIST as u64);
    // SAFETY: value copied out immediately.
    unsafe { VMAS.get(&key) }.map_or(0, |v| v.token)
}

/// Keeps a write fault whose VMA could not be looked up, with the process's generation `g`
/// and its region's token, for the agent to resolve from /proc/PID/maps at the drain (see the
/// module doc). False when it cannot be kept: the agent must then widen every
/// partially-marked folio.
#[inline(always)]
pub fn defer(tgid: u32, addr: u64, g: u64, token: u64) -> bool {
    let key = VmaKey {
        tgid,
        _pad: 0,
        at: addr & !0xfff,
    };
    let map = if EPOCH.get(0).copied().unwrap_or(0) & 1 == 0 {
        &DEFER0
    } else {
        &DEFER1
    };
    map.insert(&key, &[g, token], 0).is_ok()
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
    let key = region_key(tgid, addr);
    // SAFETY: value copied out immediately.
    let v = *unsafe { VMAS.get(&key) }?;
    (v.generation == g && v.start <= addr && addr < v.end).then_some(v)
}

/// Caches `vma` for the region of `addr` (its `generation` read before the lookup).
#[inline(always)]
pub fn remember(tgid: u32, addr: u64, vma: &Vma) {
    let key = region_key(tgid, addr);
    // Only over the placeholder (or entry) the fault found, keeping its token: a change
    // settled meanwhile deleted it.
    // SAFETY: value copied out immediately.
    let Some(token) = (unsafe { VMAS.get(&key) }).map(|v| v.token) else {
        return;
    };
    let v = Vma { token, ..*vma };
    let _ = VMAS.insert(&key, &v, BPF_EXIST as u64);
}
