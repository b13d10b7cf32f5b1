//! Warming the inode cache ahead of a walk. On a cold cache every stat of a walk waits for its
//! inode to be read from disk, one at a time (19.8 s for the first cut after a restart at 10^6
//! files, BENCHMARKS-scale.md). Threads stat the names of each directory the walk lists, ahead
//! of it and many at once, and throw the answers away: the walk's own stat, taken where it
//! always was, then finds the inode in memory. A hint only: a full queue or a failed stat
//! changes nothing the walk records.
use std::{
    os::fd::OwnedFd,
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, AtomicU64, Ordering},
        mpsc::{Receiver, SyncSender, TrySendError, sync_channel},
    },
    thread::JoinHandle,
};

use super::stat::stat_at;

/// Stats in flight at once: enough to keep a disk's queue busy, few enough to stay out of
/// the node's way.
const THREADS: usize = 8;
/// Names per job, so one large directory is spread over the threads.
const CHUNK: usize = 64;
/// Jobs waiting at most; a directory listed while the queue is full is not warmed.
const QUEUE: usize = 1024;

struct Job {
    dir: Arc<OwnedFd>,
    names: Vec<Vec<u8>>,
}

pub(super) struct Warmer {
    tx: Option<SyncSender<Job>>,
    stop: Arc<AtomicBool>,
    /// Stats the threads made.
    done: Arc<AtomicU64>,
    threads: Vec<JoinHandle<()>>,
}

impl Warmer {
    /// Starts the threads; None when none could be started (the walk is then as before).
    pub(super) fn start() -> Option<Warmer> {
        let (tx, rx) = sync_channel::<Job>(QUEUE);
        let rx = Arc::new(Mutex::new(rx));
        let stop = Arc::new(AtomicBool::new(false));
        let done = Arc::new(AtomicU64::new(0));
        let threads: Vec<_> = (0..THREADS)
            .filter_map(|_| {
                let (rx, stop, done) = (rx.clone(), stop.clone(), done.clone());
                std::thread::Builder::new()
                    .name("btm-warm".into())
                    .spawn(move || work(&rx, &stop, &done))
                    .ok()
            })
            .collect();
        (!threads.is_empty()).then_some(Warmer {
            tx: Some(tx),
            stop,
            done,
            threads,
        })
    }

    /// Queues the names of `dir` in the order the walk takes them (from the end).
    pub(super) fn queue(&self, dir: &OwnedFd, names: &[Vec<u8>]) {
        let Some(tx) = &self.tx else { return };
        if names.is_empty() {
            return;
        }
        let Ok(dir) = nix::unistd::dup(dir) else {
            return;
        };
        let dir = Arc::new(dir);
        for chunk in names.rchunks(CHUNK) {
            let job = Job {
                dir: dir.clone(),
                names: chunk.iter().rev().cloned().collect(),
            };
            if let Err(TrySendError::Full(_) | TrySendError::Disconnected(_)) = tx.try_send(job) {
                return;
            }
        }
    }
}

fn work(rx: &Mutex<Receiver<Job>>, stop: &AtomicBool, done: &AtomicU64) {
    loop {
        let job = match rx.lock() {
            Ok(rx) => rx.recv(),
            Err(_) => return,
        };
        let Ok(job) = job else { return };
        for name in &job.names {
            if stop.load(Ordering::Relaxed) {
                return;
            }
            let _ = stat_at(&job.dir, name);
            done.fetch_add(1, Ordering::Relaxed);
        }
    }
}

impl Warmer {
    /// Stops the threads (what is still queued is of no use once the walk is over) and
    /// returns how many stats they made.
    pub(super) fn finish(self) -> u64 {
        let done = self.done.clone();
        drop(self);
        done.load(Ordering::Relaxed)
    }
}

impl Drop for Warmer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        self.tx = None;
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use crate::cut::scan::Scan;

    /// The threads stat ahead of a walk, and the walk still records every entry as it is.
    #[test]
    fn warms_a_walk_and_changes_nothing_it_records() {
        let dir = tempfile::tempdir().unwrap();
        for d in 0..4 {
            std::fs::create_dir(dir.path().join(format!("d{d}"))).unwrap();
            for f in 0..300 {
                std::fs::write(dir.path().join(format!("d{d}/f{f}")), b"x").unwrap();
            }
        }
        let (scan, warmed) = Scan::walk_warmed(dir.path()).unwrap();
        assert_eq!(scan.entries.len(), 4 + 4 * 300);
        assert!(warmed > 0, "no stat was made ahead of the walk");
        assert!(warmed <= 4 + 4 * 300, "{warmed} stats for 1204 entries");
        let f = scan
            .entries
            .get(b"d3/f299".as_slice())
            .expect("a file deep in the walk");
        assert!(matches!(
            f.kind,
            crate::cut::scan::Kind::File { size: 1, .. }
        ));
    }
}
