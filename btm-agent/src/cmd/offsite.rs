//! Offsite commands: push a log to a remote, prune a remote, and the `--remote` halves of
//! list and replay (`crate::remote`).
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, Result};

use crate::log::{Log, ReplayOptions};
use crate::remote::{self, PushOptions, Remote, RemoteKey, RemoteRetention};
use crate::retention::{Algo, Policy};

/// Where an offsite copy lives and under which volume name.
#[derive(clap::Args, Debug, Clone)]
pub struct RemoteArgs {
    /// Offsite location: s3://BUCKET/PREFIX, gs://BUCKET/PREFIX, az://CONTAINER/PREFIX or
    /// file:///DIR. Credentials come from the usual AWS_*, GOOGLE_*, AZURE_* variables (and
    /// ~/.aws/credentials); AWS_ENDPOINT_URL=http://... targets an S3-compatible server.
    #[arg(long, env = "BTM_REMOTE", value_name = "URL")]
    pub remote: Option<String>,
    /// Volume name on the remote (several volumes share one URL and dedup against each other).
    /// Push default: <hostname>-<log dir name>; list/replay default: the only volume there.
    #[arg(long, env = "BTM_REMOTE_NAME", value_name = "NAME")]
    pub remote_name: Option<String>,
    /// Remote key file (from `btm-agent remote-key generate`): everything stored offsite is
    /// encrypted and signed with it, and a remote pushed with a key is read only with it. Keep
    /// a copy apart from the node: losing the key loses the offsite copy.
    #[arg(long, env = "BTM_REMOTE_KEY_FILE", value_name = "FILE")]
    pub remote_key: Option<PathBuf>,
    /// Upload at most this many bytes per second to the remote (e.g. 10MiB), averaged over
    /// requests.
    #[arg(long, env = "BTM_LIMIT_UPLOAD", value_name = "SIZE", value_parser = super::size::parse_size)]
    pub limit_upload: Option<u64>,
    /// Download at most this many bytes per second from the remote (e.g. 10MiB), averaged
    /// over requests.
    #[arg(long, env = "BTM_LIMIT_DOWNLOAD", value_name = "SIZE", value_parser = super::size::parse_size)]
    pub limit_download: Option<u64>,
}

impl RemoteArgs {
    /// Opens `url` with the remote key, when one is given.
    pub fn open(&self, url: &str) -> Result<Remote> {
        let key = match &self.remote_key {
            Some(f) => Some(RemoteKey::load(f)?),
            None => None,
        };
        Ok(Remote::open(url)?
            .with_key(key)
            .with_limits(self.limit_upload, self.limit_download))
    }
}

/// Offsite retention of its own (`push`, `run --remote`): which heights the remote keeps,
/// independently of the log's retention.
#[derive(clap::Args, Debug, Clone, Default)]
pub struct RemoteRetentionArgs {
    /// Offsite retention of its own: keep at most N heights on the remote, chosen (like --cap)
    /// among every height the remote has and those pushed now, including heights the log's
    /// retention or compaction already removed here (they stay restorable offsite). Without
    /// it the remote mirrors the log's retention. Pinned heights (`btm-agent pin`) and the
    /// newest height are always kept.
    #[arg(long, env = "BTM_REMOTE_CAP", value_name = "N")]
    pub remote_cap: Option<usize>,
    /// With --remote-cap: only heights divisible by N are kept offsite (default 1).
    #[arg(long, env = "BTM_REMOTE_ITV", value_name = "N")]
    pub remote_itv: Option<u64>,
    /// With --remote-cap: fair (the newest N) or fade (density falls with age); default fair.
    #[arg(long, env = "BTM_REMOTE_ALGO", value_enum, value_name = "ALGO")]
    pub remote_algo: Option<Algo>,
}

impl RemoteRetentionArgs {
    /// The remote's own policy, `None` when the remote mirrors the log's retention.
    pub fn policy(&self) -> Result<Option<Policy>> {
        let Some(cap) = self.remote_cap else {
            if self.remote_itv.is_some() || self.remote_algo.is_some() {
                return Err(super::exit::usage(
                    "--remote-itv and --remote-algo need --remote-cap N (offsite retention of its own); without it the remote mirrors the log's retention",
                ));
            }
            return Ok(None);
        };
        let p = Policy::new(
            self.remote_itv.unwrap_or(1),
            cap,
            self.remote_algo.unwrap_or(Algo::Fair),
        )
        .map_err(|e| super::exit::usage(format!("offsite retention (--remote-*): {e}")))?;
        Ok(Some(p))
    }

    /// What `PushOptions::remote_retention` takes.
    pub fn retention(&self) -> Result<Option<RemoteRetention>> {
        Ok(self
            .policy()?
            .map(|p| RemoteRetention::new(move |hs| p.to_keep(hs))))
    }
}

#[derive(clap::Args, Debug)]
pub struct RemoteKeyArgs {
    #[command(subcommand)]
    pub action: RemoteKeyAction,
}

