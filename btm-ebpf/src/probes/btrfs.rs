//! btrfs truncates by any route (truncate(2) by path included): `btrfs_truncate_show_fi_*`
//! (tp_btf) fire for each file extent item dropped, with the `btrfs_inode` whose `i_size` is
//! already the new size. A tail that had no extent items held no data, so nothing changes there.
use aya_ebpf::{macros::btf_tracepoint, programs::BtfTracePointContext};
use btm_common::dirty::WHY_TRUNCATE;

use crate::{
    kernel::{config, read, tracked_inode},
    mark::mark_tail,
};

#[btf_tracepoint(function = "btrfs_truncate_show_fi_regular")]
pub fn btm_btrfs_truncate_regular(ctx: BtfTracePointContext) -> u32 {
    let _ = truncate(ctx.arg(0));
    0
}

#[btf_tracepoint(function = "btrfs_truncate_show_fi_inline")]
pub fn btm_btrfs_truncate_inline(ctx: BtfTracePointContext) -> u32 {
    let _ = truncate(ctx.arg(0));
    0
}

#[inline(always)]
fn truncate(bi: *const u8) -> Option<()> {
    let cfg = config()?;
    if cfg.btrfs_vfs_inode == u32::MAX || bi.is_null() {
        return None;
    }
    let inode = bi.wrapping_add(cfg.btrfs_vfs_inode as usize);
    let (dev, ino) = tracked_inode(cfg, inode)?;
    let size: u64 = read(inode, cfg.inode_size)?;
    mark_tail(dev, ino, size, WHY_TRUNCATE);
    Some(())
}
