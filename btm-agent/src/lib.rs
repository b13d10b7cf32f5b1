//! btm-agent: the userspace half of btm (`docs/ARCHITECTURE.md` follows a dirty block through it).
//!
//! * [`tracker`] loads the eBPF programs and drains the dirty-extent bitmap.
//! * [`cut`] captures a height: flips, walks the volume, reads what changed, freezes briefly.
//! * [`log`] is the append-only incremental log (format: `docs/FORMAT.md`), its streaming
//!   writer, replay and verification.
//! * [`remote`] keeps offsite copies of the log in object stores (the `btm-remote` crate) and
//!   ships each new height in the background.
//! * [`store`] is where kept heights live, behind one trait: the log (eBPF mode) or native
//!   snapshots; [`snapshot`] holds the native-snapshot backends (ZFS, Btrfs).
//! * [`retention`] decides which heights are kept (BTM's fair and fade); [`pins`] keeps the
//!   heights an operator pinned out of its reach.
//! * [`heights`] polls nodes for their height; [`cmd`] is the command line and the socket.
//! * [`volume`] finds the mount and freezes it; [`dirfd`] and [`treehash`] walk trees by
//!   descriptor; [`conn`] and [`metrics`] serve connections and Prometheus metrics;
//!   [`config`] reads the configuration file.

pub mod cmd;
/// The log lives in its own crate (`btm-log`, no eBPF toolchain needed); re-exported here.
pub use btm_log as log;
pub use btm_log::dirfd;
pub mod config;
pub mod conn;
pub mod cut;
pub mod heap;
pub mod heights;
pub mod metrics;
pub mod pins;
pub mod rcu;
pub mod remote;
pub mod retention;
pub mod snapshot;
pub mod store;
pub mod tracker;
pub mod treehash;
pub mod volume;
