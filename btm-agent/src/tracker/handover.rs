//! Keeping the tracker running while no agent runs (a restart, an upgrade).
//!
//! On a clean stop the agent pins its maps, programs and links under
//! `/sys/fs/bpf/btm/MAJ_MIN/LAYOUT-TOKEN/`: the links keep the programs attached, so writes made
//! while no agent runs are still marked in the pinned maps. The next start loads the same
//! object with those maps (`map_pin_path`), attaches its own programs, then removes the pins,
//! which detaches the old programs (both sets mark the same maps meanwhile: a mark twice is
//! still one mark). The token, recorded in the log's `resume.state`, ties the pins to that
//! stop; `LAYOUT` (a hash of the eBPF object and the map sizes) ties them to maps of exactly
//! this layout. Pins of another layout or another stop, or left by a crash between pinning and
//! recording, are removed on start, which stops their programs: the first cut then falls back
//! to the stat comparison of `resume.state` or to reading everything.
//!
//! Pins only survive in the bpffs they were made in: a reboot, or a container that mounts its
//! own bpffs, starts without them.
use std::{
    fs,
    path::{Path, PathBuf},
};

use aya::{
    maps::{Array, PerCpuArray},
    programs::{BtfTracePoint, TracePoint, links::FdLink},
};

use super::{Attached, EBPF_OBJECT, Limits, Stats, Tracker, TrackerError};
use crate::volume::Mount;

impl Tracker {
    /// Like [`Tracker::start`], for the agent: takes over the maps a clean stop left running
    /// for it (`handover`, from its `resume.state`) when they are still pinned with this
    /// layout, and removes every other pin of the volume. [`Tracker::adopted`] says whether
    /// it did.
    pub fn start_after(
        mount: &Mount,
        limits: Limits,
        handover: Option<Handover>,
    ) -> Result<Tracker, TrackerError> {
        let found = handover
            .map(|h| (h, dir(mount, limits, h.token)))
            .filter(|(_, d)| d.join("maps").is_dir());
        remove_others(mount, found.as_ref().map(|(_, d)| d.as_path()));
        let Some((h, dir)) = found else {
            if handover.is_some() {
                tracing::info!(
                    "the tracker the last stop left running is gone (a reboot, a new bpffs, \
                     or another layout): the first cut compares files by stat"
                );
            }
            return Self::load(mount, limits, None);
        };
        let Some(old_misses) = pinned_misses(&dir) else {
            tracing::warn!(
                "cannot read the programs pinned in {}: not taking them over",
                dir.display()
            );
            remove(&dir);
            return Self::load(mount, limits, None);
        };
        // Every earlier agent's skipped runs, the stop's programs' included.
        let misses_base = h.misses_base + old_misses;
        // What the stop's programs counted, before this start's own work adds to it.
        let at = aya::maps::MapData::from_pin(dir.join("maps").join("STATS"))
            .ok()
            .and_then(|m| PerCpuArray::<_, u64>::try_from(aya::maps::Map::PerCpuArray(m)).ok())
            .map(|arr| super::stats_of(&arr, misses_base));
        let Some(at) = at else {
            tracing::warn!(
                "cannot read the counters pinned in {}: not taking them over",
                dir.display()
            );
            remove(&dir);
            return Self::load(mount, limits, None);
        };
        let t = Self::load(mount, limits, Some(&dir));
        // The new programs mark the same maps now (or the load failed): the old ones go.
        remove(&dir);
        let mut t = match t {
            Ok(t) => t,
            Err(e) => {
                tracing::warn!("cannot take over the pinned tracker ({e}): starting afresh");
                return Self::load(mount, limits, None);
            }
        };
        let epoch: Array<_, u32> = Array::try_from(t.ebpf.map("EPOCH").unwrap())
            .map_err(|e| TrackerError::Map("EPOCH", e.to_string()))?;
        t.epoch = epoch
            .get(&0, 0)
            .map_err(|e| TrackerError::Map("EPOCH", e.to_string()))?;
        t.misses_base = misses_base;
        t.adopted = Some(h.token);
        t.taken_over_at = Some(at);
        tracing::info!(
            "took over the tracker the last stop left running ({}): what was written \
             meanwhile is marked",
            dir.display()
        );
        Ok(t)
    }

    /// The token of the stop whose running tracker this one took over.
    pub fn adopted(&self) -> Option<u64> {
        self.adopted
    }

    /// The counters as the taken-over programs left them, before this start added to them
    /// (its calibration faults, for one): what they counted while no agent ran is the rise
    /// from the stop's to these.
    pub fn taken_over_at(&self) -> Option<Stats> {
        self.taken_over_at
    }

