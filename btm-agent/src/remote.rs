//! Offsite copies: the `btm-remote` crate (push, restore, prune on object storage), plus the
//! agent's continuous shipping for `run --remote`: a background thread pushes after each
//! acknowledged height, so a slow or unreachable remote never delays a cut.

pub use btm_remote::*;

use std::path::PathBuf;
use std::sync::mpsc::{Receiver, RecvTimeoutError, Sender, channel};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crate::log::Log;

/// Handle of the shipping thread. Dropping it lets the thread finish its current push and end.
pub struct Shipper {
    tx: Option<Sender<()>>,
    thread: Option<JoinHandle<()>>,
}

/// How long to wait before retrying after a failed push.
const RETRY: Duration = Duration::from_secs(30);
/// How often an idle shipping thread looks at `LOGDIR/pins`: `pin` and `unpin` are separate
/// processes, and their change should not wait for the next height to reach the remote.
const PINS_POLL: Duration = Duration::from_secs(5);

/// What identifies a version of `LOGDIR/pins` (None: no file): its size and change time.
fn pins_version(log_dir: &std::path::Path) -> Option<(u64, i64, i64)> {
    use std::os::unix::fs::MetadataExt;
    let m = std::fs::metadata(log_dir.join(crate::log::PINS_FILE)).ok()?;
    Some((m.len(), m.ctime(), m.ctime_nsec()))
}

impl Shipper {
    /// Starts shipping `log_dir` to `remote`. The first push (catch-up) starts at once.
    pub fn start(remote: Remote, log_dir: PathBuf, opts: PushOptions) -> Shipper {
        crate::metrics::offsite_enabled();
        let (tx, rx) = channel();
        let thread = std::thread::Builder::new()
            .name("btm-ship".into())
            .spawn(move || ship_loop(remote, log_dir, opts, rx))
            .expect("spawning the shipping thread");
        let _ = tx.send(());
        Shipper {
            tx: Some(tx),
            thread: Some(thread),
        }
    }

    /// The log changed (a height is durable, a rollback or compaction happened): ship it
    /// (never blocks).
    pub fn notify(&self) {
        if let Some(tx) = &self.tx {
            let _ = tx.send(());
        }
    }
}

impl Drop for Shipper {
    fn drop(&mut self) {
        self.tx.take();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn ship_loop(remote: Remote, log_dir: PathBuf, opts: PushOptions, rx: Receiver<()>) {
    let mut pending = false;
    let mut retry_at: Option<Instant> = None;
    // The pins the last successful push published (read before it started).
    let mut pins_pushed = pins_version(&log_dir);
    loop {
        let wait = match retry_at {
            Some(t) => t.saturating_duration_since(Instant::now()),
            None if pending => Duration::ZERO,
            None => PINS_POLL,
        };
        match rx.recv_timeout(wait) {
            Ok(_) => {
                pending = true;
                // Coalesce heights that arrived meanwhile into one push.
                while rx.try_recv().is_ok() {}
                if retry_at.is_some() {
                    continue;
                }
            }
            Err(RecvTimeoutError::Timeout) => {
                if pins_version(&log_dir) != pins_pushed {
                    pending = true;
                }
            }
            Err(RecvTimeoutError::Disconnected) => {
                // Stopping: one last push, unless the remote is failing (its retries would
                // hold up the stop for minutes; the next start catches up).
                if pending && retry_at.is_none() {
                    once(&remote, &log_dir, &opts);
                }
                return;
            }
        }
        if !pending || retry_at.is_some_and(|t| Instant::now() < t) {
            continue;
        }
        let pins = pins_version(&log_dir);
        if once(&remote, &log_dir, &opts) {
            pending = false;
            retry_at = None;
            pins_pushed = pins;
        } else {
            retry_at = Some(Instant::now() + RETRY);
        }
    }
}

/// `opts` with the payloads `opts.excluded` (`--exclude`) leaves home: those only files at
/// matching paths hold, found in the log's metadata.
pub fn excluding(log: &Log, opts: &PushOptions) -> anyhow::Result<PushOptions> {
    let mut o = opts.clone();
    let globs = crate::log::PathGlobs::new(&o.excluded)
        .map_err(|e| crate::cmd::exit::usage(format!("--exclude: {e}")))?;
    o.skip = log.payloads_only_of(&globs)?;
    Ok(o)
}

/// One push; false when it should be retried later.
fn once(remote: &Remote, log_dir: &std::path::Path, opts: &PushOptions) -> bool {
    // A reader's shared lock: a compaction in progress makes this fail, and we retry.
    let log = match Log::open_read(log_dir) {
        Ok(l) => l,
        Err(e) => {
            tracing::warn!("offsite push postponed: {e}");
            return false;
        }
    };
    let opts = match excluding(&log, opts) {
        Ok(o) => o,
        Err(e) => {
            tracing::warn!("offsite push postponed: {e:#}");
            return false;
        }
    };
    match push(&log, remote, &opts) {
        Ok(rep) => {
            tracing::info!(
                remote = remote.url(),
                height = rep.newest_height,
                records = rep.records_uploaded,
                objects = rep.objects_uploaded,
                bytes = rep.bytes_uploaded,
                "shipped offsite"
            );
            crate::metrics::offsite_shipped(rep.newest_height, rep.bytes_uploaded);
            true
        }
        Err(e) => {
            tracing::warn!(
                "offsite push to {} failed, retrying in {RETRY:?}: {e:#}",
                remote.url()
            );
            crate::metrics::offsite_failed();
            false
        }
    }
}
