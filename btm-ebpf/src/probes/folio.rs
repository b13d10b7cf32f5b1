//! `writeback:writeback_dirty_folio` (tp_btf): a clean folio became dirty. Fires for every
//! buffered write path and for stores through shared mappings, once per clean->dirty
//! transition. The BTF form hands us the `struct folio *`, from which the real (large) folio
//! size is read, so a large folio never under-marks.
//!
//! The event is suppressed only when the same task's precise range caused it (a write
//! syscall, or a write-protect fault that makes exactly one PTE writable); the folio is then
//! recorded as partially marked. Not when the folio is PMD-sized and the fault's mapping may
//! map it by PMD: then the whole folio became writable.
use aya_ebpf::{macros::btf_tracepoint, programs::BtfTracePointContext};
use btm_common::dirty::{BLOCK_SHIFT, PMD_ORDER, PRECISE_PMD, stat};

use crate::{
    kernel::{config, load, tracked_inode_typed, typed},
    mark::{count, covered_by_precise, mark_range, note_partial},
};

#[btf_tracepoint(function = "writeback_dirty_folio")]
pub fn btm_dirty_folio(ctx: BtfTracePointContext) -> u32 {
    let folio: *const u8 = ctx.arg(0);
    let mapping: *const u8 = ctx.arg(1);
    let _ = try_dirty_folio(folio, mapping);
    0
}

#[inline(always)]
fn try_dirty_folio(folio: *const u8, mapping: *const u8) -> Option<()> {
    let cfg = config()?;
    let inode: *const u8 = load(mapping, typed!(mapping_host))?;
    let (dev, ino) = tracked_inode_typed(cfg, inode)?;
    let index: u64 = load(folio, typed!(folio_index))?;
    let flags: u64 = load(folio, typed!(folio_flags))?;
    let order = if flags & (1u64 << (cfg.pg_head_bit & 63)) != 0 {
        load::<u64>(folio, typed!(folio_flags1))? & 0xff
    } else {
        0
    };
    // Orders above 18 (1 GiB) do not exist for page cache folios; clamp for the verifier.
    let order = if order > 18 { 18 } else { order };
    let start = index << BLOCK_SHIFT;
    let end = start + (1u64 << (BLOCK_SHIFT as u64 + order));
    if cfg.suppress != 0
        && let Some(flags) = covered_by_precise(dev, ino, start, end)
    {
        if flags & PRECISE_PMD != 0 && order >= PMD_ORDER {
            // A write-protect fault on a folio a PMD may map: the refault after the PMD split
            // maps all of it writable, and later stores into it fault no more.
            count(stat::FAULT_WIDE);
        } else if order == 0 || note_partial(dev, ino, index, order) {
            count(stat::FOLIO_SUPPRESSED);
            return Some(());
        }
    }
    count(stat::FOLIO_MARKED);
    mark_range(dev, ino, start, end);
    Some(())
}
