//! Compaction beside the cuts. A thread prepares it from a read-only view of the log (the
//! expensive part: folding dropped records, copying payloads, at a bounded rate) while the
//! agent keeps cutting heights; the run loop finishes it between requests, copying only the
//! records cut meanwhile before the one rename that commits it.
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::Instant;

use anyhow::{Context, Result};

use crate::log::{Log, LogError, Prepared};

/// A compaction being prepared on its own thread.
pub(super) struct Background {
    handle: Option<JoinHandle<Result<Option<Prepared>, LogError>>>,
    cancel: Arc<AtomicBool>,
    pub(super) started: Instant,
    /// Prepared, waiting for readers of the log to finish.
    parked: Option<Box<Prepared>>,
    told_parked: bool,
}

/// Where a [`Background`] compaction stands.
pub(super) enum Progress {
    Running,
    /// Nothing to fold after all.
    Nothing,
    /// Boxed: a prepared compaction is some 300 bytes, the other variants a few words.
    Prepared(Box<Prepared>),
    Failed(LogError),
}

impl Background {
    /// Starts preparing a compaction of `log` as it is now, reading at most `bytes_per_sec`.
    pub(super) fn start(log: &Log, bytes_per_sec: u64) -> Result<Background> {
        let view = log.view()?;
        let cancel = Arc::new(AtomicBool::new(false));
        let stop = cancel.clone();
        let handle = std::thread::Builder::new()
            .name("btm-compact".into())
            .spawn(move || {
                let p = view.prepare_compaction(bytes_per_sec, &stop);
                test_gate(&stop);
                p
            })
            .context("starting the compaction thread")?;
        Ok(Background {
            handle: Some(handle),
            cancel,
            started: Instant::now(),
            parked: None,
            told_parked: false,
        })
    }

    /// Takes the result once the thread is done.
    pub(super) fn poll(&mut self) -> Progress {
        if let Some(p) = self.parked.take() {
            return Progress::Prepared(p);
        }
        if !self.handle.as_ref().is_some_and(|h| h.is_finished()) {
            return Progress::Running;
        }
        match self.handle.take().expect("running").join() {
            Ok(Ok(Some(p))) => Progress::Prepared(Box::new(p)),
            Ok(Ok(None)) => Progress::Nothing,
            Ok(Err(e)) => Progress::Failed(e),
            Err(_) => Progress::Failed(LogError::Source("the compaction thread panicked".into())),
        }
    }

    /// Seconds since it started, and whether its preparation is done (the commit waits for
    /// readers), for `status`.
    pub(super) fn describe(&self) -> serde_json::Value {
        serde_json::json!({
            "running_secs": tenths_since(self.started),
            "prepared": self.parked.is_some(),
        })
    }

    /// Keeps a prepared compaction for a later [`Background::poll`].
    pub(super) fn park(&mut self, p: Box<Prepared>) {
        if !self.told_parked {
            self.told_parked = true;
            tracing::info!("log compaction prepared; its commit waits for readers of the log");
        }
        self.parked = Some(p);
    }

    /// Stops the thread and throws its work away (before a rollback cuts the log it reads,
    /// and when the agent stops).
    pub(super) fn stop(mut self) {
        self.cancel.store(true, Ordering::Relaxed);
        if let Some(h) = self.handle.take() {
            // Dropping the result removes its new segments.
            let _ = h.join();
        }
    }
}

/// Seconds since `t`, to a tenth (for `status` and the log).
pub(super) fn tenths_since(t: Instant) -> f64 {
    (t.elapsed().as_secs_f64() * 10.0).round() / 10.0
}

/// Tests hold a prepared compaction until the file `BTM_TEST_COMPACT_GATE` names exists, to
/// cut heights while it is in progress whatever the machine's speed.
fn test_gate(stop: &AtomicBool) {
    let Some(gate) = std::env::var_os("BTM_TEST_COMPACT_GATE") else {
        return;
    };
    while !std::path::Path::new(&gate).exists() && !stop.load(Ordering::Relaxed) {
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
}
