//! Replay's writer thread: the writes of fresh bytes (pieces above a file's old size, all of a
//! new file's) go to one thread, which first checks each payload's blake3 (once per payload)
//! and then writes, while replay reads and decompresses the next payloads: the hash and the
//! copy run on one core, the reads and zstd on the other. Long runs of whole blocks go past
//! the page cache, written by [`super::direct`]'s I/O threads while the next ones are
//! checked; the rest through the cache. A damaged payload is never written: its error
//! ([`LogError::CorruptExtent`], as when replay checked it itself) fails the replay. With
//! `sync`, the thread also starts the writeback of what it wrote through the cache, so the
//! disk writes during the replay instead of all at its final syncfs.
//!
//! Memory stays bounded: at most [`IN_FLIGHT`] bytes (or one payload, if larger) wait for the
//! thread, plus the batch of at most [`BATCH_BYTES`] being gathered for it, plus the direct
//! writer's buffers. The first failed write is reported by the next [`Writer::submit`] or
//! [`Writer::wait`]; the writes queued after it are dropped. Dropping the writer waits for
//! the thread, so nothing is written after replay returns.

use std::fs::File;
use std::ops::Range;
use std::os::fd::AsRawFd;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::mpsc::{Sender, channel};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, OnceLock};
use std::thread::JoinHandle;

use super::LogError;
use super::direct::{Runs, WriteError};
use crate::format::PayloadRef;
use crate::payload::check_data;
use crate::record::FileId;

/// Bytes queued for the writer thread at most (a larger payload goes alone).
pub(super) const IN_FLIGHT: usize = 8 << 20;

/// A decoded payload, and whether its bytes match its blake3 (`None` until checked).
pub(in crate::replay) struct Loaded {
    pub(in crate::replay) raw: Vec<u8>,
    check: OnceLock<Result<(), String>>,
}

impl Loaded {
    pub(in crate::replay) fn new(raw: Vec<u8>, checked: bool) -> Loaded {
        let check = OnceLock::new();
        if checked {
            let _ = check.set(Ok(()));
        }
        Loaded { raw, check }
    }

    /// Checks the bytes against `p`'s length and blake3, once.
    pub(in crate::replay) fn check(&self, p: &PayloadRef) -> Result<(), String> {
        self.check.get_or_init(|| check_data(p, &self.raw)).clone()
    }
}

/// Where a damaged payload was about to be written, for its error.
#[derive(Clone)]
pub(in crate::replay) struct Bad {
    pub(in crate::replay) height: u64,
    pub(in crate::replay) path: Arc<str>,
    pub(in crate::replay) id: FileId,
    pub(in crate::replay) offset: u64,
    pub(in crate::replay) len: u64,
}

impl Bad {
    pub(in crate::replay) fn error(self, what: String) -> LogError {
        let Bad {
            height,
            path,
            id,
            offset,
            len,
        } = self;
        LogError::CorruptExtent {
            height,
            path: path.to_string(),
            id,
            offset,
            len,
            what,
        }
    }
}

/// `data.raw[range]` of payload `p`, to write at `at` of `file` (at `path`).
pub(in crate::replay) struct Job {
    pub(in crate::replay) file: Arc<File>,
    pub(in crate::replay) p: PayloadRef,
    pub(in crate::replay) data: Arc<Loaded>,
    pub(in crate::replay) range: Range<usize>,
    pub(in crate::replay) at: u64,
    pub(in crate::replay) path: Arc<Path>,
    pub(in crate::replay) bad: Bad,
}

impl Job {
    /// Checks the payload against its blake3.
    fn check(&self) -> Result<(), Failure> {
        self.data
            .check(&self.p)
            .map_err(|what| Failure::Corrupt(self.bad.clone(), what))
    }

    /// Checks, then writes through the page cache (when no writer thread could start).
    fn run(&self) -> Result<(), Failure> {
        self.check()?;
        self.file
            .write_all_at(&self.data.raw[self.range.clone()], self.at)
            .map_err(|e| Failure::Write(self.path.to_path_buf(), format!("write: {e}")))
    }
}

