//! Long-running work by name (a cut, a compaction) for `/readyz` and `btm_busy_seconds`.
//!
//! Whoever starts such work holds a [`BusyGuard`] for its duration:
//!
//! ```ignore
//! let _busy = metrics.busy("compaction"); // records the start
//! log.compact(...)?;                       // dropping the guard clears it, on every path
//! ```
//!
//! `/readyz` answers 503 while any guard has been held longer than the agent's limit
//! (`run --ready-busy-secs`, 60 s by default), and `btm_busy_seconds{task="NAME"}` shows how
//! long the oldest running task of each name has run (0 once it ends). Guards may be taken on
//! any thread and for several names at once; the same name may be held more than once.
use std::{
    collections::BTreeMap,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

/// The running tasks, by name. Cheap to clone (shared).
#[derive(Clone, Default)]
pub struct Tasks {
    inner: Arc<Mutex<Inner>>,
}

#[derive(Default)]
struct Inner {
    next_id: u64,
    /// Every name ever started (so the gauge stays, at 0, between runs), with the start of
    /// each task of that name that is still running.
    running: BTreeMap<String, Vec<(u64, Instant)>>,
}

/// Clears its task when dropped. Holds no borrow: it may move to another thread.
#[must_use = "the task counts as running only while the guard is held"]
pub struct BusyGuard {
    tasks: Tasks,
    name: String,
    id: u64,
}

impl Tasks {
    /// Records that `name` starts now; the returned guard ends it.
    pub fn start(&self, name: &str) -> BusyGuard {
        let mut t = self.lock();
        let id = t.next_id;
        t.next_id += 1;
        t.running
            .entry(name.to_string())
            .or_default()
            .push((id, Instant::now()));
        BusyGuard {
            tasks: self.clone(),
            name: name.to_string(),
            id,
        }
    }

    /// Every name seen with how long its oldest running task has run (`None`: none runs).
    pub fn durations(&self) -> Vec<(String, Option<Duration>)> {
        let now = Instant::now();
        self.lock()
            .running
            .iter()
            .map(|(name, v)| {
                let oldest = v
                    .iter()
                    .map(|(_, t)| now.saturating_duration_since(*t))
                    .max();
                (name.clone(), oldest)
            })
            .collect()
    }

    /// Tasks that have run longer than `limit`, with how long.
    pub fn overdue(&self, limit: Duration) -> Vec<(String, Duration)> {
        self.durations()
            .into_iter()
            .filter_map(|(n, d)| d.filter(|d| *d > limit).map(|d| (n, d)))
            .collect()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl Drop for BusyGuard {
    fn drop(&mut self) {
        let mut t = self.tasks.lock();
        if let Some(v) = t.running.get_mut(&self.name) {
            v.retain(|(id, _)| *id != self.id);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn guard_clears_on_drop_and_the_name_stays() {
        let t = Tasks::default();
        assert!(t.durations().is_empty());
        let a = t.start("cut");
        let b = t.start("cut");
        std::thread::sleep(Duration::from_millis(30));
        let c = t.start("compaction");
        assert_eq!(t.overdue(Duration::from_millis(20)).len(), 1);
        assert_eq!(t.overdue(Duration::from_millis(20))[0].0, "cut");
        drop(a);
        // The other cut still runs (it started at the same time).
        assert_eq!(t.overdue(Duration::from_millis(20)).len(), 1);
        drop(b);
        assert!(t.overdue(Duration::from_millis(20)).is_empty());
        // A guard moves to another thread and ends there.
        std::thread::spawn(move || drop(c)).join().unwrap();
        let d = t.durations();
        assert_eq!(
            d.iter()
                .map(|(n, d)| (n.as_str(), d.is_some()))
                .collect::<Vec<_>>(),
            [("compaction", false), ("cut", false)]
        );
    }
}
