//! `btm-agent run`: the privileged agent. Listens on a unix socket and keeps each height handed
//! over: in eBPF mode by a cut into the log, in zfs/btrfs mode as a native snapshot (`--mode`,
//! see [`Mode`]). After every successful cut, retention (`--itv/--cap/--algo`) removes heights
//! in every mode: snapshots are deleted; log heights are tombstoned at once and compacted away
//! later (`crate::log::Log::compact`).
use std::{
    os::unix::{fs::PermissionsExt, net::UnixListener},
    path::{Path, PathBuf},
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, Instant},
};

use anyhow::{Context, Result, bail};

use super::proto::{DEFAULT_SOCKET, Request, Response};
use crate::{
    cut::Cutter,
    log::Log,
    retention::{Algo, Policy},
    snapshot::{self, Probe, SnapshotBackend},
    tracker::{Limits, Tracker},
    volume::Mount,
};

/// The log directory of `run --mode ebpf` (and `rollback --mode ebpf`) without `--log`.
pub const DEFAULT_LOG: &str = "/var/lib/btm/log";

#[derive(clap::Args, Debug, Clone)]
pub struct RunArgs {
    /// Mount point of the chain data volume to track.
    #[arg(short = 'p', long, env = "BTM_VOLUME")]
    pub volume: PathBuf,
    /// Log directory of --mode ebpf (on another filesystem than the volume); unused by the
    /// native snapshot modes.
    #[arg(long, env = "BTM_LOG_DIR", default_value = DEFAULT_LOG)]
    pub log: PathBuf,
    /// Unix socket heights arrive on.
    #[arg(long, env = "BTM_SOCKET", default_value = DEFAULT_SOCKET)]
    pub socket: PathBuf,
    /// Socket permissions (octal): who may hand over heights.
    #[arg(long, default_value = "660", value_parser = parse_octal)]
    pub socket_mode: u32,
    /// Owner of the socket (user name or uid); default: the agent's user (root).
    #[arg(long, env = "BTM_SOCKET_OWNER")]
    pub socket_owner: Option<String>,
    /// Group of the socket (name or gid): give it the node's group so an unprivileged node
    /// can hand over heights (with the default mode 660).
    #[arg(long, env = "BTM_SOCKET_GROUP")]
    pub socket_group: Option<String>,
    /// Only heights divisible by this are kept.
    #[arg(short = 'i', long, env = "BTM_ITV", default_value_t = 1)]
    pub itv: u64,
    /// At most this many heights are kept (BTM's limit: 4096).
    #[arg(short = 'c', long, env = "BTM_CAP", default_value_t = 4096)]
    pub cap: usize,
    /// Retention: fair (newest cap) or fade (density falls with age).
    #[arg(
        short = 'a',
        long,
        env = "BTM_ALGO",
        value_enum,
        default_value = "fair"
    )]
    pub algo: Algo,
    /// Backend. auto: ebpf when --log is given and the tracker loads, else the volume's native
    /// snapshots (ZFS dataset / Btrfs subvolume), else an error naming what is missing.
    /// ebpf: tracker + log. zfs: snapshots DATASET@H. btrfs: read-only snapshots of the
    /// subvolume. Retention (--itv/--cap/--algo) applies after every cut in every mode.
    #[arg(
        short = 'm',
        long,
        env = "BTM_MODE",
        value_enum,
        default_value = "auto"
    )]
    pub mode: Mode,
    /// eBPF mode: compact the log (tracking goes on meanwhile) once heights removed by retention
    /// hold at least this many bytes and a quarter of the log.
    #[arg(long, env = "BTM_COMPACT_MIN_BYTES", default_value_t = 256 << 20)]
    pub compact_min_bytes: u64,
    /// Do not freeze the volume at cuts (only when the node is paused by the caller).
    #[arg(long)]
    pub no_freeze: bool,
    /// Serve Prometheus /metrics and /healthz here (HOST:PORT, or :PORT for loopback).
    #[arg(long, env = "BTM_METRICS_ADDR", value_parser = crate::metrics::parse_addr)]
    pub metrics_addr: Option<std::net::SocketAddr>,
    /// Ship every acknowledged height offsite in the background (never delays a cut); the
    /// remote mirrors the log's retention. See `btm-agent push --help` for URLs.
    #[command(flatten)]
    pub offsite: super::offsite::RemoteArgs,
    /// Tag for the heights shipped offsite.
    #[arg(long, env = "BTM_REMOTE_TAG")]
    pub remote_tag: Option<String>,
    /// JSON metadata for the heights shipped offsite.
    #[arg(long, env = "BTM_REMOTE_META", value_parser = super::offsite::parse_meta)]
    pub remote_meta: Option<serde_json::Value>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Mode {
    /// ebpf if it loads, else native snapshots, else an error.
    Auto,
    /// The eBPF tracker and the incremental log.
    Ebpf,
    /// ZFS snapshots of the dataset mounted at the volume.
    Zfs,
    /// Btrfs snapshots of the subvolume at the volume.
    Btrfs,
}

