//! Loads the eBPF tracker and drains its dirty-extent maps.
//!
//! The programs mark 4 KiB blocks per (device, inode) in the maps of the current epoch. To read
//! what changed, the agent [`Tracker::flip`]s the epoch (new events land in the other maps),
//! waits out every program that may still be running with the old epoch, and drains the old
//! maps into a [`DirtySet`].
mod blocks;
mod deferred;
mod dirty_set;
mod fdinfo;
pub mod handover;
mod kernel_btf;
pub mod prefault;
mod procmaps;
mod programs;
mod thp;
pub mod tracefs;

pub use fdinfo::ProgramCost;
use fdinfo::{fdinfo_field, prog_fdinfo, recursion_misses};

use aya::{
    Btf, Ebpf, EbpfLoader,
    maps::{Array, HashMap, MapData, PerCpuArray},
    programs::{
        BtfTracePoint, TracePoint, tp_btf::BtfTracePointLinkId, trace_point::TracePointLinkId,
    },
};
pub use blocks::BlockSet;
use btm_common::{
    config::Config,
    dirty::{Chunk, ChunkKey, FileKey, FileMark, ProcKey, stat},
};
pub use dirty_set::{DirtySet, FileDirty};
pub use handover::Handover;
pub use kernel_btf::KernelBtf;
use tracefs::Format;

use std::{os::fd::AsFd, path::Path};

use crate::volume::Mount;

#[derive(Debug, thiserror::Error)]
pub enum TrackerError {
    #[error(
        "loading eBPF programs needs root (or CAP_BPF, CAP_PERFMON and CAP_SYS_ADMIN): run through \
         `cargo xtask run`, with sudo, or use --mode zfs|btrfs|external"
    )]
    NotPrivileged,
    #[error(
        "the kernel has no BTF ({}): it was built without CONFIG_DEBUG_INFO_BTF, so the eBPF tracker \
         cannot find its structs; use --mode zfs or --mode btrfs on such kernels",
        kernel_btf::VMLINUX
    )]
    NoBtf,
    #[error("kernel BTF: {0}")]
    Btf(String),
    #[error(
        "the kernel lacks the tracepoint {name} that the eBPF tracker needs; use --mode zfs or \
         --mode btrfs (native snapshots) on this kernel"
    )]
    MissingTracepoint { name: String },
    #[error(
        "the eBPF tracker supports ext4, xfs and btrfs (the filesystems its tests prove), not \
         {fstype}; use --mode zfs or --mode btrfs for native snapshots"
    )]
    UnsupportedFs { fstype: String },
    #[error("tracepoint format: {0}")]
    Format(String),
    #[error("cannot mount {what}: {source}; mount it by hand or run as root")]
    Mount {
        what: String,
        source: std::io::Error,
    },
    #[error("loading the eBPF programs failed: {0}")]
    Load(String),
    #[error("eBPF map {0}: {1}")]
    Map(&'static str, String),
    #[error(
        "waiting for an RCU grace period (membarrier) failed: {0}; without it the tracker cannot \
         know when its programs stopped writing an epoch (kernels booted with nohz_full refuse \
         it): use --mode zfs or --mode btrfs there"
    )]
    GracePeriod(std::io::Error),
}

/// Filesystems whose every write path the tracker matrix proves (tests/tests/tracker_matrix.rs).
/// Others (FUSE, NFS, tmpfs...) write through paths the probes do not see.
pub const SUPPORTED_FS: &[&str] = &["ext4", "xfs", "btrfs"];

/// The embedded eBPF object, built by build.rs.
static EBPF_OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/btm"));

/// Sizes of the dirty maps.
#[derive(Clone, Copy, Debug)]
pub struct Limits {
    /// Chunk entries per epoch (each covers 2 MiB of one file).
    pub chunks: u32,
    /// File marks per epoch.
    pub files: u32,
}

