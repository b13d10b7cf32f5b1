//! `btm-agent`: keep a blockchain node's data recoverable to any block height.
use std::path::PathBuf;

use anyhow::Result;
use btm_agent::cmd::{exit, logs, run, status, track};
use clap::{Args, CommandFactory, Parser, Subcommand};

/// Kernel-assisted time machine for a chain node's data volume: an eBPF tracker records which
/// 4 KiB blocks change, and at each block height the agent appends exactly those bytes to an
/// append-only, hash-chained log that replays to any recorded height.
///
/// Typical use: `btm-agent run --volume /chain --log /backup/btm` as root; heights arrive from
/// `btm-agent snapshot --height H`, a bitcoind/litecoind `-blocknotify` hook running
/// `btm-agent notify --block-hash %s ...`, or `btm-agent watch --source bitcoin|cometbft|ethereum`
/// polling the node (docs/NODES.md). `btm-agent list`, `verify`, `replay --to H --into DIR` and
/// `rollback --to H` work on the log.
///
/// BTM's flags keep working: -p VOLUME with -l (list), -x (roll back to the latest),
/// -r H (closest lower), -R H (exact), -C (clean), -K N (keep the newest N), plus --log.
///
/// Where heights are kept (list, rollback, -l/-x/-r/-R/-C): in the log when --log (or
/// BTM_LOG_DIR) is given; otherwise in the native ZFS/Btrfs snapshots of -p VOLUME, as taken by
/// `run --mode zfs|btrfs` (or `auto` without eBPF). A running agent is asked first for rollbacks.
#[derive(Parser, Debug)]
#[command(
    name = "btm-agent",
    version,
    args_conflicts_with_subcommands = true,
    after_help = exit::help()
)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
    #[command(flatten)]
    compat: Compat,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Run the privileged agent: track the volume and cut a height each time one arrives.
    #[command(visible_alias = "daemon")]
    Run(run::RunArgs),
    /// Ask the running agent how it is: mode, volume, last height, heights kept.
    Status(status::StatusArgs),
    /// Ask the running agent to cut at a height; exits 0 once it is durable.
    Snapshot(logs::SnapshotArgs),
    /// List recorded heights.
    List(logs::ListArgs),
    /// Read the whole log and check every hash; names the height and file of any damage.
    Verify(logs::VerifyArgs),
    /// What changed between two heights (paths added, removed, changed; bytes), from the log's
    /// metadata alone.
    Diff(btm_agent::cmd::diff::DiffArgs),
    /// What the log holds and costs, from metadata alone: heights, records, segments, bytes
    /// captured, deduplicated and stored (ratios), the files taking the most.
    Stats(btm_agent::cmd::stats::StatsArgs),
    /// Keep a height whatever retention says: local retention never drops it, a rollback over
    /// it is refused, and push keeps it offsite (publishing the pin there).
    Pin(btm_agent::cmd::pins::PinArgs),
    /// Release a pinned height: retention may remove it from then on, here and (after the next
    /// push) offsite.
    Unpin(btm_agent::cmd::pins::PinArgs),
    /// Materialise a height into a directory (rewrites only what differs).
    Replay(logs::ReplayArgs),
    /// Roll the volume back in place to a height (stop the node first).
    Rollback(logs::RollbackArgs),
    /// Load the eBPF tracker on a volume and print the dirty extents it sees at each drain.
    Track(track::TrackArgs),
    /// Fold heights removed by retention out of the log and return their space (agent stopped).
    Compact(logs::CompactArgs),
    /// Cut a height handed over by a node hook (-blocknotify): --height H, or --block-hash.
    Notify(btm_agent::cmd::heights::NotifyArgs),
    /// Poll a node (bitcoin, cometbft, ethereum RPC) and cut each new height.
    Watch(btm_agent::cmd::heights::WatchArgs),
    /// Show the whole main job on a scratch volume: track, cut heights, replay, verify.
    Demo(btm_agent::cmd::demo::DemoArgs),
    /// Copy the log offsite (s3://, gs://, az://, file://); resumes where it stopped.
    Push(btm_agent::cmd::offsite::PushArgs),
    /// Delete offsite objects no height of any volume needs any more.
    Prune(btm_agent::cmd::offsite::PruneArgs),
    /// Make the key that encrypts and signs an offsite copy (`remote-key generate --out FILE`).
    RemoteKey(btm_agent::cmd::offsite::RemoteKeyArgs),
    /// Check the configuration (file, BTM_* variables, flags) and print the effective one.
    Config(btm_agent::cmd::config_cmd::ConfigArgs),
    /// Start a node with THP disabled (`-- NODE ARGS`), so that its mmap stores into files
    /// written in large chunks are tracked per 4 KiB instead of per 2 MiB folio (ext4, xfs).
    Exec(btm_agent::cmd::exec::ExecArgs),
    /// Thaw the volume if a cut left it frozen (the unit runs it after the agent stops).
    Thaw(btm_agent::cmd::thaw::ThawArgs),
    /// Print shell completions (bash, zsh, fish, ...) or write man pages; the .deb ships both.
    Generate(btm_agent::cmd::generate::GenerateArgs),
}

