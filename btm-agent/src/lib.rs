//! btm-agent: the userspace half of btm.
//!
//! * [`tracker`] loads the eBPF programs and drains the dirty-extent bitmap.
//! * [`log`] is the append-only incremental log (format: `docs/FORMAT.md`).
//! * [`retention`] decides which heights are kept (BTM's fair and fade).
//! * [`snapshot`] holds the native-snapshot modes (ZFS, Btrfs).

pub mod cmd;
pub mod config;
pub mod conn;
pub mod cut;
pub mod dirfd;
pub mod heights;
pub mod log;
pub mod metrics;
pub mod remote;
pub mod retention;
pub mod snapshot;
pub mod tracker;
pub mod treehash;
pub mod volume;
