//! Every program the tracker loads stays far from the verifier's limit, on each filesystem's
//! program table.
//!
//! The kernel refuses a program whose verification passes 1,000,000 instructions, and an
//! optional probe that fails to load is only a warning (the fault probes: mmap stores are then
//! marked per folio). The fault programs once took 942,044, because `mark_range` was verified
//! again at each call site and on every path to it: one more call, or a kernel whose verifier
//! explores a little more, and mmap precision would have gone without an error. The same work
//! made every agent start take about 20 s. The kernel's own count (`verified_insns` in each
//! program's fdinfo) is asserted, and the fault programs must be among those loaded.
use btm_agent::{
    tracker::{Limits, Tracker},
    volume::Mount,
};
use btm_tests::{FILESYSTEMS, LoopFs, can_run};

/// A fifth of the kernel's limit: room for the programs to grow, and for verifiers that
/// explore more than this kernel's.
const BUDGET: u64 = 200_000;

fn check(fstype: &str) {
    let fs = LoopFs::new(fstype, 512).expect("loop fs");
    let mount = Mount::at(&fs.mnt).unwrap();
    let tracker = Tracker::start(&mount, Limits::for_volume_bytes(512 << 20)).unwrap();
    let costs = tracker.program_costs();
    for name in ["btm_fault_user", "btm_fault_kernel", "btm_dirty_folio"] {
        assert!(
            costs.iter().any(|c| c.name == name),
            "{fstype}: {name} is not loaded ({:?})",
            tracker.mmap_policy()
        );
    }
    let mut worst = costs.iter().collect::<Vec<_>>();
    worst.sort_by_key(|c| std::cmp::Reverse(c.verified_insns));
    for c in worst.iter().take(5) {
        eprintln!(
            "{fstype}: {} verified {} instructions",
            c.name, c.verified_insns
        );
    }
    for c in &costs {
        assert!(
            c.verified_insns > 0,
            "{fstype}: {} has no verified_insns in its fdinfo (Linux >= 5.16 reports it)",
            c.name
        );
        assert!(
            c.verified_insns < BUDGET,
            "{fstype}: {} took {} verified instructions, over the budget of {BUDGET} (the \
             kernel refuses a program at 1,000,000)",
            c.name,
            c.verified_insns
        );
    }
}

#[test]
fn every_program_verifies_far_below_the_kernels_limit() {
    if !can_run("the verifier's cost of each program") {
        return;
    }
    for fs in FILESYSTEMS {
        check(fs);
    }
}
