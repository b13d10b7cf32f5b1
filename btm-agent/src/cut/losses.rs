//! The tracker's "could not track" counters, re-read at every cut, and what a rise forces.
//!
//! Each counter only ever grows. A cut compares what it reads against what the last cut saw:
//! - `lost` (both maps of an epoch full) and `prog_misses` (program runs the kernel skipped,
//!   any probe): a change may be anywhere, so the height is captured in full;
//! - `fault_unresolved` (a write fault `bpf_find_vma` could not resolve) and `remote_writes`
//!   (calls that write into mapped pages without a fault the programs see): a store may have
//!   gone into a folio that was already dirty with only part of it marked, so partially-marked
//!   folios are read whole;
//! - `mem_opens` (`/proc/PID/mem` opened for writing): writes through it go on unseen for as
//!   long as it stays open, so once there was one, every cut widens.
//!
//! Counters are read before an epoch flip, never after: everything counted then happened in
//! an epoch this cut drains (a count after the flip would be charged to this cut while its
//! change lands in the next epoch, which then nobody widens).
use crate::tracker::Stats;

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Losses {
    lost: u64,
    prog_misses: u64,
    unresolved: u64,
    remote_writes: u64,
    mem_opens: u64,
}

impl Losses {
    pub fn of(st: &Stats) -> Losses {
        Losses {
            lost: st.lost,
            prog_misses: st.prog_misses,
            unresolved: st.fault_unresolved,
            remote_writes: st.remote_writes,
            mem_opens: st.mem_opens,
        }
    }

    /// The counters in a fixed order, for the state a stop leaves (`resume.state`).
    pub fn words(&self) -> [u64; 5] {
        [
            self.lost,
            self.prog_misses,
            self.unresolved,
            self.remote_writes,
            self.mem_opens,
        ]
    }

    pub fn from_words(w: [u64; 5]) -> Losses {
        let [lost, prog_misses, unresolved, remote_writes, mem_opens] = w;
        Losses {
            lost,
            prog_misses,
            unresolved,
            remote_writes,
            mem_opens,
        }
    }

    /// Changes may have gone unmarked anywhere since `before`: capture in full.
    pub fn force_full(&self, before: &Losses) -> bool {
        self.lost > before.lost || self.prog_misses > before.prog_misses
    }

    /// A store may have hidden in a partially-marked folio since `before`: widen.
    pub fn force_widen(&self, before: &Losses) -> bool {
        self.rose(before) || self.mem_opens > 0
    }

    /// A counter that widens rose since `before` (`mem_opens` widens for good instead).
    pub fn rose(&self, before: &Losses) -> bool {
        self.unresolved > before.unresolved
            || self.remote_writes > before.remote_writes
            || self.mem_opens > before.mem_opens
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stats(f: impl FnOnce(&mut Stats)) -> Losses {
        let mut st = Stats {
            events: 100,
            folio_marked: 40,
            precise: 60,
            lost: 1,
            prog_misses: 2,
            fault_unresolved: 3,
            remote_writes: 4,
            ..Default::default()
        };
        f(&mut st);
        Losses::of(&st)
    }

    #[test]
    fn each_loss_counter_forces_its_remedy() {
        let seen = stats(|_| {});
        // Ordinary activity forces nothing.
        let busy = stats(|s| {
            s.events += 1000;
            s.folio_marked += 10;
            s.fault_marked += 5;
            s.fault_wide += 5;
        });
        assert!(!busy.force_full(&seen) && !busy.force_widen(&seen));
        for (name, full, rise) in [
            ("lost", true, stats(|s| s.lost += 1)),
            ("prog_misses", true, stats(|s| s.prog_misses += 1)),
            (
                "fault_unresolved",
                false,
                stats(|s| s.fault_unresolved += 1),
            ),
            ("remote_writes", false, stats(|s| s.remote_writes += 1)),
        ] {
            assert_eq!(rise.force_full(&seen), full, "{name}: full capture");
            assert_eq!(rise.force_widen(&seen), !full, "{name}: widening");
            // Once seen, the same count forces nothing more.
            assert!(
                !rise.force_full(&rise) && !rise.force_widen(&rise),
                "{name}"
            );
        }
        // Once /proc/PID/mem was opened for writing, every cut widens.
        let mem = stats(|s| s.mem_opens = 1);
        assert!(mem.force_widen(&seen) && mem.force_widen(&mem) && !mem.force_full(&mem));
        assert!(mem.rose(&seen) && !mem.rose(&mem));
    }
}
