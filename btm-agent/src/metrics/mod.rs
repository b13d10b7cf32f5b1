//! Prometheus metrics and health endpoints for the agent (`run --metrics-addr ADDR`).
//!
//! Counters are atomics the run loop updates after each cut; a small std HTTP server on its
//! own thread renders them in the text exposition format. Scrapes never touch the cutter, so a
//! slow scraper cannot delay a height. Off by default; an address without a host binds loopback.
//!
//! Endpoints: `/metrics`; `/livez` (200 while the agent loop runs; `/healthz` is its older
//! name); `/readyz` (200 once the agent has started and no long task, see [`Metrics::busy`],
//! has run longer than the limit; 503 otherwise, with the reason in the body).
use std::{
    fmt::Write as _,
    io::{Read, Write},
    net::{SocketAddr, TcpListener, TcpStream, ToSocketAddrs},
    path::{Path, PathBuf},
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    time::Duration,
};

use anyhow::{Context, Result};

use crate::{cut::CutReport, tracker::Stats};

mod busy;
pub use busy::{BusyGuard, Tasks};

/// How long a cut or a compaction may run before `/readyz` answers 503 (`--ready-busy-secs`).
pub const DEFAULT_BUSY_LIMIT: Duration = Duration::from_secs(60);

/// Scrapes answered at once; more connections are dropped.
const MAX_SCRAPES: usize = 16;

/// Upper bounds (seconds) of the freeze-window histogram: the node stalls this long per cut.
const FREEZE_BUCKETS: [f64; 12] = [
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
];

/// `ADDR` for `--metrics-addr`: `host:port`, `:port` or `port` (the last two on 127.0.0.1,
/// so metrics are never exposed by accident).
pub fn parse_addr(s: &str) -> Result<SocketAddr, String> {
    let s = s.trim();
    let full = if let Some(port) = s.strip_prefix(':') {
        format!("127.0.0.1:{port}")
    } else if s.parse::<u16>().is_ok() {
        format!("127.0.0.1:{s}")
    } else {
        s.to_string()
    };
    full.to_socket_addrs()
        .ok()
        .and_then(|mut a| a.next())
        .ok_or_else(|| format!("{s}: not an address; use HOST:PORT, :PORT or PORT"))
}

/// Offsite shipping (`crate::remote::Shipper`) runs on its own thread, apart from the run loop.
static OFFSITE_HEIGHT: AtomicU64 = AtomicU64::new(u64::MAX);
static OFFSITE_BYTES: AtomicU64 = AtomicU64::new(0);
static OFFSITE_FAILURES: AtomicU64 = AtomicU64::new(0);
static OFFSITE_ENABLED: AtomicBool = AtomicBool::new(false);

/// Offsite shipping is configured (`run --remote`): the lag behind the log is exported.
pub fn offsite_enabled() {
    OFFSITE_ENABLED.store(true, Ordering::Relaxed);
}

/// A push to the remote finished.
pub fn offsite_shipped(height: Option<u64>, bytes: u64) {
    if let Some(h) = height {
        OFFSITE_HEIGHT.store(h, Ordering::Relaxed);
    }
    OFFSITE_BYTES.fetch_add(bytes, Ordering::Relaxed);
}

/// A push to the remote failed (it is retried).
pub fn offsite_failed() {
    OFFSITE_FAILURES.fetch_add(1, Ordering::Relaxed);
}

#[derive(Default)]
struct Histogram {
    counts: [u64; FREEZE_BUCKETS.len()],
    count: u64,
    sum: f64,
}

/// What the agent exposes. Shared (`Arc`) between the run loop and the HTTP thread.
pub struct Metrics {
    /// The log of eBPF mode, whose size a scrape reports; `None` in native modes (the volume
    /// is never walked for a scrape).
    log_dir: Option<PathBuf>,
    alive: AtomicBool,
    heights: AtomicU64,
    /// `u64::MAX` until a height is known.
    last_height: AtomicU64,
    read: AtomicU64,
    stored: AtomicU64,
    errors: AtomicU64,
    overflows: AtomicU64,
    /// The tracker's counters after the last cut.
    tracker: Mutex<Option<Stats>>,
    freeze: Mutex<Histogram>,
    /// Unix time (ms) of the agent's start and of the last height kept (0: none yet).
    start_ms: u64,
    last_cut_ms: AtomicU64,
    busy: Tasks,
    busy_limit_ms: AtomicU64,
}