impl Limits {
    /// Room for the whole volume being dirty in one epoch: one chunk per 2 MiB, at most 4 Mi
    /// entries, at least 64 Ki.
    pub fn for_volume_bytes(bytes: u64) -> Self {
        let chunks = (bytes / (2 << 20)).clamp(65_536, 4 << 20) as u32;
        Limits {
            chunks,
            files: 65_536,
        }
    }
}

/// Counters since load, summed over CPUs.
#[derive(Clone, Copy, Debug, Default, serde::Serialize, PartialEq, Eq)]
pub struct Stats {
    pub events: u64,
    pub chunk_overflows: u64,
    pub lost: u64,
    pub folio_suppressed: u64,
    pub folio_marked: u64,
    pub precise: u64,
    pub range_calls: u64,
    pub path_truncates: u64,
    pub fault_unresolved: u64,
    pub fault_marked: u64,
    /// Write faults and folio events widened to a whole 2 MiB folio a PMD may map.
    pub fault_wide: u64,
    /// Calls that may write into mapped pages without a fault the programs see.
    pub remote_writes: u64,
    /// Opens of `/proc/PID/mem` for writing (after one, every cut widens partial folios).
    pub mem_opens: u64,
    /// Write faults resolved from the fault probe's mapping cache (no `bpf_find_vma`).
    pub fault_cached: u64,
    /// Write faults with a busy VMA lookup, resolved by the agent from /proc at the drain.
    pub fault_deferred: u64,
    /// Program runs the kernel skipped (`recursion_misses`: another BPF program was active on
    /// that CPU). Each may be a lost change, so a rise forces a full capture.
    pub prog_misses: u64,
}

pub struct Tracker {
    ebpf: Ebpf,
    mount: Mount,
    limits: Limits,
    epoch: u32,
    /// Each attached program's link, kept to be pinned on a handover.
    links: Vec<(&'static str, Attached)>,
    /// The stop whose tracker this one took over (see [`handover`]).
    adopted: Option<u64>,
    /// The counters as the stop's programs left them, read before this start's own work
    /// (loading, calibrating) could add to them.
    taken_over_at: Option<Stats>,
    /// `recursion_misses` of earlier agents' programs, added to this one's.
    misses_base: u64,
    /// Deferred write faults this agent could not resolve (added to `fault_unresolved`).
    deferred_unknown: u64,
    /// Programs that could not be attached on this kernel (optional precision sources).
    pub skipped: Vec<String>,
    /// The `mm_struct.flags` bit of `PR_SET_THP_DISABLE`, as measured at start (None: not
    /// measured, so every mapping that could hold a PMD is treated as one).
    pub thp_off_bit: Option<u32>,
}

impl Tracker {
    /// Loads and attaches the programs for the filesystem mounted at `mount` (leaving any
    /// handover pins of the volume alone).
    pub fn start(mount: &Mount, limits: Limits) -> Result<Tracker, TrackerError> {
        Self::load(mount, limits, None)
    }

