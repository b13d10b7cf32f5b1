//! `btm-agent run`: the privileged agent. Listens on a unix socket and keeps each height handed
//! over: in eBPF mode by a cut into the log, in zfs/btrfs mode as a native snapshot (`--mode`,
//! see [`Mode`]; both behind `crate::store::HeightStore`). After every height, retention
//! (`--itv/--cap/--algo`) removes heights in every mode: snapshots are deleted; log heights are
//! tombstoned at once and compacted away later (`crate::log::Log::compact`).
use std::{
    os::unix::{fs::PermissionsExt, net::UnixListener},
    path::{Path, PathBuf},
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::Duration,
};

use anyhow::{Context, Result, bail};

use super::proto::{DEFAULT_SOCKET, ErrorCode, Request, Response};
use crate::{
    retention::{Algo, Policy},
    snapshot::{self, Probe, SnapshotBackend},
    store::{HeightStore, LogStore, NativeStore},
    tracker::{Limits, Tracker},
    volume::Mount,
};

/// The log directory of `run --mode ebpf` (and `rollback --mode ebpf`) without `--log`.
pub const DEFAULT_LOG: &str = "/var/lib/btm/log";

#[derive(clap::Args, Debug, Clone)]
pub struct RunArgs {
    /// Mount point of the chain data volume to track; in zfs (or auto) mode also the name of
    /// a mounted dataset (`zroot/data`), as BTM takes it.
    #[arg(
        short = 'p',
        long,
        env = "BTM_VOLUME",
        visible_alias = "snapshot-volume"
    )]
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
    #[arg(
        short = 'i',
        long,
        env = "BTM_ITV",
        default_value_t = 1,
        visible_alias = "snapshot-itv"
    )]
    pub itv: u64,
    /// At most this many heights are kept (BTM's limit: 4096).
    #[arg(
        short = 'c',
        long,
        env = "BTM_CAP",
        default_value_t = 4096,
        visible_alias = "snapshot-cap"
    )]
    pub cap: usize,
    /// Retention: fair (newest cap) or fade (density falls with age).
    #[arg(
        short = 'a',
        long,
        env = "BTM_ALGO",
        value_enum,
        default_value = "fair",
        visible_alias = "snapshot-algo"
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
        default_value = "auto",
        visible_alias = "snapshot-mode"
    )]
    pub mode: Mode,
    /// eBPF mode: compact the log (tracking goes on meanwhile) once heights removed by retention
    /// hold at least this much (bytes, or a size: 256MiB, 1G) and a quarter of the log.
    #[arg(
        long,
        env = "BTM_COMPACT_MIN_BYTES",
        default_value = "256MiB",
        value_parser = super::size::parse_size
    )]
    pub compact_min_bytes: u64,
    /// eBPF mode: at most this many bytes per second read and written by a compaction (a
    /// size: 64MiB; 0 for no limit), so that it does not take the disk from the node. Heights
    /// keep being cut while it runs; only the copy of those cut meanwhile waits for them.
    #[arg(
        long,
        env = "BTM_COMPACT_RATE",
        default_value = "128MiB",
        value_parser = super::size::parse_size
    )]
    pub compact_rate: u64,
    /// Do not freeze the volume at cuts (only when the node is paused by the caller).
    #[arg(long)]
    pub no_freeze: bool,
    /// eBPF mode: at each cut, freeze the node's cgroup v2 (this directory, e.g.
    /// /sys/fs/cgroup/system.slice/node.service) instead of the volume's filesystem. The node
    /// stops a little less: FIFREEZE also quiesces the filesystem's journal with the node's
    /// writers blocked. Only processes in that cgroup are stopped, and a node that leaves
    /// asynchronous writes in flight (AIO, io_uring) needs the volume freeze.
    #[arg(long, env = "BTM_FREEZE_CGROUP", value_name = "DIR")]
    pub freeze_cgroup: Option<PathBuf>,
    /// eBPF mode: do not read-fault the node's shared mappings of the volume after each cut.
    /// By default the agent maps every page of them that is in the page cache read-only in
    /// the node's process (reading one byte of each with process_vm_readv, as the node's own
    /// MADV_POPULATE_READ would), so that a later store into it is seen as 4 KiB, not as its
    /// whole folio (up to 2 MiB re-read per store).
    #[arg(long)]
    pub no_prefault: bool,
    /// Serve Prometheus /metrics, /livez and /readyz here (HOST:PORT, or :PORT for loopback;
    /// the examples use 9846, 9100 being node_exporter's).
    #[arg(long, env = "BTM_METRICS_ADDR", value_parser = crate::metrics::parse_addr)]
    pub metrics_addr: Option<std::net::SocketAddr>,
    /// /readyz answers 503 while a cut or a compaction has run longer than this (seconds).
    #[arg(long, env = "BTM_READY_BUSY_SECS", default_value_t = 60)]
    pub ready_busy_secs: u64,
    /// Ship every acknowledged height offsite in the background (never delays a cut); the
    /// remote mirrors the log's retention unless --remote-cap gives it its own. See
    /// `btm-agent push --help` for URLs.
    #[command(flatten)]
    pub offsite: super::offsite::RemoteArgs,
    /// Offsite retention of its own for the heights shipped (--remote-cap/-itv/-algo).
    #[command(flatten)]
    pub remote_retention: super::offsite::RemoteRetentionArgs,
    /// Tag for the heights shipped offsite.
    #[arg(long, env = "BTM_REMOTE_TAG")]
    pub remote_tag: Option<String>,
    /// JSON metadata for the heights shipped offsite.
    #[arg(long, env = "BTM_REMOTE_META", value_parser = super::offsite::parse_meta)]
    pub remote_meta: Option<serde_json::Value>,
    /// Rollbacks this agent does (`btm-agent rollback` adds its own --preserve).
    #[command(flatten)]
    pub preserve: super::paths::PreserveArgs,
    /// What --remote shipping leaves home.
    #[command(flatten)]
    pub exclude: super::paths::ExcludeArgs,
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

