//! `io_uring:io_uring_submit_req` and `io_uring:io_uring_complete` (tp_btf): io_uring's
//! fallocate and ftruncate call the filesystem without the system calls the range-call probes
//! watch (`syscalls.rs`). A punched, zeroed or shifted range dirties no folio, and growth by
//! either dirties none on ext4 and btrfs: without this nothing marks them.
//!
//! The request's file is marked whole (its arguments live in the request's private command
//! data, which no tracepoint describes): over-marking costs a read of that file, and these
//! operations are rare. It is marked at submission and again at completion, so that the mark
//! lands in the epoch of the change even when the request ran later, on a worker thread.
use aya_ebpf::{macros::btf_tracepoint, programs::BtfTracePointContext};
use btm_common::dirty::{WHY_RANGE_SHIFT, stat};

use crate::{
    kernel::{config, read, tracked_file},
    mark::{count, mark_tail},
};

const IORING_OP_FALLOCATE: u8 = 17;
const IORING_OP_FTRUNCATE: u8 = 55;

/// `trace_io_uring_submit_req(struct io_kiocb *req)`.
#[btf_tracepoint(function = "io_uring_submit_req")]
pub fn btm_uring_submit(ctx: BtfTracePointContext) -> u32 {
    let req: *const u8 = ctx.arg(0);
    let _ = range_request(req);
    0
}

/// `trace_io_uring_complete(struct io_ring_ctx *ctx, void *req, struct io_uring_cqe *cqe)`;
/// `req` is null for completions no request posts.
#[btf_tracepoint(function = "io_uring_complete")]
pub fn btm_uring_complete(ctx: BtfTracePointContext) -> u32 {
    let req: *const u8 = ctx.arg(1);
    let _ = range_request(req);
    0
}

#[inline(always)]
fn range_request(req: *const u8) -> Option<()> {
    let cfg = config()?;
    let op: u8 = read(req, cfg.kiocb_opcode)?;
    if op != IORING_OP_FALLOCATE && op != IORING_OP_FTRUNCATE {
        return None;
    }
    let (dev, ino) = tracked_file(cfg, read(req, cfg.kiocb_file)?)?;
    count(stat::RANGE_CALLS);
    mark_tail(dev, ino, 0, WHY_RANGE_SHIFT);
    Some(())
}
