//! What a cut reports: its counters and where its time went.
use std::time::Instant;

/// What one cut did, for logs, metrics and the caller.
#[derive(Clone, Debug, Default, serde::Serialize)]
pub struct CutReport {
    pub height: u64,
    /// True when every file was captured in full (baseline or resync).
    pub full: bool,
    /// How long the node's writers were blocked: from the start of the freeze (`FIFREEZE`, or
    /// the node's cgroup) to the end of the thaw (the sum of the two below and the thaw).
    pub freeze_ms: f64,
    /// The freeze itself, with the node's writers already blocked: `FIFREEZE` (its RCU grace
    /// periods, the write-back of what was dirtied since the syncs, the journal), or the
    /// cgroup freeze and its syncfs.
    pub freeze_enter_ms: f64,
    /// The frozen phase's own work, between the freeze and the thaw.
    pub frozen_work_ms: f64,
    /// The syncs just before the freeze that leave it little to write (the node still runs).
    pub presync_ms: f64,
    pub total_ms: f64,
    /// Bytes read before the freeze and inside it.
    pub read_unfrozen: u64,
    pub read_frozen: u64,
    /// Bytes of non-zero data captured.
    pub data_bytes: u64,
    pub stored_bytes: u64,
    /// Bytes captured but left out because the log already held them at that place.
    pub unchanged_bytes: u64,
    /// Whether the unfrozen phase walked the whole tree (else it patched the namespace the
    /// last freeze left from the events since), and whether the frozen phase did (no events,
    /// or lost ones).
    pub unfrozen_walk: bool,
    pub frozen_walk: bool,
    /// On a height whose unfrozen phase walked to check the namespace kept from events:
    /// the paths the events had missed (0 unless the kernel lost events without saying so).
    pub namespace_missed: usize,
    /// Entries the frozen phase stat'ed or walked, and files it opened: what the freeze cost
    /// in system calls, which must follow what changed, not the size of the tree.
    pub frozen_entries: u64,
    pub frozen_opens: u64,
    pub files_changed: u64,
    pub ops: usize,
    /// Paths the record was built from: every path after a walk, only those changed since
    /// the last height when the namespace was kept from events (the cost follows those).
    pub record_paths: usize,
    /// Where the cut's time went, phase by phase (they add up to about `total_ms`).
    pub phases_ms: PhaseTimes,
    /// Bytes the volume's block device wrote during phase 1's syncfs: the dirty pages written
    /// back, which on xfs and ext4 is the whole large folio for every store through a mapping
    /// (what a syncfs costs follows those, not what changed). `None` where the device has no
    /// statistics (btrfs's anonymous device).
    pub synced_bytes: Option<u64>,
}

/// A cut's phases, in milliseconds: what a profile of a height starts from.
#[derive(Clone, Debug, Default, serde::Serialize)]
pub struct PhaseTimes {
    /// Flipping the tracker's epoch and the syncfs that writes dirty pages back (which
    /// write-protects every shared mapping again, so the next store faults).
    pub syncfs: f64,
    /// Draining the epoch's marks from the tracker (and resolving deferred faults).
    pub drain: f64,
    /// The namespace before the freeze (a walk, or the one kept from events patched).
    pub namespace: f64,
    /// Reading, compressing, hashing and appending what phase 1 wants, then flushing it.
    pub read: f64,
    /// The syncs before the freeze, freezing, the frozen phase and the thaw.
    pub frozen: f64,
    /// The record: the namespace diffed against the tip, its metadata, the commit and its
    /// fsync.
    pub record: f64,
}

/// A stopwatch for [`PhaseTimes`]: each `next` is the time since the last one.
pub(super) struct Lap(pub(super) Instant);

impl Lap {
    pub(super) fn next(&mut self) -> f64 {
        let now = Instant::now();
        (now - std::mem::replace(&mut self.0, now)).as_secs_f64() * 1000.0
    }
}

/// Bytes written by the block device `major:minor` since boot (`/sys/dev/block/M:m/stat`,
/// sectors written, in 512-byte units whatever the device's sector size).
pub(super) fn device_written(major: u32, minor: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/sys/dev/block/{major}:{minor}/stat")).ok()?;
    let sectors: u64 = stat.split_whitespace().nth(6)?.parse().ok()?;
    Some(sectors * 512)
}
