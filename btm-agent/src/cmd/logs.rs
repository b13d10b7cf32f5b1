//! Commands that read or apply the log: list, verify, replay, rollback, snapshot.
use std::{path::PathBuf, time::Duration};

use anyhow::Result;

use super::exit::{self, Code};
use super::offsite::{self, RemoteArgs};
use super::paths::{PreserveArgs, preserved_text};
use super::proto::{self, DEFAULT_SOCKET, Request};
use super::report;
use super::run::Mode;
use super::size::human;
use crate::log::{Log, ReplayOptions};
use crate::retention::{Algo, Policy};
use crate::snapshot::{self, Probe, SnapshotBackend};

/// Where heights are kept: the log when `--log` (or BTM_LOG_DIR) is given, otherwise the native
/// snapshots (ZFS dataset or Btrfs subvolume) of `--volume`.
pub(super) fn native(volume: Option<&PathBuf>) -> Result<Box<dyn SnapshotBackend>> {
    let Some(v) = volume else {
        return Err(exit::usage(
            "give --log LOGDIR (eBPF mode) or -p/--volume DIR (native ZFS/Btrfs snapshots) to say \
             where the heights are kept",
        ));
    };
    match snapshot::probe(v)? {
        Probe::Found(b) => Ok(b),
        Probe::NotNative { reason } => Err(exit::coded(
            Code::NoLog,
            format!(
                "no --log LOGDIR given and {} has no native snapshots ({reason}); pass --log",
                v.display()
            ),
        )),
    }
}

/// Opens an existing log for appending: `open_append` would create one at a mistyped path,
/// where a rollback or a compaction wants the log that is there.
pub fn open_existing(dir: &std::path::Path) -> Result<Log> {
    if !dir.is_dir() {
        return Err(crate::log::LogError::NoLog { dir: dir.into() }.into());
    }
    Ok(Log::open_append(dir)?)
}

#[derive(clap::Args, Debug)]
pub struct ListArgs {
    /// The log (eBPF mode). Without it, the native snapshots of --volume are listed.
    #[arg(long, env = "BTM_LOG_DIR")]
    pub log: Option<PathBuf>,
    /// Volume with native snapshots (ZFS dataset / Btrfs subvolume), used when --log is absent.
    #[arg(short = 'p', long, env = "BTM_VOLUME")]
    pub volume: Option<PathBuf>,
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub offsite: RemoteArgs,
    /// With --remote: only heights pushed with this tag.
    #[arg(short = 't', long, requires = "remote")]
    pub tag: Option<String>,
}

pub fn list(a: ListArgs) -> Result<()> {
    if let Some(url) = &a.offsite.remote {
        return offsite::list(&a.offsite, url, a.tag.as_deref(), a.json);
    }
    let Some(dir) = &a.log else {
        let b = native(a.volume.as_ref())?;
        let hs = b.list()?;
        if a.json {
            let v: Vec<_> = hs
                .iter()
                .map(|h| serde_json::json!({ "height": h }))
                .collect();
            println!("{}", serde_json::to_string_pretty(&v)?);
        } else if hs.is_empty() {
            println!("no snapshots of {}", b.describe());
        } else {
            for h in hs {
                println!("{h:>10}  {}", b.name());
            }
        }
        return Ok(());
    };
    let log = Log::open_read(dir)?;
    let hs = log.heights();
    let pins = crate::pins::pinned(dir)?;
    if a.json {
        let mut v = serde_json::to_value(&hs)?;
        for h in v.as_array_mut().into_iter().flatten() {
            let pinned = h["height"].as_u64().is_some_and(|x| pins.contains(&x));
            h["pinned"] = pinned.into();
        }
        println!("{}", serde_json::to_string_pretty(&v)?);
        return Ok(());
    }
    if hs.is_empty() {
        println!("no heights recorded in {}", dir.display());
    }
    for h in hs {
        println!(
            "{:>10}  stored {:>10}  data {:>10}  files {:>6}{}",
            h.height,
            human(h.stored_bytes),
            human(h.data_bytes),
            h.files_changed,
            if pins.contains(&h.height) {
                "  pinned"
            } else {
                ""
            }
        );
    }
    Ok(())
}

