//! Write faults the fault probe could not resolve to a file (its VMA lookup was busy), kept
//! as (process, address, the process's mapping-cache generation, its region's token) and
//! resolved here from /proc/PID/maps at the drain. The maps still say what the fault hit as
//! long as neither has moved (a change settling over the region deletes its key and token;
//! very large changes renew the generation and exec drops it, btm-ebpf/src/vmas.rs): both
//! are checked before and after reading them. What cannot be resolved that way widens every
//! partially-marked folio, as an unresolved fault always did.
use std::time::{Duration, Instant};

use btm_common::dirty::{BLOCK_SHIFT, REGION_SHIFT};

use super::procmaps::MapsLine;

/// One kept fault.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct Deferred {
    pub tgid: u32,
    pub addr: u64,
    pub generation: u64,
    pub token: u64,
}

#[derive(Debug, PartialEq, Eq)]
pub(super) enum Resolution {
    /// A page of a file of the volume: (inode, block).
    Page(u64, u64),
    /// Not a shared mapping of the volume: its stores changed nothing tracked.
    Untracked,
    /// Could not tell (process gone, mappings changed, address no longer mapped).
    Unknown,
}

/// Resolves each of `kept` for the volume on `major:minor`, in order; `now` reads a process's
/// generation and the token of a region (`addr >> REGION_SHIFT`) as they are now, `maps` a
/// process's /proc/PID/maps.
///
/// Each process's maps are read and parsed once for all its faults, and each region's
/// generation and token once before and once after that read (inside the freeze, a drain of
/// hundreds of a busy process's faults read its maps hundreds of times: 20-160 ms in
/// `cut_e2e`). A fault resolves from that one read only when its generation and token were
/// as kept both before and after it, as when each was read alone.
pub(super) fn resolve_all(
    kept: &[Deferred],
    major: u32,
    minor: u32,
    now: impl Fn(u32, u64) -> Option<(u64, u64)>,
    mut maps: impl FnMut(u32) -> Option<String>,
) -> Vec<Resolution> {
    let mut out: Vec<Resolution> = kept.iter().map(|_| Resolution::Unknown).collect();
    let mut order: Vec<usize> = (0..kept.len()).collect();
    order.sort_by_key(|&i| (kept[i].tgid, kept[i].addr));
    for group in order.chunk_by(|&a, &b| kept[a].tgid == kept[b].tgid) {
        let tgid = kept[group[0]].tgid;
        // The faults whose generation and token are as kept now (regions read once: the
        // group is in address order).
        let holding = |among: &[usize]| -> Vec<usize> {
            let mut last: Option<(u64, Option<(u64, u64)>)> = None;
            let mut v = Vec::with_capacity(among.len());
            for &i in among {
                let d = &kept[i];
                let region = d.addr >> REGION_SHIFT;
                let seen = match last {
                    Some((r, seen)) if r == region => seen,
                    _ => now(tgid, region),
                };
                last = Some((region, seen));
                if seen == Some((d.generation, d.token)) {
                    v.push(i);
                }
            }
            v
        };
        let before = holding(group);
        if before.is_empty() {
            continue;
        }
        let Some(text) = maps(tgid) else {
            continue;
        };
        let lines: Vec<MapsLine> = text.lines().filter_map(MapsLine::parse).collect();
        for i in holding(&before) {
            out[i] = mapping_at(&lines, kept[i].addr, major, minor);
        }
    }
    out
}

/// A process's /proc/PID/maps now.
pub(super) fn proc_maps(tgid: u32) -> Option<String> {
    std::fs::read_to_string(format!("/proc/{tgid}/maps")).ok()
}

/// How long a drain waits, in all, for processes' maps.
pub(super) const MAPS_BUDGET: Duration = Duration::from_millis(100);

/// Reads maps with `read` (as [`proc_maps`]) for `budget` from now, all reads together: a
/// read not done by then is left to finish in its own thread, and its process's faults stay
/// unresolved.
///
/// Why: the frozen phase drains too, and reading a process's maps takes its `mmap_lock`
/// (before Linux 6.17, and still when the per-VMA read fails). A thread of the node blocked by
/// the freeze inside a write fault holds that lock for reading; once another of its threads
/// waits to take it for writing (an `mmap` or `munmap`, as an allocator does), a new reader
/// waits behind that one, until the thaw that waits for this drain. A fault left unresolved
/// widens the partially-marked folios instead, as one the probe could not resolve does.
pub(super) fn maps_within(
    budget: Duration,
    read: fn(u32) -> Option<String>,
) -> impl FnMut(u32) -> Option<String> {
    let deadline = Instant::now() + budget;
    let mut warned = false;
    move |tgid| {
        let left = deadline.checked_duration_since(Instant::now())?;
        let (tx, rx) = std::sync::mpsc::sync_channel(1);
        std::thread::Builder::new()
            .name("btm-maps".into())
            .spawn(move || tx.send(read(tgid)))
            .ok()?;
        let got = rx.recv_timeout(left);
        if got.is_err() && !warned {
            warned = true;
            tracing::warn!(
                "reading /proc/{tgid}/maps took more than the drain's {budget:?} (a thread of it \
                 may be blocked by the freeze): its deferred write faults widen their folios"
            );
        }
        got.ok().flatten()
    }
}

