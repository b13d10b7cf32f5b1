//! What the kernel says of a loaded program in its fd's fdinfo: runs the kernel skipped
//! (`recursion_misses`), and with `kernel.bpf_stats_enabled` its run count and run time.
use std::os::fd::AsFd;

/// One program's run count and total run time (see [`Tracker::program_costs`]).
#[derive(Clone, Debug, serde::Serialize, PartialEq, Eq)]
pub struct ProgramCost {
    pub name: String,
    pub run_cnt: u64,
    pub run_time_ns: u64,
    /// Instructions the verifier went through to load it (`verified_insns`; 0 before Linux
    /// 5.16). The kernel refuses a program past 1,000,000, and the time is spent at every
    /// agent start.
    pub verified_insns: u64,
}

/// A loaded program's fdinfo text.
pub(super) fn prog_fdinfo(p: &aya::programs::Program) -> Option<String> {
    fdinfo(p.fd().ok()?.as_fd())
}

fn fdinfo(fd: std::os::fd::BorrowedFd<'_>) -> Option<String> {
    use std::os::fd::AsRawFd;
    std::fs::read_to_string(format!("/proc/self/fdinfo/{}", fd.as_raw_fd())).ok()
}

/// A program's `recursion_misses` (runs the kernel skipped), from its fd's fdinfo.
pub(super) fn recursion_misses(fd: std::os::fd::BorrowedFd<'_>) -> Option<u64> {
    fdinfo_field(&fdinfo(fd)?, "recursion_misses")
}

/// A numeric `key:` line of an fdinfo text (`recursion_misses`, `run_cnt`, `run_time_ns`).
pub(super) fn fdinfo_field(info: &str, key: &str) -> Option<u64> {
    info.lines()
        .find_map(|l| l.strip_prefix(key)?.strip_prefix(':'))
        .and_then(|v| v.trim().parse::<u64>().ok())
}

#[cfg(test)]
mod tests {
    use super::fdinfo_field;

    #[test]
    fn fields_by_exact_key() {
        let info = "prog_type:\t26\nrun_time_ns:\t1234\nrun_cnt:\t7\nrecursion_misses:\t0\n";
        assert_eq!(fdinfo_field(info, "run_cnt"), Some(7));
        assert_eq!(fdinfo_field(info, "run_time_ns"), Some(1234));
        assert_eq!(fdinfo_field(info, "recursion_misses"), Some(0));
        // A prefix of another key is not that key.
        assert_eq!(fdinfo_field(info, "run"), None);
    }
}
