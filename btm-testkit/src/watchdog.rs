//! A deadline for a whole test whose own system calls can hang.

/// Ends the whole test process with a message when it is still alive after `limit`: for tests
/// that drive a daemon which can hang the test's own system calls (a zfs-fuse mount), where no
/// per-command deadline helps. Disarmed when dropped.
pub struct Watchdog(std::sync::mpsc::Sender<()>);

pub fn watchdog(what: &str, limit: std::time::Duration) -> Watchdog {
    let (tx, rx) = std::sync::mpsc::channel::<()>();
    let what = what.to_string();
    std::thread::spawn(move || {
        if let Err(std::sync::mpsc::RecvTimeoutError::Timeout) = rx.recv_timeout(limit) {
            eprintln!(
                "{what}: still running after {}s; a tool or daemon it drives hangs (for \
                 zfs-fuse: is the daemon alive? restart it); ending the test process",
                limit.as_secs()
            );
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
