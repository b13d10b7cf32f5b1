//! Which processes map files of the tracked volume shared (`MAPPERS`). A write fault that
//! `bpf_find_vma` cannot resolve (busy) only matters in such a process; the agent seeds the
//! set from /proc, these probes keep it current. Mappings made read-only count too (mprotect
//! can make them writable later); over-inclusion only costs some widening.
use aya_ebpf::{
    helpers::bpf_get_current_task,
    macros::{btf_tracepoint, tracepoint},
    programs::{BtfTracePointContext, TracePointContext},
};

use crate::{
    kernel::{config, current_tgid, read, tracked_fd},
    maps::{CALIB, MAPPERS},
    vmas,
};

/// `MAP_SHARED` (also set in `MAP_SHARED_VALIDATE`).
const MAP_SHARED: u64 = 0x01;
/// `FMODE_WRITE` in `struct file.f_mode`.
const FMODE_WRITE: u32 = 0x2;
/// `MAP_FIXED`: replaces whatever was mapped there (`MAP_FIXED_NOREPLACE` never does).
const MAP_FIXED: u64 = 0x10;

#[tracepoint(category = "syscalls", name = "sys_enter_mmap")]
pub fn btm_enter_mmap(ctx: TracePointContext) -> u32 {
    let _ = mmap(&ctx);
    0
}

#[inline(always)]
fn mmap(ctx: &TracePointContext) -> Option<()> {
    calibrate();
    // SAFETY: syscall records hold 8-byte arguments from offset 16: flags is the 4th, fd the 5th.
    let flags: u64 = unsafe { ctx.read_at(16 + 8 * 3).ok()? };
    if flags & MAP_FIXED != 0 {
        // It may replace mappings the fault cache holds (any mapping, shared or not); other
        // mappings go where nothing is mapped.
        // SAFETY: as above: addr is the 1st argument, length the 2nd.
        let (addr, len): (u64, u64) = unsafe { (ctx.read_at(16).ok()?, ctx.read_at(16 + 8).ok()?) };
        vmas::note_change([[addr, len], [0, 0]], false);
    }
    if flags & MAP_SHARED == 0 {
        return None;
    }
    let cfg = config()?;
    let fd: u64 = unsafe { ctx.read_at(16 + 8 * 4).ok()? };
    let (_, _, file) = tracked_fd(cfg, fd)?;
    // A file not open for writing can never be stored into through its mapping (mprotect
    // cannot add write access to it): readers that map (restic, rsync) are not mappers, so
    // their own faults cost nothing here and never need resolving.
    if read::<u32>(file, cfg.file_mode).is_some_and(|m| m & FMODE_WRITE == 0) {
        return None;
    }
    let tgid = current_tgid();
    let _ = MAPPERS.insert(&tgid, &1, 0);
    // A generation from the start, so that even the first fault can be deferred.
    let _ = vmas::generation(tgid);
    Some(())
}

/// Records the current process's `mm->flags` word when the agent asked for it (`CALIB`).
#[inline(always)]
fn calibrate() -> Option<()> {
    let slot = CALIB.get_ptr_mut(&current_tgid())?;
    let cfg = config()?;
    // SAFETY: the current task pointer, only read through probe_read.
    let task = unsafe { bpf_get_current_task() } as *const u8;
    let mm: *const u8 = read(task, cfg.task_mm)?;
    let word: u64 = read(mm, cfg.mm_flags)?;
    // SAFETY: points into a live map value.
    unsafe { *slot = [1, word] };
    Some(())
}

/// A child inherits its parent's mappings.
#[btf_tracepoint(function = "sched_process_fork")]
pub fn btm_fork(ctx: BtfTracePointContext) -> u32 {
    let parent: *const u8 = ctx.arg(0);
    let child: *const u8 = ctx.arg(1);
    let _ = fork(parent, child);
    0
}

#[inline(always)]
fn fork(parent: *const u8, child: *const u8) -> Option<()> {
    let cfg = config()?;
    let tgid: i32 = read(child, cfg.task_tgid)?;
    let tgid = tgid as u32;
    let me = current_tgid();
    if tgid != me {
        // A process, not a thread: it may reuse a dead process's pid, and may share our
        // address space (vfork, posix_spawn) without sharing our pid.
        let mm = read::<u64>(child, cfg.task_mm);
        let shared = mm.is_some() && mm == read::<u64>(parent, cfg.task_mm);
        vmas::on_fork(me, tgid, shared);
    }
    // SAFETY: value copied out immediately.
    unsafe { MAPPERS.get(&me) }?;
    let _ = MAPPERS.insert(&tgid, &1, 0);
    let _ = vmas::generation(tgid);
    Some(())
}

/// A new program image: a new address space, with none of the mappings a child inherited
/// from a mapping parent (restic, rsync, a shell a node spawns): no longer a mapper until it
/// maps the volume itself.
#[btf_tracepoint(function = "sched_process_exec")]
pub fn btm_exec(_ctx: BtfTracePointContext) -> u32 {
    let tgid = current_tgid();
    vmas::on_exec(tgid);
    let _ = MAPPERS.remove(&tgid);
    0
}
