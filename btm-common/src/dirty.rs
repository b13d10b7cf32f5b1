//! The dirty-extent bitmap: what the kernel side writes and the agent drains.
//!
//! A file's blocks are grouped in chunks of [`BLOCKS_PER_CHUNK`] 4 KiB blocks; each chunk that
//! saw a change is one hash-map entry holding one bit per block. Memory therefore grows with the
//! number of touched chunks (one bit per block plus a fixed key/entry overhead), and is bounded by
//! the map's `max_entries`. When a chunk cannot be inserted the file degrades to a [`FileMark`]
//! with `dirty_from = 0` ("whole file dirty"), which is counted, never silent.

/// Bytes per tracked block. Equal to the page size on every architecture we support.
pub const BLOCK_SIZE: u64 = 4096;
pub const BLOCK_SHIFT: u32 = 12;
/// Blocks covered by one [`Chunk`]: 512 blocks = 2 MiB of file per map entry.
pub const BLOCKS_PER_CHUNK: u64 = 512;
pub const CHUNK_WORDS: usize = (BLOCKS_PER_CHUNK / 64) as usize;
/// `dirty_from` value meaning "no tail of the file is marked".
pub const NO_TAIL: u64 = u64::MAX;

/// Which two maps an event lands in: epoch `e` uses the maps with index `e & 1`.
pub const EPOCHS: usize = 2;

/// Key of one chunk: (device, inode, chunk index).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ChunkKey {
    /// Kernel `dev_t` (`MKDEV(major, minor)` in the kernel's 12:20 encoding).
    pub dev: u32,
    pub _pad: u32,
    pub ino: u64,
    pub chunk: u64,
}

/// The fault probe caches a process's mappings by region of `1 << REGION_SHIFT` bytes of
/// address space (a PMD's span): `ProcKey::at` of the cache is `addr >> REGION_SHIFT`.
pub const REGION_SHIFT: u64 = 21;

/// Key of the fault probe's per-process maps: (tgid, a 2 MiB region number or a page's
/// address).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ProcKey {
    pub tgid: u32,
    pub _pad: u32,
    pub at: u64,
}

/// One bit per 4 KiB block of the chunk; bit `b % 64` of word `b / 64`.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Chunk {
    pub bits: [u64; CHUNK_WORDS],
}

/// Key of a per-file record.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct FileKey {
    pub dev: u32,
    pub _pad: u32,
    pub ino: u64,
}

/// Per-file marks that do not fit the block bitmap.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FileMark {
    /// Every byte at or beyond this offset may have changed (truncate, collapse/insert range,
    /// clone, overflow degradation uses 0). [`NO_TAIL`] when unset.
    pub dirty_from: u64,
    /// Why the mark was set: an OR of the `WHY_*` bits.
    pub why: u32,
    pub _pad: u32,
}

pub const WHY_TRUNCATE: u32 = 1;
pub const WHY_RANGE_SHIFT: u32 = 2;
pub const WHY_CLONE: u32 = 4;
pub const WHY_OVERFLOW: u32 = 8;

/// The byte range a task is writing through a precise (byte-granular) tracepoint, kept per
/// CPU. A folio event from the same task that overlaps it was caused by that write, so the
/// folio's other blocks are not marked (large folios would otherwise turn 4 KiB writes into
/// 2 MiB). It counts only while the task has not been switched out since it was set: the
/// task then ran on this CPU all along, so no later write or fault of its own can have set or
/// cleared its range elsewhere.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PreciseRange {
    /// `bpf_get_current_pid_tgid()` of the task that set it.
    pub tid: u64,
    /// That task's context switches (`nvcsw + nivcsw`) when it set it.
    pub switches: u64,
    pub dev: u32,
    /// [`PRECISE_PMD`] or 0.
    pub flags: u32,
    pub ino: u64,
    pub start: u64,
    pub end: u64,
    /// `bpf_ktime_get_ns()` after which the range no longer suppresses anything.
    pub expires: u64,
    /// The epoch it was marked in: after a flip it suppresses nothing, since its mark went
    /// with the old epoch and a later change to the same folio needs a mark of its own.
    pub epoch: u32,
    pub _pad: u32,
}

/// The range comes from a write-protect fault on a mapping where its page may sit in a
/// PMD-mapped 2 MiB folio: a PMD write fault maps the whole folio writable, so the folio
/// event it causes must mark the whole folio when the folio is PMD-sized.
pub const PRECISE_PMD: u32 = 1;

/// Order of a folio a PMD maps (2 MiB of 4 KiB pages on x86-64, the only architecture with
/// the fault tracepoints). Smaller folios are only ever mapped by PTEs.
pub const PMD_ORDER: u64 = 9;

/// The `chunk` of a partial-folio map key that stands for the file itself: present when the
/// file has any partially-marked folio in that epoch's map (not a folio index).
pub const PARTIAL_FILE: u64 = u64::MAX;

/// Slots of the per-CPU `STATS` array.
pub mod stat {
    /// Events that matched the tracked device.
    pub const EVENTS: u32 = 0;
    /// Chunk inserts that failed (map full) and degraded to a whole-file mark.
    pub const CHUNK_OVERFLOW: u32 = 1;
    /// File-mark inserts that failed too: the agent must resync everything (nothing is dropped
    /// silently: this counter forces a full rescan of the epoch).
    pub const LOST: u32 = 2;
    /// Folio events suppressed because a precise write event covered them.
    pub const FOLIO_SUPPRESSED: u32 = 3;
    /// Folio events that marked the whole folio.
    pub const FOLIO_MARKED: u32 = 4;
    /// Precise (byte-range) events.
    pub const PRECISE: u32 = 5;
    /// Range-changing syscalls resolved to a tracked inode.
    pub const RANGE_CALLS: u32 = 6;
    /// Path-based truncates (`truncate(2)`) seen on any file: the agent rechecks sizes.
    pub const PATH_TRUNCATE: u32 = 7;
    /// Write faults whose VMA could not be looked up (`bpf_find_vma` busy or failed), in a
    /// process that maps a file of the tracked volume shared and writable (others cannot have
    /// stored into it).
    pub const FAULT_UNRESOLVED: u32 = 8;
    /// Write faults resolved to a tracked shared file mapping.
    pub const FAULT_MARKED: u32 = 9;
    /// Write faults and folio events marked as a whole 2 MiB folio because a PMD may map it
    /// (a PMD write fault makes all of it writable at once).
    pub const FAULT_WIDE: u32 = 10;
    /// Calls that can write into a mapped file's pages without a fault the programs see
    /// (`madvise(MADV_POPULATE_WRITE)`, `process_vm_writev`, `ptrace` pokes) by or into a
    /// mapping process: the agent then marks partially-marked folios whole.
    pub const REMOTE_WRITES: u32 = 11;
    /// Opens for writing of a file named `mem` (`/proc/PID/mem`): writes through it reach a
    /// process's pages with no fault and, unlike the calls above, may go on for as long as the
    /// file stays open. After one, every cut marks partially-marked folios whole.
    pub const MEM_OPENS: u32 = 12;
    /// Write faults resolved from the fault probe's cache of mappings, without
    /// `bpf_find_vma` (also counted in [`FAULT_MARKED`]).
    pub const FAULT_CACHED: u32 = 13;
    /// Write faults whose VMA lookup was busy, kept (process, address, its cache generation
    /// and region token) for the agent to resolve from /proc at the drain, instead of
    /// widening every partially-marked folio ([`FAULT_UNRESOLVED`] when that cannot be kept).
    pub const FAULT_DEFERRED: u32 = 14;
    pub const COUNT: u32 = 15;
}