fn parse_octal(s: &str) -> Result<u32, String> {
    u32::from_str_radix(s, 8).map_err(|e| format!("{s}: not an octal mode: {e}"))
}

/// What cuts heights: the eBPF tracker and the log, or the volume's native snapshots.
enum Engine {
    Log {
        cutter: Box<Cutter>,
        dir: PathBuf,
        kept: Kept,
    },
    Native(Box<dyn SnapshotBackend>),
}

/// The log's kept heights (retention's input) and the byte counts that decide compaction,
/// tracked here so that a cut never re-reads the log.
struct Kept {
    /// Kept height -> bytes its record takes.
    sizes: std::collections::BTreeMap<u64, u64>,
    dropped_bytes: u64,
    total_bytes: u64,
    /// After a postponed or failed compaction: not before this.
    retry_after: Option<Instant>,
}

/// Whether nobody holds `readers.lock` right now (probed with a non-blocking exclusive lock).
fn readers_idle(dir: &Path) -> bool {
    std::fs::File::open(dir.join("readers.lock"))
        .map(|f| f.try_lock().is_ok())
        .unwrap_or(true)
}

impl Kept {
    fn of(log: &Log) -> Kept {
        Kept {
            sizes: log
                .heights()
                .iter()
                .map(|h| (h.height, h.stored_bytes))
                .collect(),
            dropped_bytes: log.dropped_bytes(),
            total_bytes: log.total_bytes(),
            retry_after: None,
        }
    }

    fn heights(&self) -> Vec<u64> {
        self.sizes.keys().copied().collect()
    }

    /// Adds a new height and returns what the policy drops now (not yet recorded).
    fn add(&mut self, height: u64, bytes: u64, policy: &Policy) -> Vec<u64> {
        self.sizes.insert(height, bytes);
        self.total_bytes += bytes;
        policy.to_delete(&self.heights())
    }

    fn forget(&mut self, dropped: &[u64]) {
        for h in dropped {
            self.dropped_bytes += self.sizes.remove(h).unwrap_or(0);
        }
    }

    fn wants_compaction(&self, min_bytes: u64) -> bool {
        self.retry_after.is_none_or(|t| Instant::now() >= t)
            && self.dropped_bytes >= min_bytes.max(1)
            && self.dropped_bytes * COMPACT_SHARE >= self.total_bytes
    }
}

/// Compact the log (tracking goes on meanwhile) once dropped records hold 1/COMPACT_SHARE of
/// it (and `--compact-min-bytes`).
const COMPACT_SHARE: u64 = 4;
/// How long to wait after a postponed or failed compaction.
const COMPACT_RETRY: Duration = Duration::from_secs(600);

