//! One program per file. Precise (byte-range) events first, the folio event as the safety net.
mod btrfs;
mod ext4;
mod fault;
mod folio;
mod iomap;
mod mappers;
mod remote;
mod syscalls;
mod unmaps;
mod uring;
mod xfs;