#[derive(clap::Args, Debug)]
pub struct VerifyArgs {
    /// The log to verify (or give --remote).
    // Required unless --remote is given: checked in `verify` (see ReplayArgs::log).
    #[arg(long, env = "BTM_LOG_DIR")]
    pub log: Option<PathBuf>,
    /// Verify an offsite copy instead, without its source log: every pointer and record is
    /// downloaded and authenticated, every chain followed, and every payload must be on the
    /// store (all volumes there, or --remote-name's).
    #[command(flatten)]
    pub offsite: RemoteArgs,
    /// With --remote: also download this share of the packs and payload objects and check
    /// every payload in them against its hash: N/M (run 1/M ... M/M to read everything once
    /// over M runs) or a percentage (5%). Without it only their presence is checked.
    #[arg(long, requires = "remote", value_name = "N/M|P%", value_parser = btm_remote::Subset::parse)]
    pub read_data_subset: Option<btm_remote::Subset>,
    /// Compare this directory, the volume, with a height of --log instead, reading only:
    /// every entry's kind, permission bits and owner, every file's size and bytes (holes read
    /// as zeros), symlink targets, and entries the height does not have. Sockets, FIFOs,
    /// devices and other filesystems mounted inside are skipped, as cuts skip them. Run it with
    /// the node stopped at that height or right after a rollback: what changed since the
    /// height shows as a difference. Exits 1 when something differs.
    #[arg(long, value_name = "DIR", conflicts_with = "remote")]
    pub volume: Option<PathBuf>,
    /// With --volume: the height to compare with (default: the newest).
    #[arg(long, requires = "volume", value_name = "HEIGHT")]
    pub to: Option<u64>,
    /// With --volume: leave paths matching GLOB out of the comparison (as replay's --preserve
    /// leaves them alone), for example a validator's signing state. Repeatable.
    #[arg(long, requires = "volume", value_name = "GLOB")]
    pub skip: Vec<String>,
    /// Print the report as one JSON object (`"v": 1`); errors too.
    #[arg(long)]
    pub json: bool,
}

/// `verify --volume`: the volume against a height, reading only.
fn verify_volume(log: &Log, volume: &std::path::Path, a: &VerifyArgs) -> Result<()> {
    let h = log.resolve(a.to, true)?;
    let state = log.state_at(h)?;
    let opts = crate::log::CompareOptions {
        preserve: crate::log::PathGlobs::new(&a.skip)
            .map_err(|e| super::exit::usage(format!("--skip: {e}")))?,
        max_listed: 100,
        progress: !a.json,
    };
    let diff = crate::log::compare_tree(log, &state, h, volume, &opts)?;
    if a.json {
        report::print_json(&diff)?;
    } else {
        println!(
            "{} against height {h}: {} entries compared, {} read, {} skipped (sockets, FIFOs, \
             devices, other filesystems); {} differences",
            volume.display(),
            diff.entries_compared,
            human(diff.bytes_compared),
            diff.skipped,
            diff.differences
        );
        for (path, what) in &diff.listed {
            println!("differs: {path}: {what}");
        }
        if diff.differences > diff.listed.len() as u64 {
            println!(
                "... and {} more",
                diff.differences - diff.listed.len() as u64
            );
        }
    }
    if diff.differences > 0 {
        return Err(exit::coded(
            Code::Failure,
            format!(
                "{} differs from height {h} in {} place{} (first: {}): if the node was stopped \
                 at that height, `btm-agent rollback --to {h}` makes it that height again",
                volume.display(),
                diff.differences,
                if diff.differences == 1 { "" } else { "s" },
                diff.listed
                    .first()
                    .map_or_else(String::new, |(p, w)| format!("{p}: {w}"))
            ),
        ));
    }
    Ok(())
}