pub fn run(args: RunArgs) -> Result<()> {
    if args.itv == 0 {
        return Err(super::exit::usage("--itv must be at least 1"));
    }
    if !(1..=4096).contains(&args.cap) {
        return Err(super::exit::usage("--cap must be between 1 and 4096"));
    }
    let policy = Policy::new(args.itv, args.cap, args.algo)?;
    // Forked before the agent loads anything: the guard holds no lock or program.
    if let Err(e) = crate::volume::ThawGuard::install(&args.volume) {
        tracing::warn!("no thaw guard for {}: {e:#}", args.volume.display());
    }
    let mut engine = select(&args, &policy)?;
    let listener = bind(&args.socket, args.socket_mode)?;
    set_socket_owner(
        &args.socket,
        args.socket_owner.as_deref(),
        args.socket_group.as_deref(),
    )?;
    // Before any other thread starts (metrics, offsite shipping): they inherit the blocked
    // signal mask, so SIGTERM reaches the handler instead of killing the process.
    let stop = Arc::new(AtomicBool::new(false));
    stop_on_signals(stop.clone(), &listener);
    let (metrics_dir, last) = match &engine {
        Engine::Log { cutter, dir, .. } => (dir.clone(), cutter.log().last_height()),
        Engine::Native(b) => (args.volume.clone(), b.list()?.last().copied()),
    };
    let metrics = crate::metrics::Metrics::start(args.metrics_addr, &metrics_dir, last)?;
    let shipper = match (&args.offsite.remote, &engine) {
        (None, _) => None,
        (Some(url), Engine::Log { dir, .. }) => Some(crate::remote::Shipper::start(
            crate::remote::Remote::open(url)?,
            dir.clone(),
            super::offsite::push_options(
                dir,
                args.offsite.remote_name.as_deref(),
                args.remote_tag.clone(),
                args.remote_meta.clone(),
            ),
        )),
        (Some(_), Engine::Native(b)) => bail!(
            "--remote ships the log of eBPF mode; {} keeps heights as native snapshots: send \
             those with zfs send / btrfs send instead",
            b.describe()
        ),
    };
    match &engine {
        Engine::Log { cutter, dir, .. } => {
            let mount = Mount::at(cutter.root())?;
            tracing::info!(
                mode = "ebpf",
                volume = %mount.mount_point.display(),
                fs = %mount.fstype,
                log = %dir.display(),
                socket = %args.socket.display(),
                last_height = last,
                "agent ready"
            );
        }
        Engine::Native(b) => tracing::info!(
            mode = b.name(),
            target = %b.describe(),
            socket = %args.socket.display(),
            last_height = last,
            "agent ready"
        ),
    }
    super::sd_notify::ready();
    let requests = super::socket::serve(listener, stop.clone());
    loop {
        let mut inc = match requests.recv_timeout(Duration::from_millis(500)) {
            Ok(inc) => inc,
            Err(std::sync::mpsc::RecvTimeoutError::Timeout) if !stop.load(Ordering::SeqCst) => {
                continue;
            }
            Err(_) => break,
        };
        if stop.load(Ordering::SeqCst) {
            break;
        }
        let resp = match std::mem::replace(&mut inc.req, Err(String::new())) {
            Ok(req) => match refusal(&req, inc.peer_uid, || last_height(&engine)) {
                Some(why) => {
                    tracing::warn!(peer_uid = inc.peer_uid, "refused a request: {why}");
                    Response::err(why)
                }
                None => handle(&mut engine, &args, &policy, &metrics, req),
            },
            Err(e) => Response::err(e),
        };
        inc.answer(&resp);
        // After answering: the node does not wait for a compaction. Without its tracker
        // the agent cannot go on, so a failure here stops it (the log stays consistent).
        engine = maybe_compact(engine, &args).context("compacting the log")?;
        // Then ship (a push holds the readers' lock, which would postpone compaction).
        if let Some(s) = &shipper {
            s.notify();
        }
    }
    super::sd_notify::stopping();
    let _ = std::fs::remove_file(&args.socket);
    metrics.set_alive(false);
    // A clean stop: the next start reads only what changes until then (cut/resume.rs).
    if let Engine::Log { cutter, .. } = &mut engine
        && let Err(e) = cutter.suspend()
    {
        tracing::warn!(
            "recording the state for the next start failed ({e:#}): it reads every file"
        );
    }
    if shipper.is_some() {
        tracing::info!("finishing the offsite push");
    }
    drop(shipper);
    tracing::info!("agent stopped");
    Ok(())
}

