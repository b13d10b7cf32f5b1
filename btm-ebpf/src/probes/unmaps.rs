//! System calls that unmap, move or re-advise mappings: on entry each notes the ranges it may
//! change, and on exit, once changed, the fault probe's mapping cache drops what it held for
//! them (`vmas`). `mmap` (MAP_FIXED) and huge-page `madvise` note theirs where they are
//! probed already (mappers.rs, remote.rs) and settle here; fork and exec are in mappers.rs.
use aya_ebpf::{macros::tracepoint, programs::TracePointContext};

use super::syscalls::arg;
use crate::vmas;

/// `MREMAP_FIXED`: the new range replaces whatever was mapped there.
const MREMAP_FIXED: u64 = 2;
/// `SHM_REMAP`: the segment replaces whatever was mapped at the address.
const SHM_REMAP: u64 = 0o40000;

#[tracepoint(category = "syscalls", name = "sys_enter_munmap")]
pub fn btm_munmap(ctx: TracePointContext) -> u32 {
    if let (Some(addr), Some(len)) = (arg(&ctx, 0), arg(&ctx, 1)) {
        vmas::note_change([[addr, len], [0, 0]], false);
    }
    0
}

#[tracepoint(category = "syscalls", name = "sys_enter_mremap")]
pub fn btm_mremap(ctx: TracePointContext) -> u32 {
    let a = |n| arg(&ctx, n).unwrap_or(0);
    let (old, old_len, new_len, flags, new) = (a(0), a(1), a(2), a(3), a(4));
    let moved = if flags & MREMAP_FIXED != 0 {
        [new, new_len]
    } else {
        [0, 0]
    };
    // The old range shrinks, grows in place or moves away.
    vmas::note_change([[old, old_len.max(new_len)], moved], false);
    0
}

/// Emulated with a `MAP_FIXED` mmap of the same range.
#[tracepoint(category = "syscalls", name = "sys_enter_remap_file_pages")]
pub fn btm_remap_file_pages(ctx: TracePointContext) -> u32 {
    if let (Some(start), Some(size)) = (arg(&ctx, 0), arg(&ctx, 1)) {
        vmas::note_change([[start, size], [0, 0]], false);
    }
    0
}

/// The segment's size is not known on entry: a remap settles the whole cache.
#[tracepoint(category = "syscalls", name = "sys_enter_shmat")]
pub fn btm_shmat(ctx: TracePointContext) -> u32 {
    if arg(&ctx, 2).unwrap_or(SHM_REMAP) & SHM_REMAP != 0 {
        vmas::note_change([[0, 0], [0, 0]], true);
    }
    0
}

#[tracepoint(category = "syscalls", name = "sys_exit_munmap")]
pub fn btm_exit_munmap(_ctx: TracePointContext) -> u32 {
    vmas::settle();
    0
}

#[tracepoint(category = "syscalls", name = "sys_exit_mremap")]
pub fn btm_exit_mremap(_ctx: TracePointContext) -> u32 {
    vmas::settle();
    0
}

#[tracepoint(category = "syscalls", name = "sys_exit_remap_file_pages")]
pub fn btm_exit_remap_file_pages(_ctx: TracePointContext) -> u32 {
    vmas::settle();
    0
}

#[tracepoint(category = "syscalls", name = "sys_exit_shmat")]
pub fn btm_exit_shmat(_ctx: TracePointContext) -> u32 {
    vmas::settle();
    0
}

#[tracepoint(category = "syscalls", name = "sys_exit_mmap")]
pub fn btm_exit_mmap(_ctx: TracePointContext) -> u32 {
    vmas::settle();
    0
}

#[tracepoint(category = "syscalls", name = "sys_exit_madvise")]
pub fn btm_exit_madvise(_ctx: TracePointContext) -> u32 {
    vmas::settle();
    0
}
