//! System calls that unmap or move mappings: each gives the calling process a fresh
//! generation of the fault probe's mapping cache before it changes anything (`vmas`).
//! `mmap` (MAP_FIXED), huge-page `madvise`, fork and exec are handled where they are probed
//! already (mappers.rs, remote.rs).
use aya_ebpf::{macros::tracepoint, programs::TracePointContext};

use crate::{kernel::current_tgid, vmas};

#[tracepoint(category = "syscalls", name = "sys_enter_munmap")]
pub fn btm_munmap(_ctx: TracePointContext) -> u32 {
    vmas::invalidate(current_tgid());
    0
}

#[tracepoint(category = "syscalls", name = "sys_enter_mremap")]
pub fn btm_mremap(_ctx: TracePointContext) -> u32 {
    vmas::invalidate(current_tgid());
    0
}

/// Emulated with a `MAP_FIXED` mmap of the same range.
#[tracepoint(category = "syscalls", name = "sys_enter_remap_file_pages")]
pub fn btm_remap_file_pages(_ctx: TracePointContext) -> u32 {
    vmas::invalidate(current_tgid());
    0
}

/// `SHM_REMAP` replaces whatever is mapped at the address.
#[tracepoint(category = "syscalls", name = "sys_enter_shmat")]
pub fn btm_shmat(_ctx: TracePointContext) -> u32 {
    vmas::invalidate(current_tgid());
    0
}