/// Picks the engine for `--mode` (see [`Mode`]).
fn select(args: &RunArgs, policy: &Policy) -> Result<Engine> {
    let native = |b: Box<dyn SnapshotBackend>| -> Result<Engine> {
        b.preflight()?;
        // One agent per volume in every mode: two would race each other's rollbacks and
        // retention. Held for the life of the process.
        std::mem::forget(crate::volume::VolumeLock::acquire(&args.volume)?);
        Ok(Engine::Native(b))
    };
    match args.mode {
        Mode::Ebpf => start_ebpf(args, policy),
        Mode::Zfs => native(Box::new(snapshot::Zfs::open(&args.volume)?)),
        Mode::Btrfs => native(Box::new(snapshot::Btrfs::open(&args.volume)?)),
        Mode::Auto => {
            // Only a tracker that cannot load falls back; other errors (another agent, a log on
            // the volume) are the user's to fix.
            let ebpf_err = match start_ebpf(args, policy) {
                Ok(e) => return Ok(e),
                Err(e) if e.is::<EbpfUnavailable>() => format!("{e:#}"),
                Err(e) => return Err(e),
            };
            match snapshot::probe(&args.volume)? {
                Probe::Found(b) => {
                    tracing::warn!(
                        "eBPF mode unavailable ({ebpf_err}); using {} native snapshots of {}",
                        b.name(),
                        b.describe()
                    );
                    native(b)
                }
                Probe::NotNative { reason } => bail!(
                    "--mode auto found no way to keep heights of {}: the eBPF tracker cannot be \
                     used ({ebpf_err}) and the volume has no native snapshots ({reason}). Options: \
                     --mode ebpf with --log LOGDIR on another filesystem (needs root, BTF, bpffs; \
                     `btm-agent track` shows what fails), or put the volume on a ZFS dataset \
                     (--mode zfs) or a Btrfs subvolume (--mode btrfs)",
                    args.volume.display()
                ),
            }
        }
    }
}

/// The eBPF tracker cannot be used on this volume (what `--mode auto` falls back on).
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
struct EbpfUnavailable(String);

fn unavailable(e: impl std::fmt::Display) -> anyhow::Error {
    anyhow::Error::new(EbpfUnavailable(format!("{e:#}")))
}

/// The eBPF path: tracker, log, cutter (the tracker first, so a failed `auto` leaves nothing).
fn start_ebpf(args: &RunArgs, policy: &Policy) -> Result<Engine> {
    let dir = args.log.clone();
    let mount = Mount::at(&args.volume).map_err(unavailable)?;
    let _claim = crate::volume::VolumeLock::acquire(&mount.mount_point)?;
    if crate::volume::Frozen::thaw_leftover(&mount.mount_point)? {
        tracing::warn!(
            "{} was left frozen (an agent died inside a cut); thawed it",
            mount.mount_point.display()
        );
    }
    let tracker = Tracker::start(&mount, Limits::for_volume_bytes(mount.size_bytes()))
        .map_err(unavailable)?;
    tracing::info!("{}", tracker.mmap_policy());
    std::fs::create_dir_all(&dir).with_context(|| format!("creating log dir {}", dir.display()))?;
    let mut log = Log::open_append(&dir)?;
    // The policy may have changed since the last run: apply it, and compact what it dropped
    // (with the same threshold as after cuts).
    let hs: Vec<u64> = log.heights().iter().map(|h| h.height).collect();
    let del = policy.to_delete(&hs);
    log.drop_heights(&del)?;
    if Kept::of(&log).wants_compaction(args.compact_min_bytes) {
        log = match log.compact() {
            Ok((l, rep)) => {
                log_compacted(&rep);
                l
            }
            Err(e) => {
                // The log is as it was: start anyway, compaction is retried after cuts.
                tracing::warn!("log compaction failed: {e}");
                Log::open_append(&dir)?
            }
        };
    }
    let kept = Kept::of(&log);
    let mut cutter = Cutter::new(mount, tracker, log)?;
    cutter.freeze = !args.no_freeze;
    // Held for the life of the process (the kernel releases it when the agent exits).
    std::mem::forget(_claim);
    Ok(Engine::Log {
        cutter: Box::new(cutter),
        dir,
        kept,
    })
}

