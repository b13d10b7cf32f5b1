//! RCU grace periods on the cut's critical path, expedited while the agent waits on them.
//!
//! Two waits of a cut are full RCU grace periods: `FIFREEZE` waits for one before each of the
//! superblock's three freeze levels (`rcu_sync_enter` in `percpu_down_write`), and the
//! tracker's epoch flip waits for one (`membarrier(MEMBARRIER_CMD_GLOBAL)` is
//! `synchronize_rcu`) so that no program still holds the old epoch. Normal grace periods wait
//! for every CPU to pass a quiescent state: 6 ms when idle on these machines, 14 ms and more
//! under load, and the flip inside the freeze paid that with the node's writers blocked.
//! Expedited ones send each CPU an IPI instead: 30 µs.
//!
//! Why it matters, as measured: sampling the freezing thread's kernel stack beside a writer on
//! ext4 showed the wait as nearly all of `FIFREEZE` (1,768 samples there, 68 in the journal
//! commit, 33 in the checkpoint's cache flush): 40 ms at p50, 3 ms expedited.
use std::fs;

/// Where the kernel is told to expedite RCU grace periods.
pub const RCU_EXPEDITED: &str = "/sys/kernel/rcu_expedited";

/// Expedited RCU grace periods for as long as this lives.
///
/// Only a value of 0 is changed, and only that one is put back: another agent (or the
/// administrator) that expedites already is left alone. An agent killed while it holds one
/// leaves grace periods expedited (a cost in IPIs, nothing else) until `echo 0 >
/// /sys/kernel/rcu_expedited`. `BTM_FREEZE_EXPEDITE=0` leaves the setting alone.
pub struct Expedited {
    set: bool,
}

impl Expedited {
    pub fn start() -> Expedited {
        let off = std::env::var("BTM_FREEZE_EXPEDITE").is_ok_and(|v| v == "0");
        let was_normal = fs::read_to_string(RCU_EXPEDITED).is_ok_and(|v| v.trim() == "0");
        let set = !off && was_normal && fs::write(RCU_EXPEDITED, "1").is_ok();
        Expedited { set }
    }
}

impl Drop for Expedited {
    fn drop(&mut self) {
        if self.set
            && let Err(e) = fs::write(RCU_EXPEDITED, "0")
        {
            tracing::warn!("putting {RCU_EXPEDITED} back to 0: {e}");
        }
    }
}

/// `linux/membarrier.h` (libc has it for Android only).
const MEMBARRIER_CMD_GLOBAL: libc::c_int = 1;

/// Waits for a full RCU grace period, expedited: every RCU read-side section (an eBPF
/// program's run among them) begun before the call has ended when it returns.
pub fn synchronize() -> std::io::Result<()> {
    let _fast = Expedited::start();
    // SAFETY: plain syscall without pointers.
    let r = unsafe { libc::syscall(libc::SYS_membarrier, MEMBARRIER_CMD_GLOBAL, 0, 0) };
    if r < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The setting is 1 while a guard lives and 0 again after (as root, where it was 0).
    #[test]
    fn expedites_for_the_guard_and_puts_back() {
        if fs::read_to_string(RCU_EXPEDITED).map_or(true, |v| v.trim() != "0")
            || fs::write(RCU_EXPEDITED, "0").is_err()
        {
            eprintln!("skipped: {RCU_EXPEDITED} is not 0 or not writable (needs root)");
            return;
        }
        {
            let _g = Expedited::start();
            assert_eq!(fs::read_to_string(RCU_EXPEDITED).unwrap().trim(), "1");
        }
        assert_eq!(fs::read_to_string(RCU_EXPEDITED).unwrap().trim(), "0");
        synchronize().unwrap();
        assert_eq!(fs::read_to_string(RCU_EXPEDITED).unwrap().trim(), "0");
    }
}
