//! ext4 buffered writes: `ext4:ext4_da_write_begin` (delalloc) and `ext4:ext4_write_begin`
//! give (pos, len) of each write per folio; `ext4_truncate_enter` (tp_btf) gives the inode
//! whose `i_size` is already the new, smaller size.
use aya_ebpf::{
    macros::{btf_tracepoint, tracepoint},
    programs::{BtfTracePointContext, TracePointContext},
};
use btm_common::dirty::WHY_TRUNCATE;

use crate::{
    kernel::{config, read, tracked_inode},
    mark::{mark_precise, mark_tail},
};

#[tracepoint(category = "ext4", name = "ext4_da_write_begin")]
pub fn btm_ext4_da_write_begin(ctx: TracePointContext) -> u32 {
    let _ = write_begin(&ctx);
    0
}

#[tracepoint(category = "ext4", name = "ext4_write_begin")]
pub fn btm_ext4_write_begin(ctx: TracePointContext) -> u32 {
    let _ = write_begin(&ctx);
    0
}

#[inline(always)]
fn write_begin(ctx: &TracePointContext) -> Option<()> {
    let cfg = config()?;
    let tp = &cfg.ext4_write_begin;
    // SAFETY: offsets come from this kernel's tracefs format file.
    let dev: u32 = unsafe { ctx.read_at(tp.dev as usize).ok()? };
    if dev != cfg.target_dev {
        return None;
    }
    let ino: u64 = unsafe { ctx.read_at(tp.ino as usize).ok()? };
    let pos: u64 = unsafe { ctx.read_at(tp.pos as usize).ok()? };
    let len: u64 = if tp.len_size == 4 {
        unsafe { ctx.read_at::<u32>(tp.len as usize).ok()? as u64 }
    } else {
        unsafe { ctx.read_at::<u64>(tp.len as usize).ok()? }
    };
    mark_precise(dev, ino, pos, pos.saturating_add(len), 0);
    Some(())
}

#[btf_tracepoint(function = "ext4_truncate_enter")]
pub fn btm_ext4_truncate(ctx: BtfTracePointContext) -> u32 {
    let inode: *const u8 = ctx.arg(0);
    let _ = truncate(inode);
    0
}

#[inline(always)]
fn truncate(inode: *const u8) -> Option<()> {
    let cfg = config()?;
    let (dev, ino) = tracked_inode(cfg, inode)?;
    let size: u64 = read(inode, cfg.inode_size)?;
    mark_tail(dev, ino, size, WHY_TRUNCATE);
    Some(())
}
