//! `cargo xtask bench-offsite`: btm's offsite copy (`btm-agent push` / `replay --remote`) against
//! restic, both talking to the same S3-compatible server (moto on loopback), on the same data.
//!
//! One xfs loop volume holds the chain-like data set ([`DataSet`]); the agent tracks it and cuts a
//! baseline and K heights that each change P % of it. After every cut, `btm-agent push` ships the
//! log and `restic backup` the volume, each to its own prefix of one bucket. Then both restore the
//! last height into an empty directory, and btm also replays it into a tree restored at the
//! baseline (a stale copy: only what differs is downloaded). Results go to BENCHMARKS-offsite.md.
use std::{
    fmt::Write as _,
    net::{TcpListener, TcpStream},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context, Result, bail};
use serde_json::Value;

use super::{
    dataset::DataSet,
    tools::{self, Agent},
    workspace_root,
};

mod report;

use report::render;

#[derive(clap::Args, Debug, Clone)]
pub struct OffsiteArgs {
    /// Size of the data set in MiB.
    #[arg(long, default_value_t = 1024)]
    pub size_mib: u64,
    /// Heights after the baseline, each pushed and backed up incrementally.
    #[arg(long, default_value_t = 3)]
    pub heights: u64,
    /// Percentage of the data set each height changes.
    #[arg(long, default_value_t = 1.0)]
    pub change_pct: f64,
    /// Where the report is written.
    #[arg(long, default_value = "BENCHMARKS-offsite.md")]
    pub out: PathBuf,
    /// Scratch directory (on a real disk: the volume image, the log, restore targets).
    #[arg(long, default_value = "/var/tmp/btm-bench-offsite")]
    pub dir: PathBuf,
}

const BUCKET: &str = "btm-bench";
const BTM_PREFIX: &str = "btm";
/// The same log pushed with a remote key (encrypted, layout 3 sealed).
const KEYED_PREFIX: &str = "btm-keyed";
/// The same log pushed in layout 1 (one object per payload, as btm pushed before packs): what
/// packs change, measured in the same run.
const LOOSE_PREFIX: &str = "btm-loose";
const RESTIC_PREFIX: &str = "restic";
const VOLUME_NAME: &str = "bench";

/// One measured step.
#[derive(Clone, Debug, Default)]
struct Step {
    tool: &'static str,
    what: String,
    secs: f64,
    /// Payload bytes sent (push/backup) or received (restore), as the row's note says.
    bytes: u64,
    /// Bytes that crossed the loopback interface during the step (requests and answers).
    lo: u64,
    /// CPU seconds of the tool (user + system) and of the moto server during the step.
    cpu: f64,
    moto_cpu: f64,
    /// HTTP requests moto served during the step, by method, and their number.
    reqs: String,
    nreqs: u64,
    note: String,
    /// Row whose time this one is compared with (btm's row for the same thing).
    vs: Option<usize>,
}

#[derive(Debug, Default)]
struct Results {
    tree_bytes: u64,
    changed: u64,
    steps: Vec<Step>,
    checks: Vec<String>,
    log_bytes: u64,
    btm_remote: (u64, u64),
    keyed_remote: (u64, u64),
    loose_remote: (u64, u64),
    restic_remote: (u64, u64),
    secs_total: f64,
}

pub fn run(a: OffsiteArgs) -> Result<()> {
    if a.size_mib < 64 {
        bail!("--size-mib must be at least 64");
    }
    if a.heights == 0 {
        bail!("--heights must be at least 1");
    }
    if !(a.change_pct > 0.0 && a.change_pct <= 100.0) {
        bail!("--change-pct must be in (0, 100]");
    }
    let (bin, out) = super::build_agent(&a.out)?;
    let t0 = Instant::now();
    let res = measure(&a, &bin);
    // Whatever happened, leave no scratch data behind (the guards already unmounted).
    let _ = std::fs::remove_dir_all(&a.dir);
    let mut r = res?;
    r.secs_total = t0.elapsed().as_secs_f64();
    let md = render(&a, &r, &workspace_root());
    std::fs::write(&out, md).with_context(|| format!("writing {}", out.display()))?;
    println!("bench-offsite: wrote {}", out.display());
    Ok(())
}