/// Logs a compaction's report, each count as a number.
fn log_compacted(rep: &crate::log::CompactReport) {
    tracing::info!(
        dropped_records = rep.dropped_records,
        merged_records = rep.merged_records,
        bytes_before = rep.bytes_before,
        bytes_after = rep.bytes_after,
        "compacted the log"
    );
}

/// Compacts the log once dropped records take enough of it. Tracking goes on meanwhile and
/// the next cut stays incremental (compaction keeps the last height's state).
fn maybe_compact(engine: Engine, args: &RunArgs) -> Result<Engine> {
    let Engine::Log {
        mut cutter,
        dir,
        mut kept,
    } = engine
    else {
        return Ok(engine);
    };
    if !kept.wants_compaction(args.compact_min_bytes) {
        return Ok(Engine::Log { cutter, dir, kept });
    }
    // Readers (replay, list) hold readers.lock shared; compaction needs it exclusively.
    if !readers_idle(&dir) {
        tracing::info!("log compaction postponed: readers are using the log");
        kept.retry_after = Some(Instant::now() + COMPACT_RETRY);
        return Ok(Engine::Log { cutter, dir, kept });
    }
    match cutter.transform_log(|log| log.compact()) {
        Ok(rep) => {
            log_compacted(&rep);
            kept = Kept::of(cutter.log());
        }
        Err(e) => {
            // Compaction leaves the log as it was on error: carry on with it.
            tracing::warn!("log compaction failed, retrying later: {e:#}");
            kept.retry_after = Some(Instant::now() + COMPACT_RETRY);
        }
    }
    Ok(Engine::Log { cutter, dir, kept })
}

/// Who may ask what over the socket. A client in the socket's group (the node) may hand over
/// heights and ask for the status. A rollback rewrites the volume and removes every newer
/// height from the log: only root may ask for it, so that a compromised node cannot erase the
/// history that exists to survive it.
///
/// A height far above the last one is refused from anyone but root too: heights must increase,
/// so one absurd height (2^64 - 1) would make the agent refuse every real height after it.
fn refusal(
    req: &Request,
    peer_uid: Option<u32>,
    last: impl FnOnce() -> Option<u64>,
) -> Option<String> {
    match req {
        Request::Snapshot { height } if peer_uid != Some(0) => {
            let last = last().filter(|l| height.saturating_sub(*l) > MAX_HEIGHT_JUMP)?;
            Some(format!(
                "height {height} refused: it is more than {MAX_HEIGHT_JUMP} above the last \
                 recorded height {last}, and heights must increase, so it would block every real \
                 height after it; if the node really is that far ahead, hand it over as root"
            ))
        }
        Request::Rollback { .. } if peer_uid != Some(0) => Some(format!(
            "rollback refused: only root may roll back over the socket (the request came from \
             uid {}); run `btm-agent rollback` as root",
            peer_uid.map_or("unknown".to_string(), |u| u.to_string())
        )),
        _ => None,
    }
}

/// How far above the last recorded height a non-root client may hand over a height (about
/// a month of Solana slots, centuries of Bitcoin blocks).
const MAX_HEIGHT_JUMP: u64 = 10_000_000;