pub fn run(mut args: RunArgs) -> Result<()> {
    // BTM takes the dataset's name in ZFS mode (`-p zroot/data`): work on its mountpoint.
    if matches!(args.mode, Mode::Auto | Mode::Zfs) && !args.volume.exists() {
        args.volume = snapshot::canonical_dir(&args.volume)?;
    }
    if args.itv == 0 {
        return Err(super::exit::usage("--itv must be at least 1"));
    }
    if !(1..=4096).contains(&args.cap) {
        return Err(super::exit::usage("--cap must be between 1 and 4096"));
    }
    let policy = Policy::new(args.itv, args.cap, args.algo)?;
    let remote_retention = args.remote_retention.retention()?;
    if remote_retention.is_some() && args.offsite.remote.is_none() {
        tracing::warn!("--remote-cap is set but there is no --remote to ship to: ignored");
    }
    // Forked before the agent loads anything: the guard holds no lock or program.
    if let Err(e) = crate::volume::ThawGuard::install(&args.volume, args.freeze_cgroup.as_deref()) {
        tracing::warn!("no thaw guard for {}: {e:#}", args.volume.display());
    }
    let run_preserve = args.preserve.patterns();
    args.preserve.globs()?;
    args.exclude.globs()?;
    let mut store = select(&args, &policy)?;
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
    let last = store.last_height();
    let metrics = crate::metrics::Metrics::start(args.metrics_addr, store.log_dir(), last)?;
    metrics.set_busy_limit(Duration::from_secs(args.ready_busy_secs));
    let shipper = match (&args.offsite.remote, store.log_dir()) {
        (None, _) => None,
        (Some(url), Some(dir)) => Some(crate::remote::Shipper::start(
            args.offsite.open(url)?,
            dir.to_path_buf(),
            crate::remote::PushOptions {
                remote_retention,
                ..super::offsite::push_options(
                    dir,
                    args.offsite.remote_name.as_deref(),
                    args.remote_tag.clone(),
                    args.remote_meta.clone(),
                    &args.exclude,
                )
            },
        )),
        (Some(_), None) => bail!(
            "--remote ships the log of eBPF mode; {} keeps heights as native snapshots: send \
             those with zfs send / btrfs send instead",
            store.describe()
        ),
    };
    tracing::info!(
        mode = store.mode(),
        target = %store.describe(),
        socket = %args.socket.display(),
        last_height = last,
        "agent ready"
    );
    super::sd_notify::ready();
    let requests = super::socket::serve(listener, stop.clone());
    loop {
        let mut inc = match requests.recv_timeout(Duration::from_millis(500)) {
            Ok(inc) => inc,
            Err(std::sync::mpsc::RecvTimeoutError::Timeout) if !stop.load(Ordering::SeqCst) => {
                // A compaction prepared in the background is finished between requests.
                maintain(store.as_mut(), &metrics)?;
                continue;
            }
            Err(_) => break,
        };
        if stop.load(Ordering::SeqCst) {
            break;
        }
        let resp = match std::mem::replace(&mut inc.req, Ok(Request::Status)) {
            Ok(req) => match refusal(&req, inc.peer_uid, || store.last_height()) {
                Some(why) => {
                    tracing::warn!(peer_uid = inc.peer_uid, "refused a request: {why}");
                    Response::err(ErrorCode::Forbidden, why)
                }
                None => handle(store.as_mut(), &policy, &metrics, req, &run_preserve),
            },
            Err(refused) => refused,
        };
        inc.answer(&resp);
        // After answering: the node does not wait for a compaction (it is prepared on its own
        // thread and only finished here). Without its tracker the agent cannot go on, so a
        // failure here stops it (the log stays consistent).
        maintain(store.as_mut(), &metrics)?;
        // Then ship (a push holds the readers' lock, which would postpone compaction).
        if let Some(s) = &shipper {
            s.notify();
        }
    }
    super::sd_notify::stopping();
    let _ = std::fs::remove_file(&args.socket);
    metrics.set_alive(false);
    // A clean stop: the next start reads only what changes until then (cut/resume.rs).
    if let Err(e) = store.suspend() {
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

/// Upkeep between requests. Only the commit of a compaction (prepared on its own thread)
/// runs here, holding up the next height: `/readyz` reports it once it takes too long.
fn maintain(store: &mut dyn HeightStore, metrics: &crate::metrics::Metrics) -> Result<()> {
    let _busy = metrics.busy("compaction");
    store.maintain().context("compacting the log")
}

/// What eBPF mode's cuts freeze (`--no-freeze`, `--freeze-cgroup`).
fn freeze_of(args: &RunArgs) -> Result<crate::cut::Freeze> {
    use crate::cut::{Freeze, NodeCgroup};
    Ok(match (&args.freeze_cgroup, args.no_freeze) {
        (Some(_), true) => {
            return Err(super::exit::usage(
                "--no-freeze and --freeze-cgroup (or their keys in the configuration) ask for \
                 two ways of pausing the node: keep one",
            ));
        }
        (Some(dir), false) => {
            let cg = NodeCgroup::open(dir)?;
            tracing::info!(
                "cuts freeze the node's cgroup {} instead of the volume",
                cg.path().display()
            );
            Freeze::Cgroup(cg)
        }
        (None, true) => Freeze::Off,
        (None, false) => Freeze::Volume,
    })
}

/// Picks the store for `--mode` (see [`Mode`]).
fn select(args: &RunArgs, policy: &Policy) -> Result<Box<dyn HeightStore>> {
    let native = |b: Box<dyn SnapshotBackend>| -> Result<Box<dyn HeightStore>> {
        Ok(Box::new(NativeStore::open(b, args.volume.clone())?))
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
fn start_ebpf(args: &RunArgs, policy: &Policy) -> Result<Box<dyn HeightStore>> {
    let mount = Mount::at(&args.volume).map_err(unavailable)?;
    let claim = crate::volume::VolumeLock::acquire(&mount.mount_point)?;
    if crate::volume::Frozen::thaw_leftover(&mount.mount_point)? {
        tracing::warn!(
            "{} was left frozen (an agent died inside a cut); thawed it",
            mount.mount_point.display()
        );
    }
    // The tracker the last clean stop left running, if still there (cut/resume.rs).
    let running = crate::cut::resume::Resume::peek_running(&args.log);
    let limits = Limits::for_volume_bytes(mount.size_bytes());
    let tracker = Tracker::start_after(&mount, limits, running).map_err(unavailable)?;
    tracing::info!("{}", tracker.mmap_policy());
    let store = LogStore::open(
        mount,
        tracker,
        &args.log,
        policy,
        crate::store::CompactSettings {
            min_bytes: args.compact_min_bytes,
            bytes_per_sec: args.compact_rate,
        },
        freeze_of(args)?,
    )?
    .with_prefault(!args.no_prefault);
    // Held for the life of the process (the kernel releases it when the agent exits).
    std::mem::forget(claim);
    Ok(Box::new(store))
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

fn handle(
    store: &mut dyn HeightStore,
    policy: &Policy,
    metrics: &crate::metrics::Metrics,
    req: Request,
    run_preserve: &[String],
) -> Response {
    let r = match req {
        Request::Snapshot { height } if store.is_kept(height) => Ok(serde_json::json!({
            "height": height,
            "already_durable": true
        })),
        Request::Snapshot { height } if !policy.wants(height) => Ok(serde_json::json!({
            "height": height,
            "skipped": "not a multiple of itv"
        })),
        Request::Snapshot { height } => {
            let _busy = metrics.busy("cut");
            store.take(height, policy, metrics).inspect_err(|e| {
                metrics.record_error();
                tracing::error!(height, "height failed: {e:#}");
            })
        }
        Request::Status => store.status(),
        Request::Rollback {
            height,
            exact,
            mut preserve,
        } => {
            preserve.extend(run_preserve.iter().cloned());
            crate::log::PathGlobs::new(&preserve)
                .map_err(|e| super::exit::usage(format!("--preserve: {e}")))
                .and_then(|p| store.rollback(height, exact, &p))
        }
    };
    match r {
        Ok(v) => Response::ok(v),
        Err(e) => Response::err(code_of(&e), format!("{e:#}")),
    }
}

/// The protocol's stable code for a failed request, from the error's kind.
fn code_of(e: &anyhow::Error) -> ErrorCode {
    use crate::log::LogError;
    use crate::snapshot::SnapshotError;
    for cause in e.chain() {
        if let Some(l) = cause.downcast_ref::<LogError>() {
            match l {
                LogError::HeightNotIncreasing { .. } => return ErrorCode::NotAbove,
                LogError::Empty
                | LogError::UnknownHeight { .. }
                | LogError::NoHeightAtOrBelow { .. } => return ErrorCode::NoSuchHeight,
                _ => {}
            }
        }
        if let Some(s) = cause.downcast_ref::<SnapshotError>() {
            match s {
                SnapshotError::NotAbove { .. } | SnapshotError::AlreadyExists { .. } => {
                    return ErrorCode::NotAbove;
                }
                SnapshotError::NoTarget { .. } | SnapshotError::NoSuchHeight { .. } => {
                    return ErrorCode::NoSuchHeight;
                }
                _ => {}
            }
        }
    }
    ErrorCode::Failed
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
