//! Write faults the fault probe could not resolve to a file (its VMA lookup was busy), kept
//! as (process, address, the process's mapping-cache generation, its region's token) and
//! resolved here from /proc/PID/maps at the drain. The maps still say what the fault hit as
//! long as neither has moved (a change settling over the region deletes its key and token;
//! very large changes renew the generation and exec drops it, btm-ebpf/src/vmas.rs): both
//! are checked before and after reading them. What cannot be resolved that way widens every
//! partially-marked folio, as an unresolved fault always did.
use btm_common::dirty::BLOCK_SHIFT;

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

/// Resolves `d` for the volume on `major:minor`; `now` reads the process's generation and
/// the token of the address's region as they are now.
pub(super) fn resolve(
    d: &Deferred,
    major: u32,
    minor: u32,
    now: impl Fn(u32, u64) -> Option<(u64, u64)>,
) -> Resolution {
    if now(d.tgid, d.addr) != Some((d.generation, d.token)) {
        return Resolution::Unknown;
    }
    let Ok(maps) = std::fs::read_to_string(format!("/proc/{}/maps", d.tgid)) else {
        return Resolution::Unknown;
    };
    if now(d.tgid, d.addr) != Some((d.generation, d.token)) {
        return Resolution::Unknown;
    }
    mapping_at(&maps, d.addr, major, minor)
}

/// What the maps text says `addr` is.
fn mapping_at(maps: &str, addr: u64, major: u32, minor: u32) -> Resolution {
    let Some(m) = maps
        .lines()
        .filter_map(MapsLine::parse)
        .find(|m| m.start <= addr && addr < m.end)
    else {
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

    #[test]
    fn pages_of_shared_mappings_of_the_volume() {
        assert_eq!(
            mapping_at(MAPS, 0x7f00_0000_3123, 7, 3),
            Resolution::Page(12, (0x20_0000 + 0x3000) / 4096)
        );
        assert_eq!(
            mapping_at(MAPS, 0x7f00_0040_0000, 7, 3),
            Resolution::Untracked
        );
        assert_eq!(
            mapping_at(MAPS, 0x7f00_0060_0000, 7, 3),
            Resolution::Untracked
        );
        assert_eq!(mapping_at(MAPS, 0x1000, 7, 3), Resolution::Unknown);
    }

    #[test]
    fn a_moved_count_or_a_gone_process_is_unknown() {
        let d = Deferred {
            tgid: std::process::id(),
            addr: 0x1000,
            generation: 5,
            token: 9,
        };
        assert_eq!(resolve(&d, 7, 3, |_, _| Some((6, 9))), Resolution::Unknown);
        assert_eq!(resolve(&d, 7, 3, |_, _| Some((5, 8))), Resolution::Unknown);
        let gone = Deferred {
            tgid: u32::MAX - 1,
            ..d
        };
        assert_eq!(
            resolve(&gone, 7, 3, |_, _| Some((5, 9))),
            Resolution::Unknown
        );
    }
}