/// BTM-compatible flags (without a subcommand).
#[derive(Args, Debug)]
struct Compat {
    /// Volume (BTM: -p, or BTM_VOLUME). Given alone, its heights are listed, as BTM does.
    #[arg(short = 'p', long = "volume", env = "BTM_VOLUME")]
    volume: Option<PathBuf>,
    /// Log directory.
    #[arg(long = "log", env = "BTM_LOG_DIR")]
    log: Option<PathBuf>,
    /// List heights.
    #[arg(short = 'l')]
    list: bool,
    /// Roll back to the latest height.
    #[arg(short = 'x')]
    latest: bool,
    /// Roll back to the newest height at or below H.
    #[arg(short = 'r', value_name = "H")]
    closest: Option<u64>,
    /// Roll back to exactly H.
    #[arg(short = 'R', value_name = "H")]
    exact: Option<u64>,
    /// Remove every recorded height (asks first; only btm's own files go).
    #[arg(short = 'C')]
    clean: bool,
    /// Keep only the newest N heights, removing the others (the log is compacted at once:
    /// stop the agent first; `compact --dry-run --cap N` shows what goes).
    #[arg(short = 'K', value_name = "N")]
    kept: Option<usize>,
    /// Do not ask before -C.
    #[arg(long, requires = "clean")]
    yes: bool,
}

impl Command {
    /// Whether the verb was asked for JSON output (its errors are JSON too).
    fn json(&self) -> bool {
        match self {
            Command::List(a) => a.json,
            Command::Track(a) => a.json,
            Command::Push(a) => a.json,
            Command::Prune(a) => a.json,
            Command::Status(a) => a.json,
            Command::Verify(a) => a.json,
            Command::Replay(a) => a.json,
            Command::Rollback(a) => a.json,
            Command::Compact(a) => a.json,
            Command::Diff(a) => a.json,
            Command::Stats(a) => a.json,
            Command::Pin(a) | Command::Unpin(a) => a.json,
            Command::Config(a) => match &a.command {
                btm_agent::cmd::config_cmd::ConfigCommand::Check(c) => c.json,
            },
            _ => false,
        }
    }

    /// Whether the verb handles SIGINT/SIGTERM itself (the agent finishes its cut; track
    /// prints its last drain; demo and exec leave signals to what they run).
    fn handles_signals(&self) -> bool {
        matches!(
            self,
            Command::Run(_) | Command::Track(_) | Command::Demo(_) | Command::Exec(_)
        )
    }
}

fn main() {
    init_logging();
    // Flags over BTM_* variables over the config file (btm_agent::config).
    let cli: Cli = btm_agent::config::parse();
    exit::set_json(cli.command.as_ref().is_some_and(Command::json));
    if !cli.command.as_ref().is_some_and(Command::handles_signals) {
        exit::exit_on_signals();
    }
    let res = match cli.command {
        Some(Command::Run(a)) => run::run(a),
        Some(Command::Status(a)) => status::run(a),
        Some(Command::Snapshot(a)) => logs::snapshot(a),
        Some(Command::List(a)) => logs::list(a),
        Some(Command::Verify(a)) => logs::verify(a),
        Some(Command::Replay(a)) => logs::replay(a),
        Some(Command::Pin(a)) => btm_agent::cmd::pins::pin(a),
        Some(Command::Unpin(a)) => btm_agent::cmd::pins::unpin(a),
        Some(Command::Diff(a)) => btm_agent::cmd::diff::run(a),
        Some(Command::Stats(a)) => btm_agent::cmd::stats::run(a),
        Some(Command::Rollback(a)) => logs::rollback(a),
        Some(Command::Track(a)) => track::run(a),
        Some(Command::Compact(a)) => logs::compact(a),
        Some(Command::Notify(a)) => btm_agent::cmd::heights::notify(a),
        Some(Command::Watch(a)) => btm_agent::cmd::heights::watch(a),
        Some(Command::Demo(a)) => btm_agent::cmd::demo::run(a),
        Some(Command::Push(a)) => btm_agent::cmd::offsite::push(a),
        Some(Command::Prune(a)) => btm_agent::cmd::offsite::prune(a),
        Some(Command::RemoteKey(a)) => btm_agent::cmd::offsite::remote_key(a),
        Some(Command::Config(a)) => btm_agent::cmd::config_cmd::run(a),
        Some(Command::Exec(a)) => btm_agent::cmd::exec::run(a),
        Some(Command::Thaw(a)) => btm_agent::cmd::thaw::run(a),
        Some(Command::Generate(a)) => btm_agent::cmd::generate::run(a, Cli::command()),
        None => compat(cli.compat),
    };
    if let Err(e) = res {
        exit::fail(exit::classify(&e), &format!("{e:#}"));
    }
}