    /// Loads the object (with the maps pinned in `pinned`, a stop's handover) and attaches.
    fn load(mount: &Mount, limits: Limits, pinned: Option<&Path>) -> Result<Tracker, TrackerError> {
        if !nix::unistd::geteuid().is_root() {
            return Err(TrackerError::NotPrivileged);
        }
        if !SUPPORTED_FS.contains(&mount.fstype.as_str()) {
            return Err(TrackerError::UnsupportedFs {
                fstype: mount.fstype.clone(),
            });
        }
        tracefs::ensure_mounted()?;
        let kbtf = KernelBtf::load()?;
        let mut cfg = Config {
            target_dev: mount.kernel_dev(),
            ..Default::default()
        };
        kbtf.fill(&mut cfg)?;
        fill_tracepoints(&mut cfg)?;

        let btf = Btf::from_sys_fs().map_err(|e| TrackerError::Btf(e.to_string()))?;
        let names = pinned.map(handover::pinned_maps).unwrap_or_default();
        let typed = kbtf.typed()?;
        let mut loader = EbpfLoader::new();
        loader.override_global("BTM_TYPED", &typed, true);
        for n in &names {
            let dir = pinned.expect("names come from the pins");
            loader.map_pin_path(n.as_str(), dir.join("maps").join(n));
        }
        let mut ebpf = loader
            .btf(Some(&btf))
            .map_max_entries("DIRTY0", limits.chunks)
            .map_max_entries("DIRTY1", limits.chunks)
            .map_max_entries("MARKS0", limits.files)
            .map_max_entries("MARKS1", limits.files)
            .load(EBPF_OBJECT)
            .map_err(|e| load_error(e.to_string()))?;
        let mut skipped = Vec::new();
        let mut links = Vec::new();
        let mut fault_error = None;
        let progs = programs::table(mount.fstype.as_str());
        for &(prog, kind, target, required) in &progs {
            match attach(&mut ebpf, &btf, prog, kind, target) {
                Ok(id) => links.push((prog, id)),
                Err(e) if required => return Err(e),
                Err(e) => {
                    tracing::debug!("not attaching {prog} ({target}): {e}");
                    if target.starts_with("page_fault") {
                        fault_error.get_or_insert_with(|| first_line(&e.to_string()));
                    }
                    skipped.push(target.to_string());
                }
            }
        }
        // Programs do nothing until `ready`: attach first, then arm them. Without the fault
        // probes nothing may be suppressed (large folios are then marked whole).
        let faults = fault_error.is_none();
        if let Some(why) = fault_error {
            // The reason matters: a kernel without the tracepoints is expected, a program the
            // verifier refused is a defect to report.
            tracing::warn!(
                "page-fault probes not loaded ({why}): mmap writes are tracked per folio"
            );
        }
        cfg.suppress = faults as u32;
        cfg.defer_all = (std::env::var_os("BTM_TEST_DEFER_FAULTS").as_deref()
            == Some(std::ffi::OsStr::new("1"))) as u32;
        cfg.ready = 1;
        write_config(&mut ebpf, cfg)?;
        // Processes that mapped the volume before the probes were armed (those after are seen
        // by the mmap and fork probes; a store in between is in the first cut, which is full).
        seed_mappers(&mut ebpf, mount)?;
        let thp_off_bit = thp::measure_off_bit(&mut ebpf);
        if let Some(bit) = thp_off_bit {
            cfg.thp_off_bit = bit;
            write_config(&mut ebpf, cfg)?;
        }
        let t = Tracker {
            ebpf,
            mount: mount.clone(),
            limits,
            epoch: 0,
            links,
            adopted: None,
            taken_over_at: None,
            misses_base: 0,
            deferred_unknown: 0,
            skipped,
            thp_off_bit,
        };
        tracing::debug!("{}", t.mmap_policy());
        Ok(t)
    }

    /// How mmap stores are marked on this kernel, for `track` and the agent's start-up log.
    pub fn mmap_policy(&self) -> String {
        let faults = !self.skipped.iter().any(|t| t.starts_with("page_fault"));
        match (faults, self.thp_off_bit) {
            (false, _) => "mmap stores: marked per folio (no page-fault tracepoints)".into(),
            (true, Some(bit)) => format!(
                "mmap stores: 4 KiB per write-protect fault (the agent maps the node's \
                 resident pages read-only after each cut, unless --no-prefault); whole folio \
                 on first-touch faults into pages it could not map, and on 2 MiB folios a PMD \
                 may map (THP-disabled processes, mm flag bit {bit}, never get PMD mappings: \
                 start the node with `btm-agent exec`)"
            ),
            (true, None) => "mmap stores: 4 KiB per write-protect fault; whole folio on \
                 first-touch faults and on every 2 MiB folio of a 2 MiB-aligned mapping (THP \
                 state of processes not measurable on this kernel)"
                .into(),
        }
    }

    pub fn mount(&self) -> &Mount {
        &self.mount
    }

