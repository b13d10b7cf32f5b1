//! btm's kernel side: tracepoint programs that mark the 4 KiB blocks changed in the tracked
//! filesystem, per (device, inode), in the bitmap of the current epoch.
//!
//! One probe per file under `probes/`; `mark` owns the bitmap, `kernel` reads kernel structs
//! through the offsets the agent resolved from BTF (Rust eBPF has no CO-RE).
#![no_std]
#![no_main]
// The bpf target has no AtomicU64::fetch_or; the intrinsic lowers to BPF_ATOMIC|BPF_OR.
#![allow(internal_features)]
#![feature(core_intrinsics)]

mod kernel;
mod maps;
mod mark;
mod probes;
mod vmas;

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 4] = *b"GPL\0";