#[derive(clap::Subcommand, Debug)]
pub enum RemoteKeyAction {
    /// Write a new random remote key (32 bytes, hex) to FILE, mode 0600; never overwrites.
    /// Back it up apart from the node: without it the offsite copy cannot be read.
    Generate {
        #[arg(long, value_name = "FILE")]
        out: PathBuf,
    },
}

/// `remote-key generate`.
pub fn remote_key(a: RemoteKeyArgs) -> Result<()> {
    match a.action {
        RemoteKeyAction::Generate { out } => {
            let k = RemoteKey::generate(&out)?;
            println!(
                "wrote a new remote key to {} (mode 0600; public key {}). Back it up apart from \
                 this machine: the offsite copy pushed with it cannot be read without it.",
                out.display(),
                k.public_hex()
            );
        }
    }
    Ok(())
}

/// Parses `--meta` (must be a JSON object or value).
pub fn parse_meta(s: &str) -> Result<serde_json::Value, String> {
    serde_json::from_str(s)
        .map_err(|e| format!("--meta must be JSON (e.g. '{{\"block\": 1}}'): {e}"))
}

/// Options for a push of `log_dir` under `name` (or the default name).
pub fn push_options(
    log_dir: &std::path::Path,
    name: Option<&str>,
    tag: Option<String>,
    meta: Option<serde_json::Value>,
    exclude: &super::paths::ExcludeArgs,
) -> PushOptions {
    PushOptions {
        excluded: exclude.exclude.clone(),
        skip: Default::default(),
        name: name.map_or_else(|| remote::default_volume_name(log_dir), str::to_string),
        tag,
        meta,
        progress: true,
        verify: false,
        allow_removals: false,
        remote_retention: None,
    }
}

#[derive(clap::Args, Debug)]
pub struct PushArgs {
    /// The log to copy offsite (an agent may be appending to it meanwhile).
    #[arg(long, env = "BTM_LOG_DIR")]
    pub log: PathBuf,
    #[command(flatten)]
    pub remote: RemoteArgs,
    /// Tag the heights this push publishes (like pitreos -t).
    #[arg(short = 't', long)]
    pub tag: Option<String>,
    /// JSON metadata for the heights this push publishes (like pitreos -m).
    #[arg(short = 'm', long, value_parser = parse_meta)]
    pub meta: Option<serde_json::Value>,
    /// Download and check every object of the chain and upload again what is missing or
    /// damaged (a scrub; slow: reads the whole offsite copy).
    #[arg(long)]
    pub verify: bool,
    /// Allow removing more than half of the remote's heights (after a rollback far back or a
    /// new retention policy); without it such a push stops before changing anything.
    #[arg(long)]
    pub allow_removals: bool,
    /// Say what the push would upload and publish, and change nothing (locally or offsite).
    #[arg(long, conflicts_with = "verify")]
    pub dry_run: bool,
    /// Print the report as JSON.
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub exclude: super::paths::ExcludeArgs,
    #[command(flatten)]
    pub retention: RemoteRetentionArgs,
}

/// Copies every record the remote lacks, then publishes a pointer per kept height and the
/// log's pins, and removes pointers of heights retention removed (the log's, or the remote's
/// own with --remote-cap; never a pinned one). Safe to interrupt: run it again to resume.
pub fn push(a: PushArgs) -> Result<()> {
    let url = a
        .remote
        .remote
        .as_deref()
        .context("push needs --remote URL (s3://BUCKET/PREFIX, gs://, az:// or file:///DIR)")?;
    let remote = a.remote.open(url)?;
    a.exclude.globs()?;
    let retention = a.retention.retention()?;
    let log = Log::open_read(&a.log)?;
    let opts = push_options(
        &a.log,
        a.remote.remote_name.as_deref(),
        a.tag,
        a.meta,
        &a.exclude,
    );
    let mut opts = remote::excluding(&log, &opts)?;
    opts.verify = a.verify;
    opts.allow_removals = a.allow_removals;
    opts.remote_retention = retention;
    if a.dry_run {
        let rep = remote::push_plan(&log, &remote, &opts)?;
        if a.json {
            let mut v = serde_json::to_value(&rep)?;
            v["dry_run"] = true.into();
            return super::report::print_json(v);
        }
        println!(
            "dry run: pushing {} to {url} as {:?} would upload {} records ({} already there) and \
             {} objects ({} already there), {} bytes; write {} pointers and remove {}; publish \
             {} pins and remove {}; newest height {}; nothing changed",
            a.log.display(),
            opts.name,
            rep.records_uploaded,
            rep.records_present,
            rep.objects_uploaded,
            rep.objects_present,
            rep.bytes_uploaded,
            rep.pointers_written,
            rep.pointers_removed,
            rep.pins_written,
            rep.pins_removed,
            rep.newest_height.map_or("none".into(), |h| h.to_string()),
        );
        return Ok(());
    }
    let rep = remote::push(&log, &remote, &opts).with_context(|| {
        format!(
            "pushing {} to {url} (run push again to resume)",
            a.log.display()
        )
    })?;
    if a.json {
        println!("{}", serde_json::to_string_pretty(&rep)?);
    } else {
        println!(
            "pushed {} to {url} as {:?}: newest height {}, {} records uploaded ({} already there), \
             {} objects uploaded ({} already there) in {} packs, {} bytes, {} requests, {} \
             pointers written, {} removed, {} pins written, {} removed{}",
            a.log.display(),
            opts.name,
            rep.newest_height.map_or("none".into(), |h| h.to_string()),
            rep.records_uploaded,
            rep.records_present,
            rep.objects_uploaded,
            rep.objects_present,
            rep.packs_uploaded,
            rep.bytes_uploaded,
            rep.requests.total(),
            rep.pointers_written,
            rep.pointers_removed,
            rep.pins_written,
            rep.pins_removed,
            if a.verify {
                format!(", {} damaged objects repaired", rep.repaired)
            } else {
                String::new()
            }
        );
    }
    Ok(())
}