impl Metrics {
    pub fn new(log_dir: Option<&Path>, last_height: Option<u64>) -> Metrics {
        Metrics {
            log_dir: log_dir.map(Path::to_path_buf),
            alive: AtomicBool::new(false),
            heights: AtomicU64::new(0),
            last_height: AtomicU64::new(last_height.unwrap_or(u64::MAX)),
            read: AtomicU64::new(0),
            stored: AtomicU64::new(0),
            errors: AtomicU64::new(0),
            overflows: AtomicU64::new(0),
            tracker: Mutex::new(None),
            freeze: Mutex::new(Histogram::default()),
            start_ms: unix_ms(),
            last_cut_ms: AtomicU64::new(0),
            busy: Tasks::default(),
            busy_limit_ms: AtomicU64::new(DEFAULT_BUSY_LIMIT.as_millis() as u64),
        }
    }

    /// Metrics for the run loop, served on `addr` when given; marks the agent alive.
    pub fn start(
        addr: Option<SocketAddr>,
        log_dir: Option<&Path>,
        last_height: Option<u64>,
    ) -> Result<Arc<Metrics>> {
        let m = Arc::new(Metrics::new(log_dir, last_height));
        if let Some(addr) = addr {
            let bound = m.clone().serve(addr)?;
            tracing::info!("metrics on http://{bound}/metrics, health on /livez and /readyz");
        }
        m.set_alive(true);
        Ok(m)
    }

    /// Binds `addr` and answers scrapes on a thread; returns the bound address.
    pub fn serve(self: Arc<Self>, addr: SocketAddr) -> Result<SocketAddr> {
        let listener = TcpListener::bind(addr).with_context(|| {
            format!("binding the metrics address {addr}; pick a free port with --metrics-addr")
        })?;
        let bound = listener.local_addr()?;
        std::thread::Builder::new()
            .name("btm-metrics".into())
            .spawn(move || {
                // Each scrape on its own thread, so a slow or silent client holds up no one;
                // beyond MAX_SCRAPES a connection is dropped (the scraper retries).
                crate::conn::each_on_its_thread(
                    listener.incoming().flatten(),
                    MAX_SCRAPES,
                    drop,
                    move |c| {
                        if let Err(e) = self.answer(c) {
                            tracing::debug!("metrics request: {e}");
                        }
                    },
                );
            })?;
        Ok(bound)
    }

    /// The run loop is accepting heights (false once it stops).
    pub fn set_alive(&self, alive: bool) {
        self.alive.store(alive, Ordering::SeqCst);
    }

    /// Marks `name` (`"cut"`, `"compaction"`, ...) as running until the guard is dropped; see
    /// the [`busy`] module. `/readyz` answers 503 while one has run longer than the limit.
    pub fn busy(&self, name: &str) -> BusyGuard {
        self.busy.start(name)
    }

    /// How long a task may run before `/readyz` answers 503 (default [`DEFAULT_BUSY_LIMIT`]).
    pub fn set_busy_limit(&self, limit: Duration) {
        self.busy_limit_ms
            .store(limit.as_millis() as u64, Ordering::Relaxed);
    }

    /// Whether the agent is ready: started, and no task over the limit; else why not.
    pub fn readiness(&self) -> Result<(), String> {
        if !self.alive.load(Ordering::SeqCst) {
            return Err("agent loop not running".into());
        }
        let limit = Duration::from_millis(self.busy_limit_ms.load(Ordering::Relaxed));
        let late: Vec<String> = self
            .busy
            .overdue(limit)
            .iter()
            .map(|(n, d)| format!("{n} running for {:.0} s", d.as_secs_f64()))
            .collect();
        if late.is_empty() {
            Ok(())
        } else {
            Err(format!(
                "{} (limit {} s)",
                late.join(", "),
                limit.as_secs_f64()
            ))
        }
    }

    /// Called after each successful cut.
    pub fn record_cut(&self, rep: &CutReport, stored_bytes: u64, tracker: Option<&Stats>) {
        self.record_height(rep.height);
        self.read
            .fetch_add(rep.read_unfrozen + rep.read_frozen, Ordering::Relaxed);
        self.stored.fetch_add(stored_bytes, Ordering::Relaxed);
        if let Some(s) = tracker {
            // The tracker's counters are cumulative since it loaded: mirror, do not add.
            self.overflows
                .store(s.chunk_overflows + s.lost, Ordering::Relaxed);
            *self.tracker.lock().unwrap_or_else(|e| e.into_inner()) = Some(*s);
        }
        let secs = rep.freeze_ms / 1000.0;
        let mut h = self.freeze.lock().unwrap_or_else(|e| e.into_inner());
        for (i, le) in FREEZE_BUCKETS.iter().enumerate() {
            if secs <= *le {
                h.counts[i] += 1;
            }
        }
        h.count += 1;
        h.sum += secs;
    }

