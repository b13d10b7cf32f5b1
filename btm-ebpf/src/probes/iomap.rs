//! `iomap:iomap_iter`: byte-precise ranges for iomap-based writes (xfs buffered and direct,
//! ext4 and btrfs direct I/O), including zeroing. Page-fault iterations cover whole folios and
//! are left to the fault and folio probes.
use aya_ebpf::{macros::tracepoint, programs::TracePointContext};

use crate::{
    kernel::config,
    mark::{mark_precise, mark_range},
};

#[tracepoint(category = "iomap", name = "iomap_iter")]
pub fn btm_iomap_iter(ctx: TracePointContext) -> u32 {
    let _ = try_iomap_iter(&ctx);
    0
}

#[inline(always)]
fn try_iomap_iter(ctx: &TracePointContext) -> Option<()> {
    let cfg = config()?;
    let tp = &cfg.iomap_iter;
    // SAFETY: offsets come from this kernel's tracefs format file.
    let flags: u32 = unsafe { ctx.read_at(tp.flags as usize).ok()? };
    if flags & (cfg.iomap_flag_write | cfg.iomap_flag_zero) == 0
        || flags & cfg.iomap_flag_fault != 0
    {
        return None;
    }
    let dev: u32 = unsafe { ctx.read_at(tp.dev as usize).ok()? };
    if dev != cfg.target_dev {
        return None;
    }
    let ino: u64 = unsafe { ctx.read_at(tp.ino as usize).ok()? };
    let pos: u64 = unsafe { ctx.read_at(tp.pos as usize).ok()? };
    let len: u64 = unsafe { ctx.read_at(tp.len as usize).ok()? };
    let end = pos.saturating_add(len);
    if flags & cfg.iomap_flag_direct != 0 {
        // Direct I/O dirties no folio: nothing to suppress.
        mark_range(dev, ino, pos, end);
    } else {
        mark_precise(dev, ino, pos, end, 0);
    }
    Some(())
}
