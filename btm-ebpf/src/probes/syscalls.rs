//! Range-changing system calls that dirty no page: fallocate (punch, zero, collapse, insert,
//! growth), ftruncate, copy_file_range (reflinks), FICLONE/FICLONERANGE, open with O_TRUNC,
//! and truncate(2) by path (counted only: no probe on this kernel resolves the path, so the
//! agent looks at the whole tree again when the count rises).
//!
//! Syscall records have a fixed ABI layout: 8 bytes of common header, the syscall number, then
//! each argument as 8 bytes from offset 16.
use aya_ebpf::{
    helpers::{bpf_get_current_pid_tgid, bpf_probe_read_user, bpf_probe_read_user_str_bytes},
    macros::tracepoint,
    programs::TracePointContext,
};
use btm_common::dirty::{WHY_CLONE, WHY_RANGE_SHIFT, WHY_TRUNCATE, stat};

use crate::{
    kernel::{config, read, tracked_fd},
    maps::OPEN_TRUNC,
    mark::{RangeMark, count, mark_tail, range_call, range_call_done},
};

const FALLOC_FL_KEEP_SIZE: u64 = 0x01;
const FALLOC_FL_PUNCH_HOLE: u64 = 0x02;
const FALLOC_FL_COLLAPSE_RANGE: u64 = 0x08;
const FALLOC_FL_ZERO_RANGE: u64 = 0x10;
const FALLOC_FL_INSERT_RANGE: u64 = 0x20;
const O_TRUNC: u64 = 0o1000;
const FICLONE: u64 = 0x4004_9409;
const FICLONERANGE: u64 = 0x4020_940d;

#[inline(always)]
pub(super) fn arg(ctx: &TracePointContext, n: usize) -> Option<u64> {
    // SAFETY: syscall tracepoint records hold 8-byte arguments from offset 16.
    unsafe { ctx.read_at::<u64>(16 + 8 * n).ok() }
}

#[tracepoint(category = "syscalls", name = "sys_enter_fallocate")]
pub fn btm_fallocate(ctx: TracePointContext) -> u32 {
    let _ = fallocate(&ctx);
    0
}

#[inline(always)]
fn fallocate(ctx: &TracePointContext) -> Option<()> {
    let cfg = config()?;
    let (dev, ino, file) = tracked_fd(cfg, arg(ctx, 0)?)?;
    let (mode, off, len) = (arg(ctx, 1)?, arg(ctx, 2)?, arg(ctx, 3)?);
    let end = off.saturating_add(len);
    let range = |start, end| RangeMark {
        dev,
        why: 0,
        ino,
        start,
        end,
    };
    if mode & (FALLOC_FL_COLLAPSE_RANGE | FALLOC_FL_INSERT_RANGE) != 0 {
        range_call(RangeMark {
            why: WHY_RANGE_SHIFT,
            ..range(off, 0)
        });
    } else if mode & (FALLOC_FL_PUNCH_HOLE | FALLOC_FL_ZERO_RANGE) != 0 {
        range_call(range(off, end));
    } else if mode & FALLOC_FL_KEEP_SIZE == 0 {
        // Plain allocation changes no content inside the file, but past its end it grows it
        // with zeros: marked, so the cut looks at the file's size again (no write event
        // names it between heights).
        let inode: *const u8 = read(file, cfg.file_inode)?;
        let size: u64 = read(inode, cfg.inode_size).unwrap_or(0);
        if end > size {
            range_call(range(size, end));
        }
    }
    Some(())
}

#[tracepoint(category = "syscalls", name = "sys_enter_ftruncate")]
pub fn btm_ftruncate(ctx: TracePointContext) -> u32 {
    let _ = ftruncate(&ctx);
    0
}

#[inline(always)]
fn ftruncate(ctx: &TracePointContext) -> Option<()> {
    let cfg = config()?;
    let (dev, ino, file) = tracked_fd(cfg, arg(ctx, 0)?)?;
    count(stat::RANGE_CALLS);
    // Shrinking drops [len, size); growing adds zeros at [size, len): either way everything
    // from the smaller of the two changes.
    let inode: *const u8 = read(file, cfg.file_inode)?;
    let size: u64 = read(inode, cfg.inode_size).unwrap_or(0);
    let len = arg(ctx, 1)?;
    range_call(RangeMark {
        dev,
        why: WHY_TRUNCATE,
        ino,
        start: if len < size { len } else { size },
        end: 0,
    });
    Some(())
}