    /// Switches events to the other epoch's maps and waits until no program can still be
    /// writing into the old ones. Returns the old epoch's map index.
    pub fn flip(&mut self) -> Result<usize, TrackerError> {
        let old = self.epoch;
        self.epoch = self.epoch.wrapping_add(1);
        let mut epoch: Array<_, u32> = Array::try_from(self.ebpf.map_mut("EPOCH").unwrap())
            .map_err(|e| TrackerError::Map("EPOCH", e.to_string()))?;
        epoch
            .set(0, self.epoch, 0)
            .map_err(|e| TrackerError::Map("EPOCH", e.to_string()))?;
        // Programs run inside RCU read-side sections: after a full grace period none can
        // still hold the old epoch. Expedited, as this wait is inside the freeze (see [`crate::rcu`]).
        crate::rcu::synchronize().map_err(TrackerError::GracePeriod)?;
        Ok((old & 1) as usize)
    }

    /// Empties the maps of epoch index `idx` into a [`DirtySet`].
    pub fn drain(&mut self, idx: usize) -> Result<DirtySet, TrackerError> {
        let (dname, mname, pname, fname) = if idx == 0 {
            ("DIRTY0", "MARKS0", "PARTIAL0", "DEFER0")
        } else {
            ("DIRTY1", "MARKS1", "PARTIAL1", "DEFER1")
        };
        let mut set = DirtySet::default();
        {
            let mut dirty: HashMap<_, ChunkKey, Chunk> =
                HashMap::try_from(self.ebpf.map_mut(dname).unwrap())
                    .map_err(|e| TrackerError::Map("DIRTY", e.to_string()))?;
            let keys: Vec<ChunkKey> = dirty.keys().filter_map(Result::ok).collect();
            for k in keys {
                if let Ok(c) = dirty.get(&k, 0) {
                    set.add_chunk(k.ino, k.chunk, &c.bits);
                }
                let _ = dirty.remove(&k);
            }
        }
        {
            let mut marks: HashMap<_, FileKey, FileMark> =
                HashMap::try_from(self.ebpf.map_mut(mname).unwrap())
                    .map_err(|e| TrackerError::Map("MARKS", e.to_string()))?;
            let keys: Vec<FileKey> = marks.keys().filter_map(Result::ok).collect();
            for k in keys {
                if let Ok(m) = marks.get(&k, 0) {
                    set.add_tail(k.ino, m.dirty_from, m.why);
                }
                let _ = marks.remove(&k);
            }
        }
        {
            // Partial-folio records of a drained epoch are only needed while those folios are
            // dirty; the caller drains after writeback (syncfs or freeze).
            let mut partial: HashMap<_, ChunkKey, u32> =
                HashMap::try_from(self.ebpf.map_mut(pname).unwrap())
                    .map_err(|e| TrackerError::Map("PARTIAL", e.to_string()))?;
            let keys: Vec<ChunkKey> = partial.keys().filter_map(Result::ok).collect();
            for k in keys {
                if k.chunk == btm_common::dirty::PARTIAL_FILE {
                    // The file's own entry, not a folio.
                } else if let Ok(order) = partial.get(&k, 0) {
                    set.partial.push((k.ino, k.chunk, order.min(18)));
                }
                let _ = partial.remove(&k);
            }
        }
        self.resolve_deferred(fname, &mut set)?;
        Ok(set)
    }

