//! A deadline for a whole test whose own system calls can hang.
use std::io::Write;

/// Ends the whole test process with a message when it is still alive after `limit`: for tests
/// that drive a daemon which can hang the test's own system calls (a zfs-fuse mount), where no
/// per-command deadline helps. Disarmed when dropped.
pub struct Watchdog(std::sync::mpsc::Sender<()>);

pub fn watchdog(what: &str, limit: std::time::Duration) -> Watchdog {
    watchdog_then(what, limit, || {})
}

/// [`watchdog`] that runs `cleanup` before ending the process, so that what hung cannot hang
/// the tests after it (for ZFS: [`crate::zfs::detach_all_test_pools`]).
pub fn watchdog_then(what: &str, limit: std::time::Duration, cleanup: fn()) -> Watchdog {
    let (tx, rx) = std::sync::mpsc::channel::<()>();
    let what = what.to_string();
    std::thread::spawn(move || {
        if let Err(std::sync::mpsc::RecvTimeoutError::Timeout) = rx.recv_timeout(limit) {
            // Straight to the file descriptor: the test harness captures eprintln! in threads
            // a test spawned, and the process ends before it would print it.
            let _ = writeln!(
                std::io::stderr(),
                "{what}: still running after {}s; a tool or daemon it drives hangs (for \
                 zfs-fuse: is the daemon alive? restart it); ending the test process",
                limit.as_secs()
            );
            cleanup();
            std::process::exit(101);
        }
    });
    Watchdog(tx)
}

impl Drop for Watchdog {
    fn drop(&mut self) {
        let _ = self.0.send(());
    }
}