/// Logs go to stderr: text (coloured only on a terminal, and not under NO_COLOR), or JSON
/// lines with BTM_LOG_FORMAT=json. BTM_LOG_LEVEL (an `EnvFilter`: `debug`,
/// `info,btm_agent::cut=debug`) sets the level; BTM_LOG is its older name.
fn init_logging() {
    use std::io::IsTerminal;
    // object_store logs every retry at info; its final error is what we report.
    let default = || tracing_subscriber::EnvFilter::new("info,object_store=warn");
    let mut ignored = None;
    let filter = match ["BTM_LOG_LEVEL", "BTM_LOG"]
        .into_iter()
        .find_map(|k| std::env::var(k).ok().map(|v| (k, v)))
    {
        None => default(),
        // BTM_LOG reads like the log directory: a path there is not a level.
        Some((k, v)) if v.starts_with('/') => {
            ignored = Some(format!("{k}={v} (a path, not a level)"));
            default()
        }
        Some((k, v)) => tracing_subscriber::EnvFilter::try_new(&v).unwrap_or_else(|e| {
            ignored = Some(format!("{k}={v} ({e})"));
            default()
        }),
    };
    let ansi = std::io::stderr().is_terminal()
        && std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty());
    let sub = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(ansi)
        .with_writer(std::io::stderr);
    if std::env::var("BTM_LOG_FORMAT").as_deref() == Ok("json") {
        sub.json().init();
    } else {
        sub.init();
    }
    if let Some(what) = ignored {
        tracing::warn!("ignoring {what}; logging at info");
    }
}

fn compat(c: Compat) -> Result<()> {
    let rollback = |to: Option<u64>, exact: bool| -> Result<()> {
        let volume = c
            .volume
            .clone()
            .ok_or_else(|| exit::usage("-p VOLUME is required"))?;
        logs::rollback(logs::RollbackArgs {
            volume,
            log: c.log.clone(),
            to,
            exact,
            mode: run::Mode::Auto,
            socket: std::env::var_os("BTM_SOCKET").map_or_else(
                || btm_agent::cmd::proto::DEFAULT_SOCKET.into(),
                PathBuf::from,
            ),
            json: false,
            dry_run: false,
            preserve: Default::default(),
        })
    };
    let act = c.latest || c.closest.is_some() || c.exact.is_some() || c.clean || c.kept.is_some();
    // BTM: `btm -p VOLUME` alone lists.
    if c.list || (!act && (c.volume.is_some() || c.log.is_some())) {
        logs::list(logs::ListArgs {
            log: c.log.clone(),
            volume: c.volume.clone(),
            json: false,
            offsite: btm_agent::cmd::offsite::RemoteArgs {
                remote: None,
                remote_name: None,
                remote_key: None,
                limit_upload: None,
                limit_download: None,
            },
            tag: None,
        })
    } else if c.latest {
        rollback(None, false)
    } else if let Some(h) = c.closest {
        rollback(Some(h), false)
    } else if let Some(h) = c.exact {
        rollback(Some(h), true)
    } else if let Some(n) = c.kept {
        btm_agent::cmd::clean::keep_newest(c.log.as_deref(), c.volume.as_deref(), n)
    } else if c.clean {
        match (&c.log, &c.volume) {
            (Some(log), _) => btm_agent::cmd::clean::clean_log(log, c.yes),
            (None, Some(volume)) => btm_agent::cmd::clean::clean_native(volume, c.yes),
            (None, None) => Err(exit::usage(
                "-C needs --log LOGDIR or -p VOLUME (native snapshots)",
            )),
        }
    } else {
        Err(exit::usage(
            "nothing to do: give a subcommand (see --help) or one of BTM's -l, -x, -r H, -R H, -C, -K N",
        ))
    }
}