/// What the maps (in address order, as the kernel lists them) say `addr` is.
fn mapping_at(lines: &[MapsLine], addr: u64, major: u32, minor: u32) -> Resolution {
    let i = lines.partition_point(|m| m.end <= addr);
    let Some(m) = lines.get(i).filter(|m| m.start <= addr) else {
        return Resolution::Unknown;
    };
    if !m.shares_file_on(major, minor) {
        return Resolution::Untracked;
    }
    Resolution::Page(m.ino, (m.offset + (addr - m.start)) >> BLOCK_SHIFT)
}

#[cfg(test)]
mod tests {
    use super::*;

    const MAPS: &str = "\
55d000000000-55d000021000 r--p 00000000 08:01 131 /usr/bin/node
7f0000000000-7f0000400000 rw-s 00200000 07:03 12 /vol/state.mdb
7f0000400000-7f0000600000 rw-p 00000000 00:00 0
7f0000600000-7f0000800000 rw-s 00000000 08:01 99 /elsewhere
";

    fn at(addr: u64) -> Resolution {
        let lines: Vec<MapsLine> = MAPS.lines().filter_map(MapsLine::parse).collect();
        mapping_at(&lines, addr, 7, 3)
    }

    fn fault(tgid: u32, addr: u64) -> Deferred {
        Deferred {
            tgid,
            addr,
            generation: 5,
            token: 9,
        }
    }

    #[test]
    fn pages_of_shared_mappings_of_the_volume() {
        assert_eq!(
            at(0x7f00_0000_3123),
            Resolution::Page(12, (0x20_0000 + 0x3000) / 4096)
        );
        assert_eq!(
            at(0x7f00_003f_f000),
            Resolution::Page(12, (0x20_0000 + 0x3f_f000) / 4096)
        );
        assert_eq!(at(0x7f00_0040_0000), Resolution::Untracked);
        assert_eq!(at(0x7f00_0060_0000), Resolution::Untracked);
        assert_eq!(at(0x1000), Resolution::Unknown);
        assert_eq!(at(0x55d0_0002_1000), Resolution::Unknown);
        assert_eq!(at(0x7f00_0080_0000), Resolution::Unknown);
    }

    #[test]
    fn a_moved_count_or_a_gone_process_is_unknown() {
        let d = fault(std::process::id(), 0x1000);
        let one = |now: &dyn Fn(u32, u64) -> Option<(u64, u64)>, d: Deferred| {
            resolve_all(&[d], 7, 3, now, proc_maps).remove(0)
        };
        assert_eq!(one(&|_, _| Some((6, 9)), d), Resolution::Unknown);
        assert_eq!(one(&|_, _| Some((5, 8)), d), Resolution::Unknown);
        let gone = fault(u32::MAX - 1, 0x1000);
        assert_eq!(one(&|_, _| Some((5, 9)), gone), Resolution::Unknown);
    }

    /// A process's maps are read once for all its faults; each fault still needs its own
    /// generation and token unmoved, and keeps its place in the answer.
    #[test]
    fn one_read_of_the_maps_per_process() {
        let kept = [
            fault(2, 0x7f00_0000_3000),
            fault(1, 0x7f00_0040_0000),
            fault(2, 0x7f00_0000_5000),
            Deferred {
                token: 10,
                ..fault(2, 0x7f00_0000_7000)
            },
            fault(3, 0x7f00_0000_3000),
        ];
        let mut reads = Vec::new();
        // Process 2's fault at 0x7f00_0000_7000 was kept with another token; process 3 is
        // gone.
        let asked = std::cell::Cell::new(0);
        let now = |tgid: u32, region: u64| {
            asked.set(asked.get() + 1);
            assert!([0x7f00_0000_0000, 0x7f00_0040_0000].contains(&(region << REGION_SHIFT)));
            (tgid != 3).then_some((5, 9))
        };
        let r = resolve_all(&kept, 7, 3, now, |tgid| {
            reads.push(tgid);
            Some(MAPS.to_string())
        });
        assert_eq!(reads, [1, 2]);
        // Each process's region once before its read and once after (none after for 3).
        assert_eq!(asked.get(), 2 + 2 + 1);
        assert_eq!(
            r,
            [
                Resolution::Page(12, 0x203),
                Resolution::Untracked,
                Resolution::Page(12, 0x205),
                Resolution::Unknown,
                Resolution::Unknown,
            ]
        );
    }

    /// A read of the maps that does not return by the deadline leaves its process's faults
    /// unresolved and the drain goes on (a read blocked behind the freeze would not return
    /// before the thaw); the others resolve.
    #[test]
    fn a_read_past_the_deadline_leaves_the_faults_unresolved() {
        fn read(tgid: u32) -> Option<String> {
            if tgid == 1 {
                std::thread::sleep(Duration::from_secs(3));
            }
            Some(MAPS.to_string())
        }
        let kept = [fault(1, 0x7f00_0000_3000), fault(2, 0x7f00_0000_3000)];
        let t = Instant::now();
        let r = resolve_all(
            &kept,
            7,
            3,
            |_, _| Some((5, 9)),
            maps_within(Duration::from_millis(200), read),
        );
        assert!(t.elapsed() < Duration::from_secs(2), "{:?}", t.elapsed());
        assert_eq!(r, [Resolution::Unknown, Resolution::Unknown]);
        let r = resolve_all(
            &kept[1..],
            7,
            3,
            |_, _| Some((5, 9)),
            maps_within(Duration::from_millis(500), read),
        );
        assert_eq!(r, [Resolution::Page(12, 0x203)]);
    }
}
