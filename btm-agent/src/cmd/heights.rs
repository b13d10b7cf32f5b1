//! `btm-agent notify` and `btm-agent watch`: deliver heights from a node to the agent.
//!
//! `notify` is for nodes that run a command per block (bitcoind/litecoind `-blocknotify`);
//! `watch` polls a node's RPC for its height. Both hand the height to the agent over its socket
//! ([`proto::snapshot`]), exactly like `btm-agent snapshot`. How consistent each one is:
//! `docs/NODES.md`.
use std::{
    path::{Path, PathBuf},
    time::Duration,
};

use anyhow::{Result, bail};

use super::proto::{self, ClientError, DEFAULT_SOCKET, Request};
use crate::heights::{self, Auth, Endpoint, Source};

/// Credentials for the node's RPC.
#[derive(clap::Args, Debug, Clone)]
pub struct RpcAuthArgs {
    /// Cookie file written by Bitcoin Core family nodes (<datadir>/<network>/.cookie);
    /// re-read at every call because the node rewrites it at each start.
    #[arg(long, value_name = "FILE", conflicts_with = "rpc_user")]
    pub rpc_cookie: Option<PathBuf>,
    /// RPC user (with --rpc-password).
    #[arg(long, env = "BTM_RPC_USER", requires = "rpc_password")]
    pub rpc_user: Option<String>,
    /// RPC password; prefer the environment variable: arguments are visible in `ps`.
    #[arg(
        long,
        env = "BTM_RPC_PASSWORD",
        requires = "rpc_user",
        hide_env_values = true
    )]
    pub rpc_password: Option<String>,
}

impl RpcAuthArgs {
    fn auth(&self) -> Auth {
        match (&self.rpc_cookie, &self.rpc_user, &self.rpc_password) {
            (Some(c), _, _) => Auth::Cookie(c.clone()),
            (None, Some(u), Some(p)) => Auth::UserPass(u.clone(), p.clone()),
            _ => Auth::None,
        }
    }
}

#[derive(clap::Args, Debug)]
#[command(group(clap::ArgGroup::new("which").required(true).args(["height", "block_hash"])))]
pub struct NotifyArgs {
    /// The height to cut.
    #[arg(long)]
    pub height: Option<u64>,
    /// A block hash, as `-blocknotify` passes it (%s); its height is asked from --bitcoin-rpc.
    #[arg(long, requires = "bitcoin_rpc")]
    pub block_hash: Option<String>,
    /// The node's JSON-RPC URL, e.g. http://127.0.0.1:8332 (bitcoind), :9332 (litecoind).
    #[arg(long, value_name = "URL")]
    pub bitcoin_rpc: Option<String>,
    #[command(flatten)]
    pub auth: RpcAuthArgs,
    /// Make the node write its block index and UTXO set before the cut, so a rollback to this
    /// height restarts the node at this height (Bitcoin Core family; see docs/NODES.md).
    #[arg(long, requires = "bitcoin_rpc")]
    pub flush: bool,
    #[arg(long, env = "BTM_SOCKET", default_value = DEFAULT_SOCKET)]
    pub socket: PathBuf,
    /// Give up after this many seconds.
    #[arg(long, default_value_t = 600)]
    pub timeout: u64,
}

pub fn notify(a: NotifyArgs) -> Result<()> {
    let timeout = Duration::from_secs(a.timeout);
    let ep = a
        .bitcoin_rpc
        .as_deref()
        .map(|u| Endpoint::new(u, a.auth.auth(), Duration::from_secs(60)));
    let height = match (a.height, &a.block_hash, &ep) {
        (Some(h), _, _) => h,
        (None, Some(hash), Some(ep)) => heights::bitcoin_block_height(ep, hash)?,
        _ => bail!("give --height H, or --block-hash HASH with --bitcoin-rpc URL"),
    };
    if let (true, Some(ep)) = (a.flush, &ep) {
        heights::bitcoin_flush(ep)?;
    }
    match cut(&a.socket, height, timeout)? {
        Cut::Durable => println!("height {height} durable"),
        Cut::Skipped(why) => println!("height {height} skipped: {why}"),
        Cut::Covered(last) => println!(
            "height {height} not cut: the agent already holds height {last} (a later block's hook \
             ran first, or the chain reorganised)"
        ),
    }
    Ok(())
}

