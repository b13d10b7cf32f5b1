//! Writes into mapped pages that take no fault the fault probes see: `get_user_pages` with
//! FOLL_WRITE faults pages in from inside the kernel (`handle_mm_fault`, no exception
//! tracepoint), may map a whole folio writable, and writes through the kernel's own mapping.
//! A clean folio still fires its folio event; a folio that is already dirty with only part of
//! it marked does not. So each such call is counted, and the agent marks partially-marked
//! folios whole at the next cut (like an unresolved fault):
//! - `madvise(MADV_POPULATE_WRITE)` by a process that maps the volume;
//! - `process_vm_writev` and `ptrace(PTRACE_POKETEXT|POKEDATA)`, into any process (the target
//!   may be any thread of a mapping process: counting every call is simpler and they are rare);
//! - direct reads (O_DIRECT, io_uring) by a mapping process, counted in iomap.rs.
//!
//! Writes through `/proc/PID/mem` are caught at its open for writing (syscalls.rs,
//! `MEM_OPENS`): a probe on every write system call of the host would cost too much, so after
//! such an open every cut widens.
use aya_ebpf::{macros::tracepoint, programs::TracePointContext};
use btm_common::dirty::stat;

use super::syscalls::arg;
use crate::{
    kernel::{config, current_tgid},
    maps::MAPPERS,
    mark::count,
    vmas,
};

const MADV_HUGEPAGE: u64 = 14;
const MADV_NOHUGEPAGE: u64 = 15;
const MADV_POPULATE_WRITE: u64 = 23;
const PTRACE_POKETEXT: u64 = 4;
const PTRACE_POKEDATA: u64 = 5;

#[tracepoint(category = "syscalls", name = "sys_enter_madvise")]
pub fn btm_madvise(ctx: TracePointContext) -> u32 {
    let advice = arg(&ctx, 2);
    if advice == Some(MADV_HUGEPAGE) || advice == Some(MADV_NOHUGEPAGE) {
        // Whether a PMD may map the range changes: the fault cache holds that.
        vmas::invalidate(current_tgid());
    }
    if advice == Some(MADV_POPULATE_WRITE)
        && config().is_some()
        // SAFETY: value not kept.
        && unsafe { MAPPERS.get(&current_tgid()) }.is_some()
    {
        count(stat::REMOTE_WRITES);
    }
    0
}

#[tracepoint(category = "syscalls", name = "sys_enter_process_vm_writev")]
pub fn btm_process_vm_writev(_ctx: TracePointContext) -> u32 {
    if config().is_some() {
        count(stat::REMOTE_WRITES);
    }
    0
}

#[tracepoint(category = "syscalls", name = "sys_enter_ptrace")]
pub fn btm_ptrace(ctx: TracePointContext) -> u32 {
    let req = arg(&ctx, 0).unwrap_or(0);
    if (req == PTRACE_POKETEXT || req == PTRACE_POKEDATA) && config().is_some() {
        count(stat::REMOTE_WRITES);
    }
    0
}