    /// Leaves the tracker running after this process exits: pins its maps, programs and
    /// links for the next start (see [`handover`]). The tracker marks nothing more for this
    /// process's reads to see; call it last.
    pub fn hand_over(&mut self) -> Result<Handover, TrackerError> {
        let token = new_token();
        let dir = dir(&self.mount, self.limits, token);
        let pin = |what: &str, e: String| TrackerError::Load(format!("pinning {what}: {e}"));
        let done = (|| {
            for sub in ["maps", "progs", "links"] {
                create(&dir.join(sub)).map_err(|e| pin("a directory", e))?;
            }
            // Not the object's data sections (`.rodata`): constants each load makes anew,
            // which bpffs will not pin under a dotted name anyway.
            for (name, map) in self.ebpf.maps().filter(|(n, _)| !n.starts_with('.')) {
                map.pin(dir.join("maps").join(name))
                    .map_err(|e| pin(name, e.to_string()))?;
            }
            for (name, id) in std::mem::take(&mut self.links) {
                let p = self.ebpf.program_mut(name).expect("attached program");
                let (prog, links) = (dir.join("progs").join(name), dir.join("links").join(name));
                p.pin(&prog).map_err(|e| pin(name, e.to_string()))?;
                let link: FdLink = match id {
                    Attached::Btf(id) => <&mut BtfTracePoint>::try_from(p)
                        .map_err(|e| pin(name, e.to_string()))?
                        .take_link(id)
                        .map_err(|e| pin(name, e.to_string()))?
                        .into(),
                    Attached::Tp(id) => <&mut TracePoint>::try_from(p)
                        .map_err(|e| pin(name, e.to_string()))?
                        .take_link(id)
                        .map_err(|e| pin(name, e.to_string()))?
                        .try_into()
                        .map_err(|e| pin(name, format!("{e}")))?,
                };
                link.pin(&links).map_err(|e| pin(name, e.to_string()))?;
            }
            Ok(())
        })();
        match done {
            Ok(()) => Ok(Handover {
                token,
                misses_base: self.misses_base,
            }),
            Err(e) => {
                remove(&dir);
                Err(e)
            }
        }
    }
}

fn create(dir: &Path) -> Result<(), String> {
    fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))
}

/// Where the pins of every volume live.
pub const ROOT: &str = "/sys/fs/bpf/btm";

/// What a stop left running: its token and the program runs the kernel skipped before it
/// (`recursion_misses` of earlier agents' programs, carried so the counter never falls).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Handover {
    pub token: u64,
    pub misses_base: u64,
}

/// Turned off with `BTM_HANDOVER=0`: a stop then leaves nothing running.
pub fn enabled() -> bool {
    std::env::var("BTM_HANDOVER").map_or(true, |v| v != "0")
}

/// The pins of this volume, any layout and stop.
pub fn volume_dir(mount: &Mount) -> PathBuf {
    Path::new(ROOT).join(format!("{}_{}", mount.major, mount.minor))
}

/// The pins one stop leaves for maps of this layout.
pub(super) fn dir(mount: &Mount, limits: Limits, token: u64) -> PathBuf {
    let mut h = blake3::Hasher::new();
    h.update(EBPF_OBJECT);
    h.update(&limits.chunks.to_le_bytes());
    h.update(&limits.files.to_le_bytes());
    let layout = h.finalize().to_hex();
    volume_dir(mount).join(format!("{}-{token:016x}", &layout[..16]))
}

/// A token no earlier stop used.
pub(super) fn new_token() -> u64 {
    let mut h = blake3::Hasher::new();
    h.update(&std::process::id().to_le_bytes());
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    h.update(&now.to_le_bytes());
    let b = h.finalize();
    u64::from_le_bytes(b.as_bytes()[..8].try_into().expect("8 bytes"))
}

/// Removes every pin of the volume but `keep`: their programs stop once nothing holds them.
pub(super) fn remove_others(mount: &Mount, keep: Option<&Path>) {
    let Ok(entries) = fs::read_dir(volume_dir(mount)) else {
        return;
    };
    for e in entries.flatten() {
        if Some(e.path().as_path()) != keep {
            tracing::info!(
                "removing tracker pins no stop of this agent left for it: {}",
                e.path().display()
            );
            remove(&e.path());
        }
    }
}

/// Removes a stop's pins (links first, so the old programs detach before their maps go).
pub(super) fn remove(dir: &Path) {
    for sub in ["links", "progs", "maps"] {
        if let Ok(entries) = fs::read_dir(dir.join(sub)) {
            for e in entries.flatten() {
                let _ = fs::remove_file(e.path());
            }
        }
        let _ = fs::remove_dir(dir.join(sub));
    }
    let _ = fs::remove_dir(dir);
}

/// Names of the maps a stop pinned.
pub(super) fn pinned_maps(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = fs::read_dir(dir.join("maps"))
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| e.file_name().into_string().ok())
        .collect();
    v.sort();
    v
}

/// `recursion_misses` summed over the programs a stop pinned: runs the kernel skipped while
/// no agent ran. None when a program cannot be read (then its marks cannot be trusted).
pub(super) fn pinned_misses(dir: &Path) -> Option<u64> {
    use std::os::fd::AsFd;
    let mut sum = 0;
    for e in fs::read_dir(dir.join("progs")).ok()? {
        let info = aya::programs::ProgramInfo::from_pin(e.ok()?.path()).ok()?;
        sum += super::recursion_misses(info.fd().ok()?.as_fd())?;
    }
    Some(sum)
}
