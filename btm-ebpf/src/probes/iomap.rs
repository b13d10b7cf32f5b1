//! `iomap_iter` (tp_btf): byte-precise ranges for iomap-based writes (xfs buffered and direct,
//! ext4 and btrfs direct I/O), including zeroing. Page-fault iterations cover whole folios and
//! are left to the fault and folio probes. Direct reads by a mapping process are counted
//! (`REMOTE_WRITES`): their buffer may be a shared mapping of a tracked file.
//!
//! The range comes from the `struct iomap_iter` itself: `[pos, pos + len)` is what is left of
//! the operation, the whole of it on the first iteration. The tracepoint record's `length` must
//! not be used: it is `iomap_length()` of the mapping of the previous iteration, which is 0
//! on every iteration after the first, and on the first one too when the operation starts at
//! file offset 0 (`0 - pos` of the still empty mapping is 0 there): an O_DIRECT write at
//! offset 0 would go unmarked.
use aya_ebpf::{macros::btf_tracepoint, programs::BtfTracePointContext};
use btm_common::dirty::stat;

use crate::{
    kernel::{config, current_tgid, load, tracked_inode_typed, typed},
    maps::MAPPERS,
    mark::{count, mark_precise, mark_range},
};

#[btf_tracepoint(function = "iomap_iter")]
pub fn btm_iomap_iter(ctx: BtfTracePointContext) -> u32 {
    let iter: *const u8 = ctx.arg(0);
    let _ = try_iomap_iter(iter);
    0
}

#[inline(always)]
fn try_iomap_iter(iter: *const u8) -> Option<()> {
    let cfg = config()?;
    let flags: u32 = load(iter, typed!(iomap_iter_flags))?;
    if flags & (cfg.iomap_flag_write | cfg.iomap_flag_zero) == 0 {
        // A direct read by a mapping process may land in a shared mapping of a tracked file:
        // its pages are pinned and written without a fault the programs see (remote.rs).
        if flags & cfg.iomap_flag_direct != 0
            // SAFETY: value not kept.
            && unsafe { MAPPERS.get(&current_tgid()) }.is_some()
        {
            count(stat::REMOTE_WRITES);
        }
        return None;
    }
    if flags & cfg.iomap_flag_fault != 0 {
        return None;
    }
    // Every operation ends with a call that finds nothing left (`len` 0): half of the runs
    // on a 4 KiB write, and nothing to mark.
    let len: u64 = load(iter, typed!(iomap_iter_len))?;
    if len == 0 {
        return None;
    }
    let inode: *const u8 = load(iter, typed!(iomap_iter_inode))?;
    let (dev, ino) = tracked_inode_typed(cfg, inode)?;
    let pos: u64 = load(iter, typed!(iomap_iter_pos))?;
    let end = pos.saturating_add(len);
    if flags & cfg.iomap_flag_direct != 0 {
        // Direct I/O dirties no folio: nothing to suppress.
        mark_range(dev, ino, pos, end);
    } else {
        mark_precise(dev, ino, pos, end, 0);
    }
    Some(())
}