    /// Called after each height kept, by a cut or a native snapshot.
    pub fn record_height(&self, height: u64) {
        self.heights.fetch_add(1, Ordering::Relaxed);
        self.last_height.store(height, Ordering::Relaxed);
        self.last_cut_ms.store(unix_ms(), Ordering::Relaxed);
    }

    /// Called when a cut fails.
    pub fn record_error(&self) {
        self.errors.fetch_add(1, Ordering::Relaxed);
    }

    /// The text exposition format (version 0.0.4).
    pub fn render(&self) -> String {
        let mut o = String::new();
        let _ = writeln!(
            o,
            "# HELP btm_build_info The agent's version (value always 1).\n\
             # TYPE btm_build_info gauge\nbtm_build_info{{version=\"{}\"}} 1",
            env!("CARGO_PKG_VERSION")
        );
        let mut metric = |name: &str, kind: &str, help: &str, value: String| {
            let _ = writeln!(
                o,
                "# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {value}"
            );
        };
        let get = |a: &AtomicU64| a.load(Ordering::Relaxed).to_string();
        let secs = |ms: u64| format!("{:.3}", ms as f64 / 1000.0);
        metric(
            "btm_start_time_seconds",
            "gauge",
            "Unix time the agent started.",
            secs(self.start_ms),
        );
        metric(
            "btm_ready",
            "gauge",
            "1 when /readyz answers 200 (started, no cut or compaction over the limit).",
            u8::from(self.readiness().is_ok()).to_string(),
        );
        metric(
            "btm_up",
            "gauge",
            "1 while the agent loop accepts heights.",
            u8::from(self.alive.load(Ordering::SeqCst)).to_string(),
        );
        metric(
            "btm_heights_total",
            "counter",
            "Heights cut into the log since the agent started.",
            get(&self.heights),
        );
        let last = self.last_height.load(Ordering::Relaxed);
        if last != u64::MAX {
            metric(
                "btm_last_height",
                "gauge",
                "Newest height in the log.",
                last.to_string(),
            );
        }
        let cut_ms = self.last_cut_ms.load(Ordering::Relaxed);
        if cut_ms != 0 {
            metric(
                "btm_last_cut_timestamp_seconds",
                "gauge",
                "Unix time the last height was kept (absent until the first since the start).",
                secs(cut_ms),
            );
        }
        for (new, old, help) in [
            (
                "btm_cut_read_bytes_total",
                "btm_cut_bytes_read_total",
                "Bytes read from the volume by cuts.",
            ),
            (
                "btm_cut_stored_bytes_total",
                "btm_cut_bytes_stored_total",
                "Bytes appended to the log by cuts (after dedup and compression).",
            ),
        ] {
            let v = get(if new.contains("read") {
                &self.read
            } else {
                &self.stored
            });
            metric(new, "counter", help, v.clone());
            // The old names (before 0.2) stay one release, so dashboards can move over.
            metric(old, "counter", &format!("Deprecated, use {new}."), v);
        }
        metric(
            "btm_cut_errors_total",
            "counter",
            "Cuts that failed (the height was not acknowledged).",
            get(&self.errors),
        );
        metric(
            "btm_tracker_overflows_total",
            "counter",
            "Dirty-map overflows and lost events in the tracker (each forces a full capture).",
            get(&self.overflows),
        );
        if let Some(dir) = &self.log_dir {
            metric(
                "btm_log_bytes",
                "gauge",
                "Size of the log directory.",
                dir_bytes(dir).to_string(),
            );
        }
        let shipped = OFFSITE_HEIGHT.load(Ordering::Relaxed);
        if shipped != u64::MAX {
            metric(
                "btm_offsite_last_height",
                "gauge",
                "Newest height shipped offsite (run --remote).",
                shipped.to_string(),
            );
        }
        if OFFSITE_ENABLED.load(Ordering::Relaxed) && shipped != u64::MAX && last != u64::MAX {
            metric(
                "btm_offsite_lag_heights",
                "gauge",
                "Newest height in the log minus newest height shipped offsite (run --remote).",
                last.saturating_sub(shipped).to_string(),
            );
        }
        metric(
            "btm_offsite_bytes_total",
            "counter",
            "Bytes uploaded offsite (run --remote).",
            get(&OFFSITE_BYTES),
        );
        metric(
            "btm_offsite_failures_total",
            "counter",
            "Offsite pushes that failed and are retried.",
            get(&OFFSITE_FAILURES),
        );
        let busy = self.busy.durations();
        if !busy.is_empty() {
            let _ = writeln!(
                o,
                "# HELP btm_busy_seconds How long the running task of each kind (cut, \
                 compaction) has run; 0 when none runs.\n# TYPE btm_busy_seconds gauge"
            );
            for (task, d) in busy {
                let d = d.map_or(0.0, |d| d.as_secs_f64());
                let _ = writeln!(o, "btm_busy_seconds{{task=\"{task}\"}} {d:.3}");
            }
        }
        let h = self.freeze.lock().unwrap_or_else(|e| e.into_inner());
        let name = "btm_freeze_seconds";
        let _ = writeln!(
            o,
            "# HELP {name} How long each cut kept the volume frozen.\n# TYPE {name} histogram"
        );
        for (le, c) in FREEZE_BUCKETS.iter().zip(h.counts) {
            let _ = writeln!(o, "{name}_bucket{{le=\"{le}\"}} {c}");
        }
        let _ = writeln!(o, "{name}_bucket{{le=\"+Inf\"}} {}", h.count);
        let _ = writeln!(o, "{name}_sum {}", h.sum);
        let _ = writeln!(o, "{name}_count {}", h.count);
        if let Some(st) = *self.tracker.lock().unwrap_or_else(|e| e.into_inner()) {
            let _ = writeln!(
                o,
                "# HELP btm_tracker_events_total What the tracker's programs counted since it \
                 loaded, by kind (fault_wide: 2 MiB folios marked whole for PMD mappings; \
                 fault_unresolved, remote_writes: partial folios read whole; lost, prog_misses: \
                 full captures).\n# TYPE btm_tracker_events_total counter"
            );
            if let Ok(serde_json::Value::Object(m)) = serde_json::to_value(st) {
                for (kind, v) in m {
                    let _ = writeln!(o, "btm_tracker_events_total{{kind=\"{kind}\"}} {v}");
                }
            }
        }
        o
    }