#[tracepoint(category = "syscalls", name = "sys_enter_truncate")]
pub fn btm_truncate(_ctx: TracePointContext) -> u32 {
    if config().is_some() {
        count(stat::PATH_TRUNCATE);
    }
    0
}

#[tracepoint(category = "syscalls", name = "sys_enter_copy_file_range")]
pub fn btm_copy_file_range(ctx: TracePointContext) -> u32 {
    let _ = copy_file_range(&ctx);
    0
}

#[inline(always)]
fn copy_file_range(ctx: &TracePointContext) -> Option<()> {
    let cfg = config()?;
    let (dev, ino, file) = tracked_fd(cfg, arg(ctx, 2)?)?;
    let off_ptr = arg(ctx, 3)?;
    let len = arg(ctx, 4)?;
    let off: u64 = if off_ptr == 0 {
        read(file, cfg.file_pos)?
    } else {
        // SAFETY: user pointer read through the helper; a fault yields an error.
        unsafe { bpf_probe_read_user(off_ptr as *const u64).ok()? }
    };
    range_call(RangeMark {
        dev,
        why: 0,
        ino,
        start: off,
        end: off.saturating_add(len),
    });
    Some(())
}

#[tracepoint(category = "syscalls", name = "sys_enter_ioctl")]
pub fn btm_ioctl(ctx: TracePointContext) -> u32 {
    let _ = ioctl(&ctx);
    0
}

#[inline(always)]
fn ioctl(ctx: &TracePointContext) -> Option<()> {
    let cmd = arg(ctx, 1)? & 0xffff_ffff;
    if cmd != FICLONE && cmd != FICLONERANGE {
        return None;
    }
    let cfg = config()?;
    let (dev, ino, _) = tracked_fd(cfg, arg(ctx, 0)?)?;
    let tail = |start| RangeMark {
        dev,
        why: WHY_CLONE,
        ino,
        start,
        end: 0,
    };
    if cmd == FICLONE {
        range_call(tail(0));
        return Some(());
    }
    // struct file_clone_range { s64 src_fd; u64 src_offset; u64 src_length; u64 dest_offset; }
    let p = arg(ctx, 2)?;
    // SAFETY: user pointers read through the helper.
    let (len, dest) = unsafe {
        (
            bpf_probe_read_user((p + 16) as *const u64).ok()?,
            bpf_probe_read_user((p + 24) as *const u64).ok()?,
        )
    };
    range_call(if len == 0 {
        tail(dest)
    } else {
        RangeMark {
            why: 0,
            end: dest.saturating_add(len),
            ..tail(dest)
        }
    });
    Some(())
}

// The same calls' exits: what each marked at entry is marked again (`mark::range_call`).

#[tracepoint(category = "syscalls", name = "sys_exit_fallocate")]
pub fn btm_exit_fallocate(_ctx: TracePointContext) -> u32 {
    range_call_done();
    0
}

#[tracepoint(category = "syscalls", name = "sys_exit_ftruncate")]
pub fn btm_exit_ftruncate(_ctx: TracePointContext) -> u32 {
    range_call_done();
    0
}

#[tracepoint(category = "syscalls", name = "sys_exit_copy_file_range")]
pub fn btm_exit_copy_file_range(_ctx: TracePointContext) -> u32 {
    range_call_done();
    0
}

#[tracepoint(category = "syscalls", name = "sys_exit_ioctl")]
pub fn btm_exit_ioctl(_ctx: TracePointContext) -> u32 {
    range_call_done();
    0
}

/// open/openat/creat with O_TRUNC: note it at entry, resolve the returned fd at exit.
#[inline(always)]
fn note_trunc(flags: u64) {
    if flags & O_TRUNC != 0 && config().is_some() {
        let _ = OPEN_TRUNC.insert(&bpf_get_current_pid_tgid(), &1, 0);
    }
}