pub fn verify(a: VerifyArgs) -> Result<()> {
    if let Some(url) = &a.offsite.remote {
        let remote = a.offsite.open(url)?;
        let rep = btm_remote::verify(
            &remote,
            a.offsite.remote_name.as_deref(),
            a.read_data_subset,
        )?;
        if a.json {
            report::print_json(&rep)?;
        } else {
            println!(
                "{url}: {} volumes, {} heights, {} records, {} payloads in {} packs and {} loose \
                 objects; read {} objects ({}, {} payloads checked) in {} requests",
                rep.volumes,
                rep.heights,
                rep.records,
                rep.payloads,
                rep.packs,
                rep.loose_objects,
                rep.objects_read,
                human(rep.bytes_read),
                rep.payloads_read,
                rep.requests.total()
            );
            for p in &rep.problems {
                println!("damage: {p}");
            }
        }
        if !rep.problems.is_empty() {
            return Err(exit::coded(
                Code::Damage,
                format!(
                    "{} problems on {url}: run `btm-agent push --verify` from the source log to \
                     repair the copy",
                    rep.problems.len()
                ),
            ));
        }
        return Ok(());
    }
    let Some(dir) = a.log.as_ref() else {
        return Err(super::exit::usage(
            "verify needs --log LOGDIR (or log in the configuration file) or --remote URL",
        ));
    };
    let log = Log::open_read(dir)?;
    if let Some(volume) = &a.volume {
        return verify_volume(&log, volume, &a);
    }
    let rep = log.verify()?;
    if a.json {
        return report::print_json(&rep);
    }
    println!("{}", report::verify_summary(&rep));
    Ok(())
}

#[derive(clap::Args, Debug)]
pub struct ReplayArgs {
    /// The log to replay from (or give --remote).
    // Required unless --remote is given: checked in `replay`, since clap's
    // `required_unless_present` ignores a value from the configuration file.
    #[arg(long, env = "BTM_LOG_DIR")]
    pub log: Option<PathBuf>,
    #[command(flatten)]
    pub offsite: RemoteArgs,
    /// With --remote: keep downloaded records and payloads here (checked again on every use).
    #[arg(long, requires = "remote")]
    pub cache: Option<PathBuf>,
    /// With --remote: restore set-uid/set-gid bits and ownership by uid/gid 0 as the store
    /// records them. Without it they are dropped (what root owns goes to the owner of --into):
    /// whoever can write the bucket could otherwise plant a set-uid root file.
    #[arg(long, requires = "remote")]
    pub restore_privileged: bool,
    /// Height to materialise (default: the latest).
    #[arg(long)]
    pub to: Option<u64>,
    /// Require exactly this height instead of the newest one at or below it.
    #[arg(long)]
    pub exact: bool,
    /// Directory to write the tree into (created if missing; only differences are rewritten).
    #[arg(long)]
    pub into: PathBuf,
    #[command(flatten)]
    pub preserve: PreserveArgs,
    /// Print what was done as one JSON object (`"v": 1`); errors too.
    #[arg(long)]
    pub json: bool,
}

pub fn replay(a: ReplayArgs) -> Result<()> {
    let opts = ReplayOptions {
        preserve: a.preserve.globs()?,
        ..Default::default()
    };
    if let Some(url) = &a.offsite.remote {
        let remote = a
            .offsite
            .open(url)?
            .with_cache(a.cache)
            .with_restore_privileged(a.restore_privileged);
        return offsite::replay(&a.offsite, &remote, (a.to, a.exact), &a.into, &opts, a.json);
    }
    let Some(dir) = a.log.as_ref() else {
        return Err(super::exit::usage(
            "replay needs --log LOGDIR (or log in the configuration file) or --remote URL",
        ));
    };
    let log = Log::open_read(dir)?;
    let h = log.resolve(a.to, a.exact)?;
    let stats = log.replay(h, &a.into, &opts)?;
    if a.json {
        return report::print_json(serde_json::json!({
            "height": h, "into": a.into, "stats": stats
        }));
    }
    println!(
        "replayed height {h} into {}: {}{}",
        a.into.display(),
        report::replay_summary(&stats),
        preserved_text(&stats.preserved)
    );
    Ok(())
}