/// Writeback is started per file once this many bytes were written to it, over the range
/// they span: one call per 4 KiB piece (a height of scattered small changes) issued tiny
/// writes out of order, and a 4.3 GiB replay ran at 260 MB/s instead of 398.
const WRITEBACK_AFTER: usize = 16 << 20;

/// Bytes written to one file since its writeback was last started, and the range they span.
pub(super) struct Unflushed {
    file: Arc<File>,
    lo: u64,
    hi: u64,
    bytes: usize,
}

impl Unflushed {
    /// Notes `len` bytes written at `at` of `file`; starts the writeback of what is due.
    pub(super) fn note(pending: &mut Option<Unflushed>, file: &Arc<File>, at: u64, len: usize) {
        match pending {
            Some(u) if Arc::ptr_eq(&u.file, file) => {
                (u.lo, u.hi) = (u.lo.min(at), u.hi.max(at + len as u64));
                u.bytes += len;
            }
            _ => {
                if let Some(u) = pending.take() {
                    u.start_writeback();
                }
                *pending = Some(Unflushed {
                    file: file.clone(),
                    lo: at,
                    hi: at + len as u64,
                    bytes: len,
                });
            }
        }
        if pending.as_ref().is_some_and(|u| u.bytes >= WRITEBACK_AFTER) {
            pending.take().expect("just checked").start_writeback();
        }
    }

    /// Starts the writeback of the range (`sync_file_range(SYNC_FILE_RANGE_WRITE)`, which does
    /// not wait for it): only a hint, the final syncfs makes the bytes durable and reports
    /// errors. Without it the kernel starts writing back only at that syncfs (or once
    /// gigabytes are dirty), and the replay of 1 GiB waited ~0.5 s for the disk after its
    /// last write.
    pub(super) fn start_writeback(self) {
        // SAFETY: the fd is open (this holds the file); no memory is passed.
        unsafe {
            libc::sync_file_range(
                self.file.as_raw_fd(),
                self.lo as libc::off64_t,
                (self.hi - self.lo) as libc::off64_t,
                libc::SYNC_FILE_RANGE_WRITE,
            );
        }
    }
}

#[derive(Clone)]
enum Failure {
    Write(PathBuf, String),
    Corrupt(Bad, String),
}

impl Failure {
    fn error(self) -> LogError {
        match self {
            Failure::Write(path, what) => LogError::Replay { path, what },
            Failure::Corrupt(bad, what) => bad.error(what),
        }
    }
}

#[derive(Default)]
struct Queue {
    bytes: usize,
    jobs: usize,
    /// The first failed job.
    failed: Option<Failure>,
    /// Bytes the thread wrote with `O_DIRECT` ([`super::direct`]).
    direct_bytes: u64,
}

#[derive(Default)]
struct Shared {
    q: Mutex<Queue>,
    cv: Condvar,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, Queue> {
        self.q.lock().unwrap_or_else(|p| p.into_inner())
    }
}

#[derive(Default)]
pub(super) struct Writer {
    /// Start the writeback of every range written (the replay ends with a syncfs).
    pub(super) sync: bool,
    tx: Option<Sender<Vec<Job>>>,
    thread: Option<JoinHandle<()>>,
    shared: Arc<Shared>,
    /// Jobs not yet handed to the thread, and their bytes.
    batch: Vec<Job>,
    batch_bytes: usize,
}

/// Jobs go to the thread in batches of this many bytes (or [`BATCH_JOBS`] jobs): one hand-over
/// per 4 KiB piece woke the thread for every piece, and a replay of scattered changes spent
/// more time switching between the threads than writing.
const BATCH_BYTES: usize = 256 << 10;
const BATCH_JOBS: usize = 64;

impl Writer {
    /// Checks and writes `job` on the writer thread; true when it went there, false when it
    /// was done here (no thread could be started).
    pub(super) fn submit(&mut self, job: Job) -> Result<bool, LogError> {
        if self.tx.is_none() && !self.start() {
            job.run().map_err(Failure::error)?;
            return Ok(false);
        }
        self.batch_bytes += job.range.len();
        self.batch.push(job);
        if self.batch_bytes >= BATCH_BYTES || self.batch.len() >= BATCH_JOBS {
            self.send_batch()?;
        }
        Ok(true)
    }