#[tracepoint(category = "syscalls", name = "sys_enter_openat")]
pub fn btm_enter_openat(ctx: TracePointContext) -> u32 {
    let flags = arg(&ctx, 2).unwrap_or(0);
    note_trunc(flags);
    note_mem_open(arg(&ctx, 1).unwrap_or(0), flags);
    0
}

#[tracepoint(category = "syscalls", name = "sys_enter_open")]
pub fn btm_enter_open(ctx: TracePointContext) -> u32 {
    let flags = arg(&ctx, 1).unwrap_or(0);
    note_trunc(flags);
    note_mem_open(arg(&ctx, 0).unwrap_or(0), flags);
    0
}

/// Counts an open for writing of a path ending in `/mem` (or `mem` alone): `/proc/PID/mem`,
/// through which a process's mapped pages are written with no fault (see `stat::MEM_OPENS`).
/// A longer path than the buffer is cut short and not counted; other files named `mem` are
/// counted too, which only costs some widening.
#[inline(always)]
fn note_mem_open(path: u64, flags: u64) {
    const O_ACCMODE: u64 = 3;
    if flags & O_ACCMODE == 0 || path == 0 || config().is_none() {
        return;
    }
    let mut buf = [0u8; 48];
    // SAFETY: reads a NUL-terminated user string into our stack buffer, bounded by its size.
    let Ok(s) = (unsafe { bpf_probe_read_user_str_bytes(path as *const u8, &mut buf) }) else {
        return;
    };
    let n = s.len();
    if n >= 3
        && n <= buf.len()
        && buf[(n - 3) % 48] == b'm'
        && buf[(n - 2) % 48] == b'e'
        && buf[(n - 1) % 48] == b'm'
        && (n == 3 || buf[(n - 4) % 48] == b'/')
    {
        count(stat::MEM_OPENS);
    }
}

#[tracepoint(category = "syscalls", name = "sys_enter_creat")]
pub fn btm_enter_creat(_ctx: TracePointContext) -> u32 {
    note_trunc(O_TRUNC);
    0
}

#[tracepoint(category = "syscalls", name = "sys_enter_openat2")]
pub fn btm_enter_openat2(ctx: TracePointContext) -> u32 {
    // struct open_how { u64 flags; ... }
    let flags = arg(&ctx, 2)
        .and_then(|p| unsafe { bpf_probe_read_user(p as *const u64).ok() })
        .unwrap_or(0);
    note_trunc(flags);
    note_mem_open(arg(&ctx, 1).unwrap_or(0), flags);
    0
}

#[tracepoint(category = "syscalls", name = "sys_exit_openat")]
pub fn btm_exit_openat(ctx: TracePointContext) -> u32 {
    open_exit(&ctx);
    0
}

#[tracepoint(category = "syscalls", name = "sys_exit_open")]
pub fn btm_exit_open(ctx: TracePointContext) -> u32 {
    open_exit(&ctx);
    0
}

#[tracepoint(category = "syscalls", name = "sys_exit_creat")]
pub fn btm_exit_creat(ctx: TracePointContext) -> u32 {
    open_exit(&ctx);
    0
}

#[tracepoint(category = "syscalls", name = "sys_exit_openat2")]
pub fn btm_exit_openat2(ctx: TracePointContext) -> u32 {
    open_exit(&ctx);
    0
}

#[inline(always)]
fn open_exit(ctx: &TracePointContext) {
    let tid = bpf_get_current_pid_tgid();
    // SAFETY: value copied out immediately.
    if unsafe { OPEN_TRUNC.get(&tid) }.is_none() {
        return;
    }
    let _ = OPEN_TRUNC.remove(&tid);
    // sys_exit records: common header, syscall nr, then `long ret` at offset 16.
    let ret: i64 = match unsafe { ctx.read_at::<i64>(16) } {
        Ok(r) => r,
        Err(_) => return,
    };
    if ret < 0 {
        return;
    }
    if let Some(cfg) = config()
        && let Some((dev, ino, _)) = tracked_fd(cfg, ret as u64)
    {
        count(stat::RANGE_CALLS);
        mark_tail(dev, ino, 0, WHY_TRUNCATE);
    }
}