#[derive(clap::Args, Debug)]
pub struct RollbackArgs {
    /// The tracked volume to roll back in place (stop the node first).
    #[arg(short = 'p', long, env = "BTM_VOLUME")]
    pub volume: PathBuf,
    /// The log (eBPF mode). Without it, the volume's native ZFS/Btrfs snapshots are used.
    #[arg(long, env = "BTM_LOG_DIR")]
    pub log: Option<PathBuf>,
    /// Target height; without it, the latest. The newest height <= target unless --exact.
    #[arg(long)]
    pub to: Option<u64>,
    #[arg(long)]
    pub exact: bool,
    /// Where the heights are kept, as `run --mode` keeps them. auto: the log when --log is
    /// given, else the volume's native snapshots. ebpf: the log (default --log: run's,
    /// /var/lib/btm/log). zfs, btrfs: the volume's native snapshots (--log is not used).
    /// A running agent is asked first whatever the mode: it knows its own.
    #[arg(
        short = 'm',
        long,
        env = "BTM_MODE",
        value_enum,
        default_value = "auto"
    )]
    pub mode: Mode,
    /// Socket of a running agent: the rollback is done by it.
    #[arg(long, env = "BTM_SOCKET", default_value = DEFAULT_SOCKET)]
    pub socket: PathBuf,
    /// Print what was done as one JSON object (`"v": 1`); errors too.
    #[arg(long)]
    pub json: bool,
    /// Say what would be done (target height, heights removed, bytes) and change nothing
    /// (the log is only read, the volume not touched; no agent is asked).
    #[arg(long)]
    pub dry_run: bool,
    #[command(flatten)]
    pub preserve: PreserveArgs,
}

pub fn rollback(a: RollbackArgs) -> Result<()> {
    if a.dry_run {
        return super::dry_run::rollback(&a);
    }
    let preserve = a.preserve.globs()?;
    // A running agent owns the volume and the log: ask it.
    if a.socket.exists() && std::os::unix::net::UnixStream::connect(&a.socket).is_ok() {
        let v = proto::call(
            &a.socket,
            &Request::Rollback {
                height: a.to,
                exact: a.exact,
                preserve: preserve.patterns().to_vec(),
            },
            Duration::from_secs(24 * 3600),
        )?;
        if a.json {
            return report::print_json(serde_json::json!({ "through_agent": true, "detail": v }));
        }
        println!(
            "rolled back through the agent to height {}; removed heights {}",
            v["height"], v["removed"]
        );
        return Ok(());
    }
    match (a.mode, &a.log) {
        (Mode::Zfs, _) => native_preserve(&preserve, "zfs")?,
        (Mode::Btrfs, _) => native_preserve(&preserve, "btrfs")?,
        (Mode::Auto, None) => native_preserve(&preserve, "native snapshot")?,
        _ => {}
    }
    let native_rollback = |b: Box<dyn SnapshotBackend>| -> Result<()> {
        let v = crate::store::native_rollback(b.as_ref(), a.to, a.exact)?;
        if a.json {
            return report::print_json(&v);
        }
        println!("rolled {} back to height {}", b.describe(), v["height"]);
        Ok(())
    };
    let dir = match (a.mode, &a.log) {
        (Mode::Zfs, _) => return native_rollback(Box::new(snapshot::Zfs::open(&a.volume)?)),
        (Mode::Btrfs, _) => return native_rollback(Box::new(snapshot::Btrfs::open(&a.volume)?)),
        (Mode::Auto, None) => return native_rollback(native(Some(&a.volume))?),
        (Mode::Ebpf, None) => PathBuf::from(super::run::DEFAULT_LOG),
        (Mode::Auto | Mode::Ebpf, Some(dir)) => dir.clone(),
    };
    let dir = &dir;
    // Otherwise take the log's appender lock ourselves: fails if an agent holds it.
    let log = open_existing(dir)?;
    let h = log.resolve(a.to, a.exact)?;
    // Like `zfs rollback -r`: newer heights leave the log, so the node can re-reach them.
    let newer: Vec<u64> = log
        .heights()
        .iter()
        .map(|i| i.height)
        .filter(|&x| x > h)
        .collect();
    crate::pins::refuse_removing(dir, &newer, &format!("rolling back to {h}"))?;
    let mount = crate::volume::Mount::at(&a.volume)?;
    let opts = ReplayOptions {
        preserve,
        ..Default::default()
    };
    let stats = log.replay(h, &mount.mount_point, &opts)?;
    log.truncate_after(h)?;
    if a.json {
        return report::print_json(serde_json::json!({
            "height": h, "volume": mount.mount_point, "removed": newer, "stats": stats
        }));
    }
    println!(
        "rolled {} back to height {h}: {}; removed {} newer heights from the log{}",
        mount.mount_point.display(),
        report::replay_summary(&stats),
        newer.len(),
        preserved_text(&stats.preserved)
    );
    Ok(())
}