    /// Hands the batch to the thread once fewer than [`IN_FLIGHT`] bytes wait there.
    fn send_batch(&mut self) -> Result<(), LogError> {
        if self.batch.is_empty() {
            return Ok(());
        }
        let len = std::mem::take(&mut self.batch_bytes);
        let batch = std::mem::take(&mut self.batch);
        let mut q = self.shared.lock();
        while q.failed.is_none() && q.jobs > 0 && q.bytes + len > IN_FLIGHT {
            q = self.shared.cv.wait(q).unwrap_or_else(|p| p.into_inner());
        }
        if let Some(f) = q.failed.clone() {
            return Err(f.error());
        }
        q.bytes += len;
        q.jobs += 1;
        drop(q);
        let Some(tx) = &self.tx else {
            unreachable!("started before the first job was batched")
        };
        if let Err(back) = tx.send(batch) {
            // The thread is gone (it panicked): do it here.
            let mut q = self.shared.lock();
            q.bytes -= len;
            q.jobs -= 1;
            drop(q);
            for j in back.0 {
                j.run().map_err(Failure::error)?;
            }
        }
        Ok(())
    }

    /// Bytes written with `O_DIRECT` so far (up to the last [`Writer::wait`]).
    pub(super) fn direct_bytes(&self) -> u64 {
        self.shared.lock().direct_bytes
    }

    /// Waits until every submitted write is done; the first that failed is the error.
    pub(super) fn wait(&mut self) -> Result<(), LogError> {
        self.send_batch()?;
        let mut q = self.shared.lock();
        while q.jobs > 0 {
            q = self.shared.cv.wait(q).unwrap_or_else(|p| p.into_inner());
        }
        match q.failed.clone() {
            Some(f) => Err(f.error()),
            None => Ok(()),
        }
    }

    fn start(&mut self) -> bool {
        let (tx, rx) = channel::<Vec<Job>>();
        let shared = self.shared.clone();
        let sync = self.sync;
        let spawned = std::thread::Builder::new()
            .name("btm-replay-write".into())
            .spawn(move || {
                let mut runs = Runs::new(sync);
                for batch in rx {
                    let mut len = 0;
                    let mut failed = None;
                    let failed_before = shared.lock().failed.is_some();
                    for j in batch {
                        // After a failure the rest is dropped.
                        let skip = failed_before || failed.is_some();
                        if !skip {
                            failed = j.check().err().or_else(|| {
                                let data = &j.data.raw[j.range.clone()];
                                runs.write(&j.file, &j.path, data, j.at)
                                    .err()
                                    .map(write_failed)
                            });
                        }
                        len += j.range.len();
                    }
                    let mut q = shared.lock();
                    // The last batch queued ends the run, so that a wait finds every byte
                    // written; while more are queued, the run goes on into them.
                    if q.jobs == 1 && failed.is_none() && q.failed.is_none() {
                        drop(q);
                        failed = runs.finish().err().map(write_failed);
                        q = shared.lock();
                    }
                    q.bytes -= len;
                    q.jobs -= 1;
                    q.direct_bytes = runs.direct_bytes;
                    if q.failed.is_none() {
                        q.failed = failed;
                    }
                    drop(q);
                    shared.cv.notify_all();
                }
                // Only when replay gave up without waiting: what is gathered is written
                // before the thread is joined, as every queued job used to be.
                let _ = runs.finish();
            });
        match spawned {
            Ok(t) => {
                self.tx = Some(tx);
                self.thread = Some(t);
                true
            }
            Err(_) => false,
        }
    }
}

fn write_failed((path, what): WriteError) -> Failure {
    Failure::Write(path.to_path_buf(), what)
}

impl Drop for Writer {
    fn drop(&mut self) {
        self.tx = None;
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}
