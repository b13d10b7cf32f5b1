//! `btm-agent run`: the privileged agent. Tracks a volume, listens on a unix socket and cuts a
//! height each time one is handed over.
use std::{
    io::{BufRead, BufReader, Write},
    os::unix::{fs::PermissionsExt, net::UnixListener},
    path::{Path, PathBuf},
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
};

use anyhow::{Context, Result, bail};

use super::proto::{DEFAULT_SOCKET, Request, Response};
use crate::{
    cut::Cutter,
    log::Log,
    retention::Algo,
    tracker::{Limits, Tracker},
    volume::Mount,
};

#[derive(clap::Args, Debug, Clone)]
pub struct RunArgs {
    /// Mount point of the chain data volume to track.
    #[arg(short = 'p', long, env = "BTM_VOLUME")]
    pub volume: PathBuf,
    /// Log directory (on another filesystem than the volume).
    #[arg(long, env = "BTM_LOG_DIR")]
    pub log: PathBuf,
    /// Unix socket heights arrive on.
    #[arg(long, env = "BTM_SOCKET", default_value = DEFAULT_SOCKET)]
    pub socket: PathBuf,
    /// Socket permissions (octal): who may hand over heights.
    #[arg(long, default_value = "660", value_parser = parse_octal)]
    pub socket_mode: u32,
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
    /// Backend: ebpf (this log), or the volume's native snapshots.
    #[arg(
        short = 'm',
        long,
        env = "BTM_MODE",
        value_enum,
        default_value = "auto"
    )]
    pub mode: Mode,
    /// Do not freeze the volume at cuts (only when the node is paused by the caller).
    #[arg(long)]
    pub no_freeze: bool,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Mode {
    Auto,
    Ebpf,
    Zfs,
    Btrfs,
}

fn parse_octal(s: &str) -> Result<u32, String> {
    u32::from_str_radix(s, 8).map_err(|e| format!("{s}: not an octal mode: {e}"))
}

pub fn run(args: RunArgs) -> Result<()> {
    if args.itv == 0 {
        bail!("--itv must be at least 1");
    }
    if !(1..=4096).contains(&args.cap) {
        bail!("--cap must be between 1 and 4096");
    }
    if matches!(args.mode, Mode::Zfs | Mode::Btrfs) {
        bail!(
            "--mode {:?} is served by the snapshot backends: not wired into `run` yet; use --mode ebpf",
            args.mode
        );
    }
    let mount = Mount::at(&args.volume)?;
    let _claim = crate::volume::VolumeLock::acquire(&mount)?;
    if crate::volume::Frozen::thaw_leftover(&mount.mount_point)? {
        tracing::warn!(
            "{} was left frozen (an agent died inside a cut); thawed it",
            mount.mount_point.display()
        );
    }
    std::fs::create_dir_all(&args.log)
        .with_context(|| format!("creating log dir {}", args.log.display()))?;
    let log = Log::open_append(&args.log)?;
    let tracker = Tracker::start(&mount, Limits::for_volume_bytes(mount.size_bytes()))?;
    let mut cutter = Cutter::new(mount.clone(), tracker, log)?;
    cutter.freeze = !args.no_freeze;

    let listener = bind(&args.socket, args.socket_mode)?;
    tracing::info!(
        volume = %mount.mount_point.display(),
        fs = %mount.fstype,
        log = %args.log.display(),
        socket = %args.socket.display(),
        last_height = ?cutter.log().last_height(),
        "agent ready"
    );
    let stop = Arc::new(AtomicBool::new(false));
    stop_on_signals(stop.clone(), args.socket.clone());
    for conn in listener.incoming() {
        if stop.load(Ordering::SeqCst) {
            break;
        }
        let Ok(mut stream) = conn else { continue };
        let mut line = String::new();
        if BufReader::new(&stream).read_line(&mut line).is_err() || line.trim().is_empty() {
            continue;
        }
        let resp = match serde_json::from_str::<Request>(&line) {
            Ok(req) => handle(&mut cutter, &args, req),
            Err(e) => Response::err(format!("malformed request: {e}")),
        };
        let mut out = serde_json::to_string(&resp)?;
        out.push('\n');
        let _ = stream.write_all(out.as_bytes());
    }
    let _ = std::fs::remove_file(&args.socket);
    tracing::info!("agent stopped");
    Ok(())
}

fn handle(cutter: &mut Cutter, args: &RunArgs, req: Request) -> Response {
    match req {
        Request::Snapshot { height } => {
            if height % args.itv != 0 {
                return Response::ok(
                    serde_json::json!({ "height": height, "skipped": "not a multiple of itv" }),
                );
            }
            match cutter.cut(height) {
                Ok((rep, info)) => {
                    tracing::info!(
                        height,
                        freeze_ms = format!("{:.1}", rep.freeze_ms),
                        read = rep.read_unfrozen + rep.read_frozen,
                        stored = info.stored_bytes,
                        files = rep.files_changed,
                        "height durable"
                    );
                    Response::ok(serde_json::to_value(&rep).unwrap_or_default())
                }
                Err(e) => {
                    tracing::error!(height, "cut failed: {e:#}");
                    Response::err(format!("{e:#}"))
                }
            }
        }
        Request::Status => Response::ok(serde_json::json!({
            "volume": cutter.root(),
            "last_height": cutter.log().last_height(),
            "heights": cutter.log().heights().len(),
            "tracker": cutter.tracker().stats().ok(),
        })),
        Request::Rollback { height, exact } => match rollback_in_agent(cutter, height, exact) {
            Ok(v) => Response::ok(v),
            Err(e) => Response::err(format!("{e:#}")),
        },
    }
}

fn rollback_in_agent(
    cutter: &mut Cutter,
    height: Option<u64>,
    exact: bool,
) -> Result<serde_json::Value> {
    let h = cutter.log().resolve(height, exact)?;
    let root = cutter.root().to_path_buf();
    let stats = cutter.log().replay(h, &root, &Default::default())?;
    // The tracker saw the rollback as writes; the next cut re-reads everything to be sure.
    cutter.resync();
    Ok(serde_json::json!({ "height": h, "stats": format!("{stats:?}") }))
}

/// Binds the socket, replacing a stale one (left by a crash) but never a live agent's.
fn bind(path: &Path, mode: u32) -> Result<UnixListener> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    if path.exists() {
        if std::os::unix::net::UnixStream::connect(path).is_ok() {
            bail!(
                "another agent is already listening on {}; stop it first or pass a different --socket",
                path.display()
            );
        }
        std::fs::remove_file(path)?;
    }
    let l = UnixListener::bind(path).with_context(|| format!("binding {}", path.display()))?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))?;
    Ok(l)
}

fn stop_on_signals(stop: Arc<AtomicBool>, socket: PathBuf) {
    use nix::sys::signal::{SigSet, Signal};
    let mut set = SigSet::empty();
    set.add(Signal::SIGINT);
    set.add(Signal::SIGTERM);
    let _ = set.thread_block();
    std::thread::spawn(move || {
        if set.wait().is_ok() {
            stop.store(true, Ordering::SeqCst);
            // Wake the accept loop.
            let _ = std::os::unix::net::UnixStream::connect(&socket);
        }
    });
}
