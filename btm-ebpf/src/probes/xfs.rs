//! `xfs:xfs_itruncate_extents_start`: xfs truncates, whatever started them (truncate(2) by
//! path, O_TRUNC, ftruncate), with the new size.
use aya_ebpf::{macros::tracepoint, programs::TracePointContext};
use btm_common::dirty::WHY_TRUNCATE;

use crate::{kernel::config, mark::mark_tail};

#[tracepoint(category = "xfs", name = "xfs_itruncate_extents_start")]
pub fn btm_xfs_itruncate(ctx: TracePointContext) -> u32 {
    let _ = try_itruncate(&ctx);
    0
}

#[inline(always)]
fn try_itruncate(ctx: &TracePointContext) -> Option<()> {
    let cfg = config()?;
    let tp = &cfg.xfs_itruncate;
    // SAFETY: offsets come from this kernel's tracefs format file.
    let dev: u32 = unsafe { ctx.read_at(tp.dev as usize).ok()? };
    if dev != cfg.target_dev {
        return None;
    }
    let ino: u64 = unsafe { ctx.read_at(tp.ino as usize).ok()? };
    let new_size: u64 = unsafe { ctx.read_at(tp.pos as usize).ok()? };
    mark_tail(dev, ino, new_size, WHY_TRUNCATE);
    Some(())
}