    fn answer(&self, mut conn: TcpStream) -> std::io::Result<()> {
        conn.set_write_timeout(Some(Duration::from_secs(5)))?;
        // Only the request line matters; read until the end of the headers (bounded in size,
        // and in time as a whole: per-read timeouts would let a byte every 4 s go on forever).
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        let mut req = Vec::new();
        let mut buf = [0u8; 1024];
        while !req.windows(4).any(|w| w == b"\r\n\r\n") && req.len() < 16 * 1024 {
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            if left.is_zero() {
                return Err(std::io::ErrorKind::TimedOut.into());
            }
            conn.set_read_timeout(Some(left))?;
            let n = conn.read(&mut buf)?;
            if n == 0 {
                break;
            }
            req.extend_from_slice(&buf[..n]);
        }
        let line = String::from_utf8_lossy(&req);
        let mut parts = line.split_whitespace();
        let (method, path) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
        let path = path.split('?').next().unwrap_or("");
        let (status, ctype, body) = match (method, path) {
            ("GET" | "HEAD", "/metrics") => (
                "200 OK",
                "text/plain; version=0.0.4; charset=utf-8",
                self.render(),
            ),
            // /healthz: the older name of /livez.
            ("GET" | "HEAD", "/livez" | "/healthz") if self.alive.load(Ordering::SeqCst) => {
                ("200 OK", "text/plain", "ok\n".to_string())
            }
            ("GET" | "HEAD", "/livez" | "/healthz") => (
                "503 Service Unavailable",
                "text/plain",
                "agent loop not running\n".to_string(),
            ),
            ("GET" | "HEAD", "/readyz") => match self.readiness() {
                Ok(()) => ("200 OK", "text/plain", "ready\n".to_string()),
                Err(why) => (
                    "503 Service Unavailable",
                    "text/plain",
                    format!("not ready: {why}\n"),
                ),
            },
            ("GET" | "HEAD", _) => (
                "404 Not Found",
                "text/plain",
                "try /metrics, /livez or /readyz\n".to_string(),
            ),
            _ => (
                "405 Method Not Allowed",
                "text/plain",
                "GET only\n".to_string(),
            ),
        };
        let mut out = format!(
            "HTTP/1.1 {status}\r\nContent-Type: {ctype}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
            body.len()
        );
        if method != "HEAD" {
            out.push_str(&body);
        }
        conn.write_all(out.as_bytes())
    }
}

fn unix_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// Bytes of regular files under `dir` (the log is a handful of segments and indexes).
fn dir_bytes(dir: &Path) -> u64 {
    let Ok(rd) = std::fs::read_dir(dir) else {
        return 0;
    };
    rd.flatten()
        .map(|e| match e.file_type() {
            Ok(t) if t.is_dir() => dir_bytes(&e.path()),
            Ok(t) if t.is_file() => e.metadata().map_or(0, |m| m.len()),
            _ => 0,
        })
        .sum()
}

#[cfg(test)]
mod tests;