/// moto's S3 server on a free loopback port; stopped on drop.
struct Moto {
    child: Child,
    endpoint: String,
    log: PathBuf,
}

impl Moto {
    fn start(dir: &Path) -> Result<Moto> {
        let port = TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
        let log_path = dir.join("moto.log");
        let log = std::fs::File::create(&log_path)?;
        let child = Command::new("python3")
            .args(["-m", "moto.server", "-H", "127.0.0.1", "-p"])
            .arg(port.to_string())
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .context("starting python3 -m moto.server")?;
        let mut m = Moto {
            child,
            endpoint: format!("http://127.0.0.1:{port}"),
            log: log_path,
        };
        let t = Instant::now();
        while TcpStream::connect(("127.0.0.1", port)).is_err() {
            if let Some(st) = m.child.try_wait()? {
                bail!(
                    "moto exited early with {st} (see {}/moto.log)",
                    dir.display()
                );
            }
            if t.elapsed() > Duration::from_secs(60) {
                bail!("moto did not listen on port {port} in 60 s");
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        m.python(&format!("s3.create_bucket(Bucket={BUCKET:?})",))?;
        Ok(m)
    }

    /// Runs `code` with `s3` a boto3 client of this server; returns stdout.
    fn python(&self, code: &str) -> Result<String> {
        let script = format!(
            "import boto3\ns3 = boto3.client('s3', endpoint_url={:?}, aws_access_key_id='test', \
             aws_secret_access_key='test', region_name='us-east-1')\n{code}\n",
            self.endpoint
        );
        tools::sh("python3", &["-c", &script])
    }

    /// Bytes and number of objects under `prefix/` of the bucket.
    fn usage(&self, prefix: &str) -> Result<(u64, u64)> {
        let out = self.python(&format!(
            "n = b = 0\n\
             for page in s3.get_paginator('list_objects_v2').paginate(Bucket={BUCKET:?}, \
             Prefix={:?}):\n    for o in page.get('Contents', []):\n        n += 1\n        \
             b += o['Size']\nprint(b, n)",
            format!("{prefix}/")
        ))?;
        let mut it = out.split_whitespace().map(|s| s.parse::<u64>());
        match (it.next(), it.next()) {
            (Some(Ok(b)), Some(Ok(n))) => Ok((b, n)),
            _ => bail!("unexpected bucket listing output {out:?}"),
        }
    }

    /// CPU seconds moto has used so far.
    fn cpu(&self) -> f64 {
        let stat =
            std::fs::read_to_string(format!("/proc/{}/stat", self.child.id())).unwrap_or_default();
        // Fields after the command name (which is in parentheses): utime and stime are 14, 15.
        let rest = stat.rsplit_once(')').map_or("", |(_, r)| r);
        let f: Vec<f64> = rest
            .split_whitespace()
            .map(|x| x.parse().unwrap_or(0.0))
            .collect();
        // SAFETY: sysconf(3) has no preconditions.
        let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
        if f.len() > 13 && hz > 0.0 {
            (f[11] + f[12]) / hz
        } else {
            0.0
        }
    }

    /// moto's request log so far (one line per request).
    fn log_len(&self) -> u64 {
        std::fs::metadata(&self.log).map_or(0, |m| m.len())
    }

    /// Requests logged after byte `from` of the log, by method ("PUT 12, HEAD 3"), and their
    /// number.
    fn requests_since(&self, from: u64) -> (String, u64) {
        let log = std::fs::read(&self.log).unwrap_or_default();
        let tail = String::from_utf8_lossy(log.get(from as usize..).unwrap_or_default());
        let mut by: std::collections::BTreeMap<&str, u64> = Default::default();
        for l in tail.lines() {
            if let Some(m) = l.split('"').nth(1).and_then(|r| r.split(' ').next()) {
                *by.entry(m).or_default() += 1;
            }
        }
        let text = by
            .iter()
            .map(|(m, n)| format!("{m} {n}"))
            .collect::<Vec<_>>()
            .join(", ");
        (text, by.values().sum())
    }

    /// Runs `c` timed, with the loopback bytes, CPU and requests it caused; fails with its
    /// stderr.
    fn timed(&self, c: &mut Command) -> Result<(f64, Probe, String)> {
        let (lo0, cpu0, mcpu0, log0) = (lo_bytes(), children_cpu(), self.cpu(), self.log_len());
        let (secs, out) = tools::timed(c)?;
        let (reqs, nreqs) = self.requests_since(log0);
        let p = Probe {
            lo: lo_bytes().saturating_sub(lo0),
            cpu: children_cpu() - cpu0,
            moto_cpu: self.cpu() - mcpu0,
            reqs,
            nreqs,
        };
        Ok((secs, p, out))
    }

    /// Environment for btm-agent and restic talking to this server.
    fn env(&self, c: &mut Command, dir: &Path) {
        c.env("AWS_ENDPOINT_URL", &self.endpoint)
            .env("AWS_ACCESS_KEY_ID", "test")
            .env("AWS_SECRET_ACCESS_KEY", "test")
            .env("AWS_REGION", "us-east-1")
            .env("AWS_DEFAULT_REGION", "us-east-1")
            .env_remove("AWS_PROFILE")
            .env_remove("AWS_SESSION_TOKEN")
            .env("BTM_REMOTE_RETRY_SECS", "10")
            .env("BTM_LOG", "warn")
            .env_remove("BTM_REMOTE")
            .env_remove("BTM_REMOTE_NAME")
            .env_remove("BTM_REMOTE_KEY_FILE")
            .env(
                "RESTIC_REPOSITORY",
                format!("s3:{}/{BUCKET}/{RESTIC_PREFIX}", self.endpoint),
            )
            .env("RESTIC_PASSWORD", "btm-bench")
            .env("RESTIC_CACHE_DIR", dir.join("restic-cache"))
            .stdin(Stdio::null());
    }
}

impl Drop for Moto {
    fn drop(&mut self) {
        // SAFETY: kill(2) on the child we spawned.
        unsafe { libc::kill(self.child.id() as libc::pid_t, libc::SIGTERM) };
        for _ in 0..50 {
            if self.child.try_wait().ok().flatten().is_some() {
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Bytes received on the loopback interface so far (on `lo` every byte sent is also received).
fn lo_bytes() -> u64 {
    std::fs::read_to_string("/proc/net/dev")
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.trim_start().strip_prefix("lo:"))
        .and_then(|r| r.split_whitespace().next()?.parse().ok())
        .unwrap_or(0)
}

/// CPU seconds of the children this process has waited for.
fn children_cpu() -> f64 {
    // SAFETY: getrusage(2) into a zeroed struct we own.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    unsafe { libc::getrusage(libc::RUSAGE_CHILDREN, &mut ru) };
    let tv = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
    tv(ru.ru_utime) + tv(ru.ru_stime)
}

/// What a step cost besides its wall time.
struct Probe {
    lo: u64,
    cpu: f64,
    moto_cpu: f64,
    reqs: String,
    nreqs: u64,
}

fn mib(b: u64) -> String {
    format!("{:.1} MiB", b as f64 / (1u64 << 20) as f64)
}

/// `diff -rq --no-dereference a b`: None when equal, else the first lines of the difference.
fn tree_diff(a: &Path, b: &Path) -> Option<String> {
    let out = Command::new("diff")
        .args(["-rq", "--no-dereference"])
        .arg(a)
        .arg(b)
        .output();
    match out {
        Ok(o) if o.status.success() => None,
        Ok(o) => Some(
            String::from_utf8_lossy(&o.stdout)
                .lines()
                .chain(String::from_utf8_lossy(&o.stderr).lines())
                .take(5)
                .collect::<Vec<_>>()
                .join("; "),
        ),
        Err(e) => Some(format!("diff: {e}")),
    }
}

struct Ctx<'a> {
    bin: &'a Path,
    dir: &'a Path,
    moto: &'a Moto,
    log: PathBuf,
    remote: String,
    /// The keyed copy: its URL and key file.
    keyed: (String, PathBuf),
    /// The layout-1 copy's URL.
    loose: String,
}

impl Ctx<'_> {
    fn btm(&self) -> Command {
        let mut c = Command::new(self.bin);
        self.moto.env(&mut c, self.dir);
        c
    }

    fn restic(&self) -> Command {
        let mut c = Command::new("restic");
        self.moto.env(&mut c, self.dir);
        c
    }

    /// `btm VERB`, with `--remote-key` when `keyed`, and the URL to use.
    fn btm_at(&self, verb: &[&str], keyed: bool) -> (Command, &str) {
        let mut c = self.btm();
        c.args(verb);
        if keyed {
            c.arg("--remote-key").arg(&self.keyed.1);
            (c, &self.keyed.0)
        } else {
            (c, &self.remote)
        }
    }

    fn push(&self, what: &str, keyed: bool) -> Result<Step> {
        let (c, url) = self.btm_at(&["push", "--json"], keyed);
        self.push_with(what, if keyed { "btm keyed" } else { "btm" }, c, url)
    }

    /// The push to the layout-1 store (a first push makes it layout 1).
    fn push_loose(&self, what: &str) -> Result<Step> {
        let mut c = self.btm();
        c.args(["push", "--json"]).env("BTM_REMOTE_NEW_LAYOUT", "1");
        self.push_with(what, "btm loose", c, &self.loose)
    }

    fn push_with(&self, what: &str, tool: &'static str, mut c: Command, url: &str) -> Result<Step> {
        let (secs, pr, out) = self.moto.timed(c.args(["--log"]).arg(&self.log).args([
            "--remote",
            url,
            "--remote-name",
            VOLUME_NAME,
        ]))?;
        let v: Value = serde_json::from_str(&out[out.find('{').context("push printed no JSON")?..])
            .context("push JSON")?;
        let u = |k: &str| v[k].as_u64().unwrap_or(0);
        Ok(Step {
            tool,
            what: what.into(),
            secs,
            bytes: u("bytes_uploaded"),
            lo: pr.lo,
            cpu: pr.cpu,
            moto_cpu: pr.moto_cpu,
            reqs: pr.reqs.clone(),
            nreqs: pr.nreqs,
            note: format!(
                "push: {} records, {} objects uploaded in {} packs ({} already there), newest \
                 height {}",
                u("records_uploaded"),
                u("objects_uploaded"),
                u("packs_uploaded"),
                u("objects_present"),
                v["newest_height"]
            ),
            vs: None,
        })
    }

    fn backup(&self, what: &str, src: &Path, vs: usize) -> Result<Step> {
        let before = self.moto.usage(RESTIC_PREFIX)?;
        let (secs, pr, out) = self.moto.timed(
            self.restic()
                .args(["backup", "--json", "--host", "bench"])
                .arg(src),
        )?;
        let after = self.moto.usage(RESTIC_PREFIX)?;
        let summary = out
            .lines()
            .filter_map(|l| serde_json::from_str::<Value>(l).ok())
            .find(|v| v["message_type"] == "summary")
            .context("restic printed no summary")?;
        Ok(Step {
            tool: "restic",
            what: what.into(),
            secs,
            bytes: after.0.saturating_sub(before.0),
            lo: pr.lo,
            cpu: pr.cpu,
            moto_cpu: pr.moto_cpu,
            reqs: pr.reqs.clone(),
            nreqs: pr.nreqs,
            note: format!(
                "backup: repo grew by {} objects; restic's data_added {}",
                after.1.saturating_sub(before.1),
                mib(summary["data_added"].as_u64().unwrap_or(0))
            ),
            vs: Some(vs),
        })
    }

    fn replay(&self, what: &str, height: u64, into: &Path, keyed: bool) -> Result<Step> {
        let (mut c, url) = self.btm_at(&["replay"], keyed);
        let (secs, pr, out) = self.moto.timed(
            c.args(["--remote", url, "--remote-name", VOLUME_NAME])
                .args(["--json", "--exact", "--to", &height.to_string(), "--into"])
                .arg(into),
        )?;
        let v: Value =
            serde_json::from_str(&out[out.find('{').context("replay printed no JSON")?..])
                .context("replay JSON")?;
        let u = |k: &str| v[k].as_u64().unwrap_or(0);
        Ok(Step {
            tool: if keyed { "btm keyed" } else { "btm" },
            what: what.into(),
            secs,
            bytes: u("bytes_downloaded"),
            lo: pr.lo,
            cpu: pr.cpu,
            moto_cpu: pr.moto_cpu,
            reqs: pr.reqs.clone(),
            nreqs: pr.nreqs,
            note: format!(
                "replay: {} records, {} objects downloaded; {} written, {} compared",
                u("records"),
                u("objects_downloaded"),
                mib(v["replay"]["bytes_written"].as_u64().unwrap_or(0)),
                mib(v["replay"]["bytes_compared"].as_u64().unwrap_or(0))
            ),
            vs: None,
        })
    }
}

fn measure(a: &OffsiteArgs, bin: &Path) -> Result<Results> {
    let size = a.size_mib << 20;
    let dir = &a.dir;
    let _ = Command::new("umount")
        .arg("-d")
        .arg(dir.join("xfs"))
        .output();
    let _ = std::fs::remove_dir_all(dir);
    std::fs::create_dir_all(dir)?;
    let mut r = Results::default();
    let changed = ((size as f64 * a.change_pct / 100.0) as u64).max(64 << 10);
    r.changed = changed;
    let growth = changed / 2 * a.heights;
    let xfs = tools::loop_vol(dir, "xfs", "xfs", size + growth + size / 2 + (1 << 30))?;
    let socket = dir.join("btm.sock");

    let t = Instant::now();
    let mut ds = DataSet::create(&xfs.mnt, size, 0x2545_f491_4f6c_dd1d)?;
    tools::sh("sync", &[])?;
    r.tree_bytes = tools::tree_bytes(&xfs.mnt);
    println!(
        "bench-offsite: data set of {} written to {} in {:.1} s",
        mib(r.tree_bytes),
        xfs.mnt.display(),
        t.elapsed().as_secs_f64()
    );

    let moto = Moto::start(dir)?;
    println!("bench-offsite: moto at {}", moto.endpoint);
    let cx = Ctx {
        bin,
        dir,
        moto: &moto,
        log: dir.join("log"),
        remote: format!("s3://{BUCKET}/{BTM_PREFIX}"),
        keyed: (
            format!("s3://{BUCKET}/{KEYED_PREFIX}"),
            dir.join("remote.key"),
        ),
        loose: format!("s3://{BUCKET}/{LOOSE_PREFIX}"),
    };
    tools::sh(
        bin.to_str().context("agent path")?,
        &[
            "remote-key",
            "generate",
            "--out",
            cx.keyed.1.to_str().context("key path")?,
        ],
    )?;
    let mut init = cx.restic();
    tools::timed(init.args(["init", "-q"])).context("restic init")?;

    let agent = Agent::start(bin, &xfs.mnt, &cx.log, &socket)?;
    let mut steps: Vec<Step> = vec![];
    let push_step = |steps: &mut Vec<Step>, height: u64, what: &str| -> Result<()> {
        let (cut_secs, rep) = agent.cut(height)?;
        let stored = rep["stored_bytes"].as_u64().unwrap_or(0);
        let mut p = cx.push(what, false)?;
        write!(
            p.note,
            "; the cut before it (local, not offsite) took {cut_secs:.2} s and stored {}",
            mib(stored)
        )?;
        let i = steps.len();
        steps.push(p);
        let b = cx.backup(what, &xfs.mnt, i)?;
        println!(
            "bench-offsite: {what:<24} btm push {:>7.2} s {:>10}   restic backup {:>7.2} s {:>10}",
            steps[i].secs,
            mib(steps[i].bytes),
            b.secs,
            mib(b.bytes)
        );
        steps.push(b);
        // The same log to a keyed store: what encryption costs.
        let mut k = cx.push(what, true)?;
        k.vs = Some(i);
        steps.push(k);
        let mut l = cx.push_loose(what)?;
        l.vs = Some(i);
        steps.push(l);
        Ok(())
    };

    // Baseline and the initial offsite copy.
    let base = 1;
    push_step(&mut steps, base, "initial copy (h1)")?;
    // Heights changing P % each, pushed and backed up incrementally.
    let mut height = base;
    for _ in 0..a.heights {
        height += 1;
        ds.height(changed)?;
        push_step(
            &mut steps,
            height,
            &format!("incremental h{height} ({} %)", a.change_pct),
        )?;
    }
    drop(ds);
    drop(agent);
    tools::sh("sync", &[])?;

    // Full restore of the last height into empty directories.
    let what = format!("restore h{height} into an empty dir");
    let btm_dir = dir.join("restore-btm");
    let s = cx.replay(&what, height, &btm_dir, false)?;
    match tree_diff(&xfs.mnt, &btm_dir) {
        None => r.checks.push(format!(
            "btm replay of h{height} from moto == volume (diff -r)"
        )),
        Some(d) => r
            .checks
            .push(format!("MISMATCH btm replay of h{height} vs volume: {d}")),
    }
    let i = steps.len();
    println!(
        "bench-offsite: {what:<24} btm replay {:.2} s ({})",
        s.secs,
        mib(s.bytes)
    );
    steps.push(s);
    let restic_dir = dir.join("restore-restic");
    let (secs, pr, _) = moto.timed(
        cx.restic()
            .args(["restore", "-q", "latest", "--target"])
            .arg(&restic_dir),
    )?;
    let restored = restic_dir.join(xfs.mnt.strip_prefix("/").unwrap_or(&xfs.mnt));
    match tree_diff(&xfs.mnt, &restored) {
        None => r.checks.push(format!(
            "restic restore of h{height} from moto == volume (diff -r)"
        )),
        Some(d) => r
            .checks
            .push(format!("MISMATCH restic restore vs volume: {d}")),
    }
    println!("bench-offsite: {what:<24} restic restore {secs:.2} s");
    // restic reports no byte count for a restore: the blobs the snapshot needs, as stored.
    let mut stats = cx.restic();
    let raw = tools::timed(stats.args(["stats", "--json", "--mode", "raw-data", "latest"]))
        .ok()
        .and_then(|(_, out)| serde_json::from_str::<Value>(&out).ok())
        .and_then(|v| v["total_size"].as_u64());
    steps.push(Step {
        tool: "restic",
        what: what.clone(),
        secs,
        bytes: pr.lo,
        lo: pr.lo,
        cpu: pr.cpu,
        moto_cpu: pr.moto_cpu,
        reqs: pr.reqs.clone(),
        nreqs: pr.nreqs,
        note: format!(
            "restore latest: restic reports no byte count, so bytes are the loopback traffic \
             (whole pack files); the snapshot's blobs as stored are {} (`restic stats --mode \
             raw-data`)",
            raw.map_or("?".into(), mib)
        ),
        vs: Some(i),
    });
    let _ = std::fs::remove_dir_all(&restic_dir);
    let _ = std::fs::remove_dir_all(&btm_dir);
    let keyed_dir = dir.join("restore-keyed");
    let mut s = cx.replay(&what, height, &keyed_dir, true)?;
    s.vs = Some(i);
    match tree_diff(&xfs.mnt, &keyed_dir) {
        None => r.checks.push(format!(
            "btm keyed replay of h{height} from moto == volume (diff -r)"
        )),
        Some(d) => r.checks.push(format!(
            "MISMATCH btm keyed replay of h{height} vs volume: {d}"
        )),
    }
    steps.push(s);
    let _ = std::fs::remove_dir_all(&keyed_dir);

    // Differential restore: the last height into a tree restored at the baseline.
    let stale = dir.join("restore-stale");
    let mut s = cx.replay(
        &format!("restore h{base} into an empty dir"),
        base,
        &stale,
        false,
    )?;
    s.note
        .push_str(" (prepares the stale tree for the next row)");
    steps.push(s);
    let what = format!("restore h{height} into the h{base} tree");
    let s = cx.replay(&what, height, &stale, false)?;
    match tree_diff(&xfs.mnt, &stale) {
        None => r.checks.push(format!(
            "btm differential replay h{base} -> h{height} from moto == volume (diff -r)"
        )),
        Some(d) => r.checks.push(format!(
            "MISMATCH btm differential replay h{base} -> h{height} vs volume: {d}"
        )),
    }
    println!(
        "bench-offsite: {what:<24} btm replay {:.2} s ({})",
        s.secs,
        mib(s.bytes)
    );
    steps.push(s);
    let _ = std::fs::remove_dir_all(&stale);

    r.log_bytes = tools::tree_bytes(&cx.log);
    r.btm_remote = moto.usage(BTM_PREFIX)?;
    r.keyed_remote = moto.usage(KEYED_PREFIX)?;
    r.loose_remote = moto.usage(LOOSE_PREFIX)?;
    r.restic_remote = moto.usage(RESTIC_PREFIX)?;
    r.steps = steps;
    drop(moto);
    drop(xfs);
    Ok(r)
}