fn last_height(engine: &Engine) -> Option<u64> {
    match engine {
        Engine::Log { cutter, .. } => cutter.log().last_height(),
        Engine::Native(b) => b.list().ok().and_then(|hs| hs.last().copied()),
    }
}

fn handle(
    engine: &mut Engine,
    args: &RunArgs,
    policy: &Policy,
    metrics: &crate::metrics::Metrics,
    req: Request,
) -> Response {
    let to_resp = |r: Result<serde_json::Value>| match r {
        Ok(v) => Response::ok(v),
        Err(e) => Response::err(format!("{e:#}")),
    };
    match (engine, req) {
        (_, Request::Snapshot { height }) if !policy.wants(height) => Response::ok(
            serde_json::json!({ "height": height, "skipped": "not a multiple of itv" }),
        ),
        (Engine::Log { cutter, kept, .. }, Request::Snapshot { height }) => {
            match cutter.cut(height) {
                Ok((rep, info)) => {
                    let stats = cutter.tracker().stats().ok();
                    metrics.record_cut(&rep, info.stored_bytes, stats.as_ref());
                    tracing::info!(
                        height,
                        freeze_ms = (rep.freeze_ms * 10.0).round() / 10.0,
                        frozen_entries = rep.frozen_entries,
                        frozen_walk = rep.frozen_walk,
                        read = rep.read_unfrozen + rep.read_frozen,
                        stored = info.stored_bytes,
                        files = rep.files_changed,
                        "height durable"
                    );
                    let del = kept.add(height, info.stored_bytes, policy);
                    if let Err(e) = cutter.log_mut().drop_heights(&del) {
                        // The height is durable; retention catches up after the next cut.
                        tracing::error!("recording heights removed by retention: {e}");
                    } else {
                        kept.forget(&del);
                    }
                    let mut v = serde_json::to_value(&rep).unwrap_or_default();
                    v["removed"] = serde_json::json!(del);
                    Response::ok(v)
                }
                Err(e) => {
                    metrics.record_error();
                    tracing::error!(height, "cut failed: {e:#}");
                    Response::err(format!("{e:#}"))
                }
            }
        }
        (Engine::Native(b), Request::Snapshot { height }) => {
            let r = native_snapshot(b.as_ref(), policy, height);
            match &r {
                Ok(v) => tracing::info!(height, removed = %v["removed"], "snapshot taken"),
                Err(e) => {
                    metrics.record_error();
                    tracing::error!(height, "snapshot failed: {e:#}");
                }
            }
            to_resp(r)
        }
        (Engine::Log { cutter, kept, .. }, Request::Status) => Response::ok(serde_json::json!({
            "mode": "ebpf",
            "volume": cutter.root(),
            "last_height": cutter.log().last_height(),
            "heights": kept.sizes.len(),
            "tracker": cutter.tracker().stats().ok(),
        })),
        (Engine::Native(b), Request::Status) => to_resp(b.list().map_err(Into::into).map(|hs| {
            serde_json::json!({
                "mode": b.name(),
                "volume": args.volume,
                "target": b.describe(),
                "last_height": hs.last(),
                "heights": hs.len(),
            })
        })),
        (Engine::Log { cutter, kept, .. }, Request::Rollback { height, exact }) => {
            to_resp(rollback_in_agent(cutter, kept, height, exact))
        }
        (Engine::Native(b), Request::Rollback { height, exact }) => {
            to_resp(native_rollback(b.as_ref(), height, exact))
        }
    }
}

/// One native snapshot, then retention over every snapshot that exists.
fn native_snapshot(
    b: &dyn SnapshotBackend,
    policy: &Policy,
    height: u64,
) -> Result<serde_json::Value> {
    b.snapshot(height)?;
    let del = policy.to_delete(&b.list()?);
    if !del.is_empty() {
        b.delete(&del)?;
    }
    Ok(serde_json::json!({ "height": height, "mode": b.name(), "removed": del }))
}