#[derive(clap::Args, Debug)]
pub struct WatchArgs {
    /// The node's RPC dialect.
    #[arg(long, value_enum)]
    pub source: Source,
    /// RPC URL: http://127.0.0.1:8332 (bitcoind), http://127.0.0.1:26657 (CometBFT),
    /// http://127.0.0.1:8545 (geth).
    #[arg(long)]
    pub url: String,
    #[command(flatten)]
    pub auth: RpcAuthArgs,
    /// Seconds between polls.
    #[arg(long, default_value_t = 1.0)]
    pub every: f64,
    /// Bitcoin only: flush the node before each cut (see `notify --flush`).
    #[arg(long)]
    pub flush: bool,
    #[arg(long, env = "BTM_SOCKET", default_value = DEFAULT_SOCKET)]
    pub socket: PathBuf,
    /// Give up on one cut after this many seconds.
    #[arg(long, default_value_t = 600)]
    pub timeout: u64,
    /// Exit once a height at or above this one is durable (scripts, tests).
    #[arg(long)]
    pub until: Option<u64>,
}

pub fn watch(a: WatchArgs) -> Result<()> {
    if !(a.every > 0.0 && a.every.is_finite()) {
        bail!("--every must be a positive number of seconds");
    }
    if a.flush && a.source != Source::Bitcoin {
        bail!("--flush only applies to --source bitcoin");
    }
    let every = Duration::from_secs_f64(a.every);
    let timeout = Duration::from_secs(a.timeout);
    let ep = Endpoint::new(&a.url, a.auth.auth(), every.max(Duration::from_secs(10)));
    tracing::info!(source = ?a.source, url = %a.url, every = a.every, "watching node heights");
    // Start from what the agent already holds: heights must increase.
    let mut last = loop {
        match agent_last(&a.socket, timeout) {
            Ok(l) => break l,
            Err(e) => tracing::warn!("{e:#}; retrying in {:.1}s", a.every),
        }
        std::thread::sleep(every);
    };
    loop {
        if let (Some(u), Some(l)) = (a.until, last)
            && l >= u
        {
            return Ok(());
        }
        if let Err(e) = poll_once(&a, &ep, &mut last, timeout) {
            tracing::warn!("{e:#}; retrying in {:.1}s", a.every);
        }
        std::thread::sleep(every);
    }
}

/// One poll: ask the node, cut if the height is new. Errors are transient by nature here (node
/// restarting, agent busy or restarting): the caller logs them and tries again.
fn poll_once(
    a: &WatchArgs,
    ep: &Endpoint,
    last: &mut Option<u64>,
    timeout: Duration,
) -> Result<()> {
    let h = a.source.latest_height(ep)?;
    if last.is_some_and(|l| h <= l) {
        return Ok(());
    }
    if a.flush {
        heights::bitcoin_flush(ep)?;
    }
    match cut(&a.socket, h, timeout)? {
        Cut::Durable => tracing::info!(height = h, "height durable"),
        Cut::Skipped(why) => tracing::info!(height = h, "height skipped by the agent: {why}"),
        Cut::Covered(l) => {
            tracing::info!(height = h, agent_last = l, "height already covered");
            *last = Some(l);
            return Ok(());
        }
    }
    *last = Some(h);
    Ok(())
}

enum Cut {
    Durable,
    /// The agent acknowledged without cutting (e.g. not a multiple of --itv).
    Skipped(String),
    /// The agent already holds this or a later height.
    Covered(u64),
}

/// Hands `height` to the agent. A refusal because the agent already holds a height at or above
/// it (hooks racing, a reorg, a restarted poller) is not an error: that state is covered.
fn cut(socket: &Path, height: u64, timeout: Duration) -> Result<Cut> {
    match proto::snapshot(socket, height, timeout) {
        Ok(v) => Ok(match v.get("skipped") {
            Some(s) => Cut::Skipped(s.as_str().unwrap_or_default().to_string()),
            None => Cut::Durable,
        }),
        Err(ClientError::Refused { message: why, .. }) => match agent_last(socket, timeout)? {
            Some(l) if l >= height => Ok(Cut::Covered(l)),
            _ => bail!("the agent refused height {height}: {why}"),
        },
        Err(e) => Err(e.into()),
    }
}

fn agent_last(socket: &Path, timeout: Duration) -> Result<Option<u64>> {
    let v = proto::call(socket, &Request::Status, timeout)?;
    Ok(v.get("last_height").and_then(serde_json::Value::as_u64))
}
