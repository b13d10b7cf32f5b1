//! Which bit of `mm_struct.flags` `PR_SET_THP_DISABLE` sets on the running kernel.
//!
//! A write-protect fault is precise (one page) only where no PMD can map the page. A process
//! with THP disabled never gets PMD mappings, so its faults may stay 4 KiB even in 2 MiB
//! folios, but the programs can only see that through a bit whose number is not in BTF (it is
//! a `#define`, and 6.18 renamed it). So it is measured: two forked children, one with THP
//! disabled, each make an `mmap` call, and the mmap probe records their flags words. The bit is
//! trusted only when it is the one difference. Otherwise every mapping that could hold a PMD
//! is treated as one (wider marks, never narrower).
use std::os::fd::AsRawFd;

use aya::{Ebpf, maps::HashMap};

/// The bit, or None when it could not be measured.
pub(super) fn measure_off_bit(ebpf: &mut Ebpf) -> Option<u32> {
    let on = child_mm_flags(ebpf, false)?;
    let off = child_mm_flags(ebpf, true)?;
    let diff = on ^ off;
    (diff.count_ones() == 1 && off & diff != 0).then(|| diff.trailing_zeros())
}

/// The `mm->flags` word of a forked child, as the mmap probe saw it.
fn child_mm_flags(ebpf: &mut Ebpf, thp_off: bool) -> Option<u64> {
    let (rx, tx) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).ok()?;
    // SAFETY: the child makes only raw system calls (async-signal-safe after fork in a
    // multithreaded process) and exits without unwinding.
    let pid = unsafe { libc::fork() };
    if pid == 0 {
        // SAFETY: plain system calls on valid arguments.
        unsafe {
            if thp_off {
                libc::prctl(libc::PR_SET_THP_DISABLE, 1, 0, 0, 0);
            }
            let mut b = 0u8;
            libc::read(rx.as_raw_fd(), (&mut b as *mut u8).cast(), 1);
            libc::mmap(
                std::ptr::null_mut(),
                4096,
                libc::PROT_READ,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                -1,
                0,
            );
            libc::_exit(0);
        }
    }
    if pid < 0 {
        return None;
    }
    let key = pid as u32;
    let mut calib: Option<HashMap<_, u32, [u64; 2]>> = ebpf
        .map_mut("CALIB")
        .and_then(|m| HashMap::try_from(m).ok());
    let armed = calib
        .as_mut()
        .is_some_and(|c| c.insert(key, [0, 0], 0).is_ok());
    // Release the child whatever happened, and reap it.
    let _ = nix::unistd::write(&tx, &[1]);
    let _ = nix::sys::wait::waitpid(nix::unistd::Pid::from_raw(pid), None);
    let mut calib = calib.filter(|_| armed)?;
    let got = calib.get(&key, 0).ok();
    let _ = calib.remove(&key);
    got.filter(|v| v[0] != 0).map(|v| v[1])
}
