//! Every map the programs share with the agent. Map names are the agent's contract.
use crate::{
    mark::RangeMark,
    vmas::{Pending, Vma, VmaKey},
};
use aya_ebpf::{
    macros::map,
    maps::{Array, HashMap, LruHashMap, PerCpuArray},
};
use btm_common::{
    config::Config,
    dirty::{Chunk, ChunkKey, FileKey, FileMark, PreciseRange, stat},
};

/// Hash maps allocate entries on insert, so memory follows what is dirty, bounded by
/// `max_entries` (the agent sizes the dirty maps for the volume at load time).
const NO_PREALLOC: u32 = 1;

#[map]
pub static CONFIG: Array<Config> = Array::with_max_entries(1, 0);
/// Current epoch; events land in the maps with index `epoch & 1`.
#[map]
pub static EPOCH: Array<u32> = Array::with_max_entries(1, 0);

#[map]
pub static DIRTY0: HashMap<ChunkKey, Chunk> = HashMap::with_max_entries(65536, NO_PREALLOC);
#[map]
pub static DIRTY1: HashMap<ChunkKey, Chunk> = HashMap::with_max_entries(65536, NO_PREALLOC);
#[map]
pub static MARKS0: HashMap<FileKey, FileMark> = HashMap::with_max_entries(16384, NO_PREALLOC);
#[map]
pub static MARKS1: HashMap<FileKey, FileMark> = HashMap::with_max_entries(16384, NO_PREALLOC);

/// Large folios whose folio event was suppressed (only the written range is marked), per
/// epoch: key = (dev, ino, folio index), value = folio order. A write fault on such a folio
/// marks it whole, since the kernel may map the whole folio writable on one fault.
#[map]
pub static PARTIAL0: HashMap<ChunkKey, u32> = HashMap::with_max_entries(65536, NO_PREALLOC);
#[map]
pub static PARTIAL1: HashMap<ChunkKey, u32> = HashMap::with_max_entries(65536, NO_PREALLOC);

/// Processes (tgids) that map a file of the tracked volume shared and writable: seeded by the
/// agent from /proc, kept current by the mmap and fork probes and by resolved faults. Only
/// their unresolvable write faults can have stored into the volume.
#[map]
pub static MAPPERS: HashMap<u32, u8> = HashMap::with_max_entries(16384, 0);

/// Start-up measurement: for each tgid the agent inserts, the mmap probe stores
/// `[1, mm->flags]` (the first word), so the agent finds the bit `PR_SET_THP_DISABLE` sets.
#[map]
pub static CALIB: HashMap<u32, [u64; 2]> = HashMap::with_max_entries(8, 0);

/// Per CPU: the byte range the last precise write or write fault there covers, and whose
/// (see `PreciseRange`).
#[map]
pub static PRECISE: PerCpuArray<PreciseRange> = PerCpuArray::with_max_entries(1, 0);
/// Per task: an open with O_TRUNC is in flight (resolved to an inode at syscall exit).
#[map]
pub static OPEN_TRUNC: LruHashMap<u64, u32> = LruHashMap::with_max_entries(8192, 0);
/// Per task: the mark a range call in flight made at entry, made again at its exit (see
/// `probes/syscalls.rs`).
#[map]
pub static RANGE_INFLIGHT: LruHashMap<u64, RangeMark> = LruHashMap::with_max_entries(8192, 0);

/// The fault probe's cache of tracked shared mappings (see `vmas`), keyed by (tgid, 2 MiB
/// region of the address); LRU, so a full cache only costs lookups.
#[map]
pub static VMAS: LruHashMap<VmaKey, Vma> = LruHashMap::with_max_entries(16384, 0);
/// Per process: the generation `VMAS` entries must carry to count.
#[map]
pub static GENS: HashMap<u32, u64> = HashMap::with_max_entries(16384, 0);
/// Per process sharing another's address space (`CLONE_VM`, not a thread): that process.
#[map]
pub static SHARES: HashMap<u32, u32> = HashMap::with_max_entries(16384, 0);
/// Per thread: the ranges a mapping-changing system call in flight may touch (`vmas`).
#[map]
pub static PENDING: HashMap<u64, Pending> = HashMap::with_max_entries(16384, 0);
/// Per epoch: write faults whose VMA lookup was busy, (tgid, page address) -> [the process's
/// cache generation, its region's token] then (`vmas::defer`); the agent resolves them from
/// /proc at the drain.
#[map]
pub static DEFER0: HashMap<VmaKey, [u64; 2]> = HashMap::with_max_entries(4096, 0);
#[map]
pub static DEFER1: HashMap<VmaKey, [u64; 2]> = HashMap::with_max_entries(4096, 0);
/// Per CPU: how many generations it handed out.
#[map]
pub static NEXT_GEN: PerCpuArray<u64> = PerCpuArray::with_max_entries(1, 0);

#[map]
pub static STATS: PerCpuArray<u64> = PerCpuArray::with_max_entries(stat::COUNT, 0);
