//! Types shared by the eBPF programs (`btm-ebpf`) and the userspace agent (`btm-agent`).
//!
//! Everything here is `#[repr(C)]` and plain data: both sides read the same bytes out of the
//! same BPF maps. The `user` feature adds the `aya::Pod` impls the agent needs.
#![no_std]

pub mod config;
pub mod dirty;

#[cfg(feature = "user")]
mod user {
    use super::{
        config::{Config, Typed},
        dirty::*,
    };
    // SAFETY: all of these are repr(C) plain data without padding holes that matter.
    unsafe impl aya::Pod for Config {}
    unsafe impl aya::Pod for Typed {}
    unsafe impl aya::Pod for ChunkKey {}
    unsafe impl aya::Pod for ProcKey {}
    unsafe impl aya::Pod for Chunk {}
    unsafe impl aya::Pod for FileKey {}
    unsafe impl aya::Pod for FileMark {}
    unsafe impl aya::Pod for PreciseRange {}
}
