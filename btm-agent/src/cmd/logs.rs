//! Commands that read or apply the log: list, verify, replay, rollback, snapshot.
use std::{path::PathBuf, time::Duration};

use anyhow::Result;

use super::proto::{self, DEFAULT_SOCKET, Request};
use crate::log::{Log, ReplayOptions};

#[derive(clap::Args, Debug)]
pub struct ListArgs {
    #[arg(long, env = "BTM_LOG_DIR")]
    pub log: PathBuf,
    #[arg(long)]
    pub json: bool,
}

pub fn list(a: ListArgs) -> Result<()> {
    let log = Log::open_read(&a.log)?;
    let hs = log.heights();
    if a.json {
        println!("{}", serde_json::to_string_pretty(&hs)?);
        return Ok(());
    }
    if hs.is_empty() {
        println!("no heights recorded in {}", a.log.display());
    }
    for h in hs {
        println!(
            "{:>10}  stored {:>12}  data {:>12}  files {:>6}",
            h.height, h.stored_bytes, h.data_bytes, h.files_changed
        );
    }
    Ok(())
}

#[derive(clap::Args, Debug)]
pub struct VerifyArgs {
    #[arg(long, env = "BTM_LOG_DIR")]
    pub log: PathBuf,
}

pub fn verify(a: VerifyArgs) -> Result<()> {
    let log = Log::open_read(&a.log)?;
    let rep = log.verify()?;
    println!("ok: {rep:?}");
    Ok(())
}

#[derive(clap::Args, Debug)]
pub struct ReplayArgs {
    #[arg(long, env = "BTM_LOG_DIR")]
    pub log: PathBuf,
    /// Height to materialise (default: the latest).
    #[arg(long)]
    pub to: Option<u64>,
    /// Require exactly this height instead of the newest one at or below it.
    #[arg(long)]
    pub exact: bool,
    /// Directory to write the tree into (created if missing; only differences are rewritten).
    #[arg(long)]
    pub into: PathBuf,
}

pub fn replay(a: ReplayArgs) -> Result<()> {
    let log = Log::open_read(&a.log)?;
    let h = log.resolve(a.to, a.exact)?;
    let stats = log.replay(h, &a.into, &ReplayOptions::default())?;
    println!("replayed height {h} into {}: {stats:?}", a.into.display());
    Ok(())
}

#[derive(clap::Args, Debug)]
pub struct RollbackArgs {
    /// The tracked volume to roll back in place (stop the node first).
    #[arg(short = 'p', long, env = "BTM_VOLUME")]
    pub volume: PathBuf,
    #[arg(long, env = "BTM_LOG_DIR")]
    pub log: PathBuf,
    /// Target height; without it, the latest. The newest height <= target unless --exact.
    #[arg(long)]
    pub to: Option<u64>,
    #[arg(long)]
    pub exact: bool,
    /// Socket of a running agent: the rollback is done by it.
    #[arg(long, env = "BTM_SOCKET", default_value = DEFAULT_SOCKET)]
    pub socket: PathBuf,
}

pub fn rollback(a: RollbackArgs) -> Result<()> {
    // A running agent owns the volume and the log: ask it.
    if a.socket.exists() && std::os::unix::net::UnixStream::connect(&a.socket).is_ok() {
        let v = proto::call(
            &a.socket,
            &Request::Rollback {
                height: a.to,
                exact: a.exact,
            },
            Duration::from_secs(24 * 3600),
        )?;
        println!("rolled back through the agent: {v}");
        return Ok(());
    }
    // Otherwise take the log's appender lock ourselves: fails if an agent holds it.
    let log = Log::open_append(&a.log)?;
    let h = log.resolve(a.to, a.exact)?;
    let mount = crate::volume::Mount::at(&a.volume)?;
    let stats = log.replay(h, &mount.mount_point, &ReplayOptions::default())?;
    println!(
        "rolled {} back to height {h}: {stats:?}",
        mount.mount_point.display()
    );
    Ok(())
}

#[derive(clap::Args, Debug)]
pub struct SnapshotArgs {
    /// The height to cut.
    #[arg(long)]
    pub height: u64,
    #[arg(long, env = "BTM_SOCKET", default_value = DEFAULT_SOCKET)]
    pub socket: PathBuf,
    /// Give up after this many seconds.
    #[arg(long, default_value_t = 600)]
    pub timeout: u64,
}

pub fn snapshot(a: SnapshotArgs) -> Result<()> {
    let v = proto::snapshot(&a.socket, a.height, Duration::from_secs(a.timeout))?;
    if v.get("skipped").is_some() {
        println!("height {} skipped: {}", a.height, v["skipped"]);
    } else {
        println!("height {} durable", a.height);
    }
    Ok(())
}