    /// Marks the pages the epoch's deferred write faults hit, with their partially-marked
    /// folios (what the fault probe would have done); one it cannot resolve widens every
    /// partial folio of the set, and counts as unresolved (see `deferred`).
    fn resolve_deferred(&mut self, name: &str, set: &mut DirtySet) -> Result<(), TrackerError> {
        let kept: Vec<deferred::Deferred> = {
            let mut defer: HashMap<_, ProcKey, [u64; 2]> =
                HashMap::try_from(self.ebpf.map_mut(name).unwrap())
                    .map_err(|e| TrackerError::Map("DEFER", e.to_string()))?;
            let keys: Vec<ProcKey> = defer.keys().filter_map(Result::ok).collect();
            let mut v = Vec::with_capacity(keys.len());
            for k in keys {
                if let Ok([generation, token]) = defer.get(&k, 0) {
                    v.push(deferred::Deferred {
                        tgid: k.tgid,
                        addr: k.at,
                        generation,
                        token,
                    });
                }
                let _ = defer.remove(&k);
            }
            v
        };
        if kept.is_empty() {
            return Ok(());
        }
        let gens: HashMap<&MapData, u32, u64> =
            HashMap::try_from(self.ebpf.map("GENS").unwrap())
                .map_err(|e| TrackerError::Map("GENS", e.to_string()))?;
        // (aya's HashMap reads LRU hash maps too.)
        let vmas: HashMap<&MapData, ProcKey, [u64; 7]> =
            HashMap::try_from(self.ebpf.map("VMAS").unwrap())
                .map_err(|e| TrackerError::Map("VMAS", e.to_string()))?;
        // The process's generation and the token its region's key holds now.
        let now = |tgid: u32, region: u64| {
            let g = gens.get(&tgid, 0).ok()?;
            let key = ProcKey {
                tgid,
                _pad: 0,
                at: region,
            };
            Some((g, vmas.get(&key, 0).ok()?[6]))
        };
        let resolved = deferred::resolve_all(
            &kept,
            self.mount.major,
            self.mount.minor,
            now,
            deferred::maps_within(deferred::MAPS_BUDGET, deferred::proc_maps),
        );
        let mut unknown = 0;
        for (d, r) in kept.iter().zip(resolved) {
            tracing::debug!(?d, ?r, "deferred write fault");
            match r {
                deferred::Resolution::Page(ino, page) => set.mark_fault(ino, page),
                deferred::Resolution::Untracked => {}
                deferred::Resolution::Unknown => unknown += 1,
            }
        }
        if unknown > 0 {
            set.widen_to_folios();
            self.deferred_unknown += unknown;
        }
        Ok(())
    }

    /// Flip and drain in one step: everything marked since the previous call.
    pub fn take(&mut self) -> Result<DirtySet, TrackerError> {
        let idx = self.flip()?;
        self.drain(idx)
    }

    /// The processes (tgids) known to map a file of the volume shared; may include some that
    /// exited.
    pub fn mapper_pids(&self) -> Vec<u32> {
        HashMap::<&MapData, u32, u8>::try_from(self.ebpf.map("MAPPERS").unwrap())
            .map(|m| m.keys().filter_map(Result::ok).collect())
            .unwrap_or_default()
    }

    /// Is `pid` (a tgid) known to map a file of the volume shared?
    pub fn is_mapper(&self, pid: u32) -> bool {
        HashMap::<&MapData, u32, u8>::try_from(self.ebpf.map("MAPPERS").unwrap())
            .is_ok_and(|m| m.get(&pid, 0).is_ok())
    }

    pub fn stats(&self) -> Result<Stats, TrackerError> {
        let arr: PerCpuArray<&MapData, u64> =
            PerCpuArray::try_from(self.ebpf.map("STATS").unwrap())
                .map_err(|e| TrackerError::Map("STATS", e.to_string()))?;
        let mut st = stats_of(&arr, self.prog_misses());
        st.fault_unresolved += self.deferred_unknown;
        Ok(st)
    }
}

impl Tracker {
    /// Sum of `recursion_misses` over the attached programs, from their fds' fdinfo.
    fn prog_misses(&self) -> u64 {
        self.ebpf
            .programs()
            .filter_map(|(_, p)| recursion_misses(p.fd().ok()?.as_fd()))
            .sum::<u64>()
            + self.misses_base
    }

