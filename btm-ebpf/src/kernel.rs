//! Reading kernel memory through offsets resolved by the agent.
use aya_ebpf::helpers::{bpf_get_current_task, bpf_probe_read_kernel};
use btm_common::config::{Config, Typed};

use crate::maps::CONFIG;

/// Offsets for typed loads ([`load`]), set by the agent before load. Read-only data: the
/// verifier reads the value the agent set, so each offset is a constant to it.
#[unsafe(no_mangle)]
pub(crate) static BTM_TYPED: Typed = Typed::UNSET;

/// One offset of [`BTM_TYPED`]. The volatile read keeps the compiler from folding in the
/// object's zero; the verifier folds in the agent's value instead.
macro_rules! typed {
    ($field:ident) => {
        // SAFETY: a read of a static.
        unsafe { core::ptr::read_volatile(&raw const $crate::kernel::BTM_TYPED.$field) }
    };
}
pub(crate) use typed;

/// Reads a `T` at `base + off` of a BTF-typed pointer: a `tp_btf` program's argument, or a
/// pointer read from one with this function. `off` must come from [`typed!`]: the verifier
/// checks the load against the kernel's BTF at that constant offset, and a load through a
/// stale pointer yields 0 instead of faulting. The verifier wants NULL checked first.
#[inline(always)]
pub fn load<T>(base: *const u8, off: u32) -> Option<T> {
    if base.is_null() {
        return None;
    }
    // SAFETY: verified as a BTF-typed access; the kernel handles a faulting address.
    Some(unsafe { core::ptr::read_volatile(base.wrapping_add(off as usize) as *const T) })
}

/// The agent's configuration, or None before it is ready (programs then do nothing).
#[inline(always)]
pub fn config() -> Option<&'static Config> {
    let cfg = CONFIG.get(0)?;
    (cfg.ready != 0).then_some(cfg)
}

/// Reads a `T` at `base + off`.
#[inline(always)]
pub fn read<T>(base: *const u8, off: u32) -> Option<T> {
    if base.is_null() {
        return None;
    }
    // SAFETY: bpf_probe_read_kernel validates the address; a fault yields an error.
    unsafe { bpf_probe_read_kernel(base.wrapping_add(off as usize) as *const T).ok() }
}

/// (sb->s_dev, i_ino) of an inode, if it is on the tracked filesystem.
#[inline(always)]
pub fn tracked_inode(cfg: &Config, inode: *const u8) -> Option<(u32, u64)> {
    let sb: *const u8 = read(inode, cfg.inode_sb)?;
    let dev: u32 = read(sb, cfg.sb_dev)?;
    if dev != cfg.target_dev {
        return None;
    }
    Some((dev, read(inode, cfg.inode_ino)?))
}

/// [`tracked_inode`] through a BTF-typed inode pointer.
#[inline(always)]
pub fn tracked_inode_typed(cfg: &Config, inode: *const u8) -> Option<(u32, u64)> {
    let sb: *const u8 = load(inode, typed!(inode_sb))?;
    let dev: u32 = load(sb, typed!(sb_dev))?;
    if dev != cfg.target_dev {
        return None;
    }
    Some((dev, load(inode, typed!(inode_ino))?))
}

/// The `struct file *` behind one of the current task's descriptors.
#[inline(always)]
pub fn current_file(cfg: &Config, fd: u64) -> Option<*const u8> {
    // SAFETY: returns the current task pointer; only ever read through probe_read.
    let task = unsafe { bpf_get_current_task() } as *const u8;
    let files: *const u8 = read(task, cfg.task_files)?;
    let fdt: *const u8 = read(files, cfg.files_fdt)?;
    let max: u32 = read(fdt, cfg.fdt_max_fds)?;
    if fd >= max as u64 {
        return None;
    }
    let fds: *const u8 = read(fdt, cfg.fdt_fd)?;
    read(fds, (fd * 8) as u32)
}

/// (dev, ino) of an open file whose inode is on the tracked filesystem.
#[inline(always)]
pub fn tracked_file(cfg: &Config, file: *const u8) -> Option<(u32, u64)> {
    tracked_inode(cfg, read(file, cfg.file_inode)?)
}

/// (dev, ino, file) of a descriptor whose inode is on the tracked filesystem.
#[inline(always)]
pub fn tracked_fd(cfg: &Config, fd: u64) -> Option<(u32, u64, *const u8)> {
    let file = current_file(cfg, fd)?;
    let (dev, ino) = tracked_file(cfg, file)?;
    Some((dev, ino, file))
}

/// The current process (tgid).
#[inline(always)]
pub fn current_tgid() -> u32 {
    (aya_ebpf::helpers::bpf_get_current_pid_tgid() >> 32) as u32
}