/// A native snapshot rollback restores the whole dataset: it cannot leave paths alone.
pub(crate) fn native_preserve(preserve: &crate::log::PathGlobs, kind: &str) -> Result<()> {
    if preserve.is_empty() {
        return Ok(());
    }
    Err(exit::usage(format!(
        "--preserve works on the log (eBPF mode) only: a {kind} rollback restores the whole \
         dataset, preserved paths included. Copy {} aside, roll back, and put them back \
         before starting the node",
        preserve.patterns().join(", ")
    )))
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

#[derive(clap::Args, Debug)]
pub struct CompactArgs {
    /// The log to compact (the agent must not be running on it).
    #[arg(long, env = "BTM_LOG_DIR")]
    pub log: PathBuf,
    /// Apply this retention first (with --itv and --algo): heights it drops are compacted too.
    #[arg(short = 'c', long)]
    pub cap: Option<usize>,
    /// With --cap: only heights divisible by this are kept.
    #[arg(short = 'i', long, default_value_t = 1)]
    pub itv: u64,
    /// With --cap: fair or fade.
    #[arg(short = 'a', long, value_enum, default_value = "fair")]
    pub algo: Algo,
    /// Say what would be done (heights folded, bytes returned at most) and change nothing; works
    /// while the agent runs.
    #[arg(long)]
    pub dry_run: bool,
    /// With --dry-run: print the plan as one JSON object (`"v": 1`); errors too.
    #[arg(long, requires = "dry_run")]
    pub json: bool,
}

/// Folds the heights removed by retention into the next kept ones and returns their space.
/// Needs the appender lock: stop the agent first (it compacts by itself when dropped records
/// reach a quarter of the log).
pub fn compact(a: CompactArgs) -> Result<()> {
    if a.dry_run {
        return super::dry_run::compact(&a);
    }
    let mut log = open_existing(&a.log)?;
    if let Some(cap) = a.cap {
        let p = Policy::new(a.itv, cap, a.algo)?;
        let hs: Vec<u64> = log.heights().iter().map(|h| h.height).collect();
        log.drop_heights(&p.to_delete_unpinned(&hs, &crate::pins::pinned(&a.log)?))?;
    }
    let (log, rep) = log.compact()?;
    println!(
        "compacted {}: {} dropped records folded into {}, {} -> {} ({} heights kept)",
        a.log.display(),
        rep.dropped_records,
        rep.merged_records,
        human(rep.bytes_before),
        human(rep.bytes_after),
        log.heights().len()
    );
    Ok(())
}