    /// Each loaded program's runs and the time spent in them. The kernel counts both only
    /// while `kernel.bpf_stats_enabled` is 1 (it costs two clock reads a run), so they are
    /// what a benchmark switches on to price a probe per event.
    pub fn program_costs(&self) -> Vec<ProgramCost> {
        let mut v: Vec<ProgramCost> = self
            .ebpf
            .programs()
            .filter_map(|(name, p)| {
                let info = prog_fdinfo(p)?;
                Some(ProgramCost {
                    name: name.to_string(),
                    run_cnt: fdinfo_field(&info, "run_cnt").unwrap_or(0),
                    run_time_ns: fdinfo_field(&info, "run_time_ns").unwrap_or(0),
                    verified_insns: fdinfo_field(&info, "verified_insns").unwrap_or(0),
                })
            })
            .collect();
        v.sort_by(|a, b| a.name.cmp(&b.name));
        v
    }
}

/// The counters in `arr` (the `STATS` map), with `prog_misses` from the programs' fds.
fn stats_of<T: std::borrow::Borrow<MapData>>(arr: &PerCpuArray<T, u64>, prog_misses: u64) -> Stats {
    let get = |slot: u32| -> u64 { arr.get(&slot, 0).map(|v| v.iter().sum()).unwrap_or(0) };
    Stats {
        events: get(stat::EVENTS),
        chunk_overflows: get(stat::CHUNK_OVERFLOW),
        lost: get(stat::LOST),
        folio_suppressed: get(stat::FOLIO_SUPPRESSED),
        folio_marked: get(stat::FOLIO_MARKED),
        precise: get(stat::PRECISE),
        range_calls: get(stat::RANGE_CALLS),
        path_truncates: get(stat::PATH_TRUNCATE),
        fault_unresolved: get(stat::FAULT_UNRESOLVED),
        fault_marked: get(stat::FAULT_MARKED),
        fault_wide: get(stat::FAULT_WIDE),
        remote_writes: get(stat::REMOTE_WRITES),
        mem_opens: get(stat::MEM_OPENS),
        fault_cached: get(stat::FAULT_CACHED),
        fault_deferred: get(stat::FAULT_DEFERRED),
        prog_misses,
    }
}

/// An attached program's link.
enum Attached {
    Btf(BtfTracePointLinkId),
    Tp(TracePointLinkId),
}

#[derive(Clone, Copy)]
enum Kind {
    Btf,
    Tp,
}

fn attach(
    ebpf: &mut Ebpf,
    btf: &Btf,
    prog: &str,
    kind: Kind,
    target: &str,
) -> Result<Attached, TrackerError> {
    let p = ebpf
        .program_mut(prog)
        .ok_or_else(|| TrackerError::Load(format!("program {prog} missing from the object")))?;
    match kind {
        Kind::Btf => {
            let p: &mut BtfTracePoint = p
                .try_into()
                .map_err(|e| load_error(format!("{prog}: {e}")))?;
            p.load(target, btf)
                .map_err(|e| load_error(format!("{prog}: {e:#}")))?;
            p.attach()
                .map(Attached::Btf)
                .map_err(|e| load_error(format!("{prog}: {e}")))
        }
        Kind::Tp => {
            let (cat, name) = target.split_once('/').unwrap();
            if !Format::exists(cat, name) {
                return Err(TrackerError::MissingTracepoint {
                    name: format!("{cat}:{name}"),
                });
            }
            let p: &mut TracePoint = p
                .try_into()
                .map_err(|e| load_error(format!("{prog}: {e}")))?;
            p.load().map_err(|e| load_error(format!("{prog}: {e:#}")))?;
            p.attach(cat, name)
                .map(Attached::Tp)
                .map_err(|e| load_error(format!("{prog}: {e}")))
        }
    }
}

fn load_error(msg: String) -> TrackerError {
    if msg.contains("Operation not permitted") || msg.contains("EPERM") {
        TrackerError::NotPrivileged
    } else {
        TrackerError::Load(msg)
    }
}

/// Hands the programs their configuration (they do nothing until `cfg.ready`).
fn write_config(ebpf: &mut Ebpf, cfg: Config) -> Result<(), TrackerError> {
    let mut config: Array<_, Config> = Array::try_from(ebpf.map_mut("CONFIG").unwrap())
        .map_err(|e| TrackerError::Map("CONFIG", e.to_string()))?;
    config
        .set(0, cfg, 0)
        .map_err(|e| TrackerError::Map("CONFIG", e.to_string()))
}

/// Makes `MAPPERS` the processes with a shared mapping of a file on `mount`'s device now:
/// adds them, then drops the rest. A map taken over from a stop holds processes that mapped
/// the volume or were forked by one while no agent ran, this agent among them when a mapper
/// started it (the fork probe adds the children of mappers); its own faults then counted as
/// unresolved and widened every cut. Adding before dropping leaves no moment where a mapper
/// is missing (a missing one is only marked per folio, never lost).
fn seed_mappers(ebpf: &mut Ebpf, mount: &Mount) -> Result<(), TrackerError> {
    let mut mappers: HashMap<_, u32, u8> = HashMap::try_from(ebpf.map_mut("MAPPERS").unwrap())
        .map_err(|e| TrackerError::Map("MAPPERS", e.to_string()))?;
    let Ok(procs) = std::fs::read_dir("/proc") else {
        return Ok(());
    };
    let mut now = std::collections::HashSet::new();
    for p in procs.flatten() {
        let Some(pid) = p.file_name().to_str().and_then(|n| n.parse::<u32>().ok()) else {
            continue;
        };
        let Ok(maps) = std::fs::read_to_string(p.path().join("maps")) else {
            continue;
        };
        let maps_volume = maps
            .lines()
            .filter_map(procmaps::MapsLine::parse)
            .any(|m| m.shared && m.on_device(mount.major, mount.minor));
        if maps_volume {
            let _ = mappers.insert(pid, 1, 0);
            now.insert(pid);
        }
    }
    let stale: Vec<u32> = mappers
        .keys()
        .filter_map(Result::ok)
        .filter(|pid| !now.contains(pid))
        .collect();
    for pid in stale {
        let _ = mappers.remove(&pid);
    }
    Ok(())
}

/// Tracepoint record offsets and flag values from tracefs.
fn fill_tracepoints(cfg: &mut Config) -> Result<(), TrackerError> {
    let iomap = Format::read("iomap", "iomap_iter")?;
    cfg.iomap_flag_write = iomap.flag("WRITE")?;
    cfg.iomap_flag_zero = iomap.flag("ZERO")?;
    cfg.iomap_flag_fault = iomap.flag("FAULT")?;
    cfg.iomap_flag_direct = iomap.flag("DIRECT")?;
    if Format::exists("ext4", "ext4_da_write_begin") {
        cfg.ext4_write_begin =
            Format::read("ext4", "ext4_da_write_begin")?.range("pos", Some("len"), None)?;
        let plain = Format::read("ext4", "ext4_write_begin")?.range("pos", Some("len"), None)?;
        if plain != cfg.ext4_write_begin {
            return Err(TrackerError::Format(
                "ext4_write_begin and ext4_da_write_begin records differ; this kernel needs a newer btm".into(),
            ));
        }
    }
    if Format::exists("xfs", "xfs_itruncate_extents_start") {
        cfg.xfs_itruncate =
            Format::read("xfs", "xfs_itruncate_extents_start")?.range("new_size", None, None)?;
    }
    Ok(())
}

/// The first line of an error, at most 300 characters: a verifier's refusal carries its whole
/// log, which belongs in the debug line, not in a warning.
fn first_line(s: &str) -> String {
    let line = s.lines().next().unwrap_or_default();
    match line.char_indices().nth(300) {
        Some((i, _)) => format!("{}…", &line[..i]),
        None => line.to_string(),
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_refusal_is_warned_by_its_first_line_only() {
        let err = "btm_fault_user: the BPF_PROG_LOAD syscall returned Permission denied \
                   (os error 13). Verifier output: combined stack size of 3 calls is 608. \
                   Too large\nprocessed 887610 insns (limit 1000000)";
        assert_eq!(
            super::first_line(err),
            err.lines().next().unwrap(),
            "the log after the first line is left out"
        );
        let long = "é".repeat(400);
        let cut = super::first_line(&long);
        assert_eq!(cut.chars().count(), 301, "300 characters and an ellipsis");
        assert!(cut.ends_with('…'));
    }
}