#[derive(clap::Args, Debug)]
pub struct PruneArgs {
    #[command(flatten)]
    pub remote: RemoteArgs,
    /// Keep unreferenced objects younger than this many seconds (a push may be linking them).
    #[arg(long, default_value_t = 3600)]
    pub grace: u64,
    /// Only report what would be deleted.
    #[arg(long)]
    pub dry_run: bool,
    /// Print the report as JSON.
    #[arg(long)]
    pub json: bool,
}

/// Deletes records and payloads no height of any volume needs any more.
pub fn prune(a: PruneArgs) -> Result<()> {
    let url = a
        .remote
        .remote
        .as_deref()
        .context("prune needs --remote URL")?;
    let remote = a.remote.open(url)?;
    let rep = remote::prune(&remote, Duration::from_secs(a.grace), a.dry_run)?;
    if a.json {
        println!("{}", serde_json::to_string_pretty(&rep)?);
    } else {
        println!(
            "{} {url}: {} volumes, {} heights; records kept {} / deleted {}; objects kept {} / \
             deleted {}; packs kept {} / deleted {}; {} bytes freed; {} recent unreferenced \
             objects left",
            if a.dry_run { "would prune" } else { "pruned" },
            rep.volumes,
            rep.pointers,
            rep.records_kept,
            rep.records_deleted,
            rep.objects_kept,
            rep.objects_deleted,
            rep.packs_kept,
            rep.packs_deleted,
            rep.bytes_freed,
            rep.recent_left
        );
    }
    Ok(())
}

/// `list --remote`.
pub fn list(r: &RemoteArgs, url: &str, tag: Option<&str>, json: bool) -> Result<()> {
    let remote = r.open(url)?;
    let name = remote::resolve_volume(&remote, r.remote_name.as_deref())?;
    let hs = remote::list_heights(&remote, &name, tag)?;
    if json {
        println!("{}", serde_json::to_string_pretty(&hs)?);
        return Ok(());
    }
    if hs.is_empty() {
        println!(
            "no heights of {name:?} on {url}{}",
            tag.map_or(String::new(), |t| format!(" tagged {t:?}"))
        );
    }
    for h in hs {
        println!(
            "{:>10}  {}  tag {:<12} meta {}{}",
            h.height,
            &h.record[..16],
            h.tag.as_deref().unwrap_or("-"),
            h.meta.map_or("-".into(), |m| m.to_string()),
            if h.pinned { "  pinned" } else { "" }
        );
    }
    Ok(())
}

/// `replay --remote`.
pub fn replay(
    r: &RemoteArgs,
    remote: &Remote,
    (to, exact): (Option<u64>, bool),
    into: &std::path::Path,
    opts: &ReplayOptions,
    json: bool,
) -> Result<()> {
    let url = remote.url();
    let name = remote::resolve_volume(remote, r.remote_name.as_deref())?;
    let rep = remote::replay(remote, &name, to, exact, into, opts)?;
    let kept: Vec<String> = (rep.replay.preserved.iter())
        .filter(|p| !rep.excluded.contains(p))
        .cloned()
        .collect();
    if json {
        return super::report::print_json(&rep);
    }
    println!(
        "replayed height {} of {:?} from {url} into {}: {} records, {} objects ({}) \
         downloaded in {} requests; {}{}",
        rep.height,
        rep.volume,
        into.display(),
        rep.records,
        rep.objects_downloaded,
        super::size::human(rep.bytes_downloaded),
        rep.requests.total(),
        super::report::replay_summary(&rep.replay),
        super::paths::preserved_text(&kept)
    );
    if !rep.excluded.is_empty() {
        println!(
            "not restored, left out of the offsite copy by push --exclude: {}; bring them from \
             the host or your key backup before starting the node",
            rep.excluded.join(", ")
        );
    }
    Ok(())
}