/// Native rollback with BTM's target rules; snapshots newer than the target go.
pub fn native_rollback(
    b: &dyn SnapshotBackend,
    height: Option<u64>,
    exact: bool,
) -> Result<serde_json::Value> {
    let h = snapshot::resolve_target(&b.describe(), &b.list()?, height, exact)?;
    b.rollback(h)?;
    Ok(serde_json::json!({ "height": h, "mode": b.name() }))
}

fn rollback_in_agent(
    cutter: &mut Cutter,
    kept: &mut Kept,
    height: Option<u64>,
    exact: bool,
) -> Result<serde_json::Value> {
    // `kept` knows what this agent dropped since it opened the log.
    let h = crate::log::resolve_height(&kept.heights(), height, exact)?;
    let root = cutter.root().to_path_buf();
    let stats = cutter.log().replay(h, &root, &Default::default())?;
    // Like `zfs rollback -r`: newer heights leave the log, so the node can re-reach them.
    let removed: Vec<u64> = kept.heights().into_iter().filter(|&x| x > h).collect();
    cutter.transform_log(|log| log.truncate_after(h).map(|log| (log, ())))?;
    *kept = Kept::of(cutter.log());
    // The tracker saw the rollback as writes; the next cut re-reads everything to be sure.
    cutter.resync();
    Ok(serde_json::json!({ "height": h, "removed": removed, "stats": format!("{stats:?}") }))
}

/// Binds the socket, replacing a stale one (left by a crash) but never a live agent's.
fn bind(path: &Path, mode: u32) -> Result<UnixListener> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    if path.exists() {
        if std::os::unix::net::UnixStream::connect(path).is_ok() {
            return Err(super::exit::coded(
                super::exit::Code::Locked,
                format!(
                    "another agent is already listening on {}; stop it first or pass a different \
                     --socket",
                    path.display()
                ),
            ));
        }
        std::fs::remove_file(path)?;
    }
    let l = UnixListener::bind(path).with_context(|| format!("binding {}", path.display()))?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))?;
    Ok(l)
}

/// Hands the socket to `owner`/`group` (names or numeric ids).
fn set_socket_owner(path: &Path, owner: Option<&str>, group: Option<&str>) -> Result<()> {
    use nix::unistd::{Gid, Group, Uid, User};
    let uid = match owner {
        None => None,
        Some(o) => Some(match o.parse::<u32>() {
            Ok(n) => Uid::from_raw(n),
            Err(_) => {
                User::from_name(o)?
                    .ok_or_else(|| anyhow::anyhow!("--socket-owner {o}: no such user"))?
                    .uid
            }
        }),
    };
    let gid = match group {
        None => None,
        Some(g) => Some(match g.parse::<u32>() {
            Ok(n) => Gid::from_raw(n),
            Err(_) => {
                Group::from_name(g)?
                    .ok_or_else(|| anyhow::anyhow!("--socket-group {g}: no such group"))?
                    .gid
            }
        }),
    };
    if uid.is_some() || gid.is_some() {
        nix::unistd::chown(path, uid, gid).with_context(|| format!("chown {}", path.display()))?;
    }
    Ok(())
}

/// On SIGINT/SIGTERM: set `stop` and wake the accept loop by shutting the listening socket
/// down (accept then fails at once; connecting to the socket path would not work once the
/// path is gone).
fn stop_on_signals(stop: Arc<AtomicBool>, listener: &UnixListener) {
    use std::os::fd::AsRawFd;

    use nix::sys::signal::{SigSet, Signal};
    let mut set = SigSet::empty();
    set.add(Signal::SIGINT);
    set.add(Signal::SIGTERM);
    let _ = set.thread_block();
    let fd = listener.as_raw_fd();
    std::thread::spawn(move || {
        if set.wait().is_ok() {
            stop.store(true, Ordering::SeqCst);
            // SAFETY: the listener outlives the accept loop this wakes; shutdown on a
            // listening socket makes a blocked accept return.
            unsafe { libc::shutdown(fd, libc::SHUT_RDWR) };
        }
    });
}
