//! Running things and timing them: shell helpers, loop volumes, the btm agent, the anchors.
use std::{
    io::{BufRead, BufReader, Write},
    os::unix::net::UnixStream,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context, Result, bail};
use serde_json::Value;

/// A command to spawn from the benchmark: it runs with the system's THP setting, not the
/// writer's. The benchmark process is the data set's writer, and it disables THP for itself
/// as `btm-agent exec` does for a node ([`super::dataset::writer_thp`]); the flag is kept
/// across fork and exec, so without this reset restic, rsync, fio and the agent would inherit
/// it.
pub fn command(prog: impl AsRef<std::ffi::OsStr>) -> Command {
    use std::os::unix::process::CommandExt;
    let mut c = Command::new(prog);
    // SAFETY: prctl with integer arguments is async-signal-safe; its result is ignored (a
    // kernel without the flag never set it).
    unsafe {
        c.pre_exec(|| {
            libc::prctl(libc::PR_SET_THP_DISABLE, 0, 0, 0, 0);
            Ok(())
        })
    };
    c
}

/// Runs a command, fails with its stderr when it fails; returns stdout.
pub fn sh(cmd: &str, args: &[&str]) -> Result<String> {
    let out = command(cmd)
        .args(args)
        .output()
        .with_context(|| format!("running {cmd}"))?;
    if !out.status.success() {
        bail!(
            "{cmd} {args:?} failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Like [`sh`] for a prepared command, also returning the wall time in seconds.
pub fn timed(cmd: &mut Command) -> Result<(f64, String)> {
    let t = Instant::now();
    let out = cmd
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("running {cmd:?}"))?;
    let secs = t.elapsed().as_secs_f64();
    if !out.status.success() {
        bail!(
            "{cmd:?} failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok((secs, String::from_utf8_lossy(&out.stdout).into_owned()))
}

/// `bash -o pipefail -c script`, timed.
pub fn pipeline(script: &str) -> Result<(f64, String)> {
    timed(command("bash").args(["-o", "pipefail", "-c", script]))
}

/// A `fstype` loop volume, `dir/name.img` mounted at `dir/name`: btm-testkit's, shared with
/// the tests and the demo (unmounted, detached and removed on drop).
pub fn loop_vol(dir: &Path, name: &str, fstype: &str, bytes: u64) -> Result<btm_testkit::LoopFs> {
    btm_testkit::LoopFs::create(
        &dir.join(format!("{name}.img")),
        &dir.join(name),
        fstype,
        bytes,
    )
    .with_context(|| format!("loop volume {name} ({fstype})"))
}

/// `btm-agent run` on a volume; stopped with SIGTERM on drop.
pub struct Agent {
    child: Child,
    pub socket: PathBuf,
}

impl Agent {
    pub fn start(bin: &Path, volume: &Path, log: &Path, socket: &Path) -> Result<Agent> {
        Self::start_with(bin, volume, log, socket, &[])
    }

    /// [`Agent::start`] with more `run` flags.
    pub fn start_with(
        bin: &Path,
        volume: &Path,
        log: &Path,
        socket: &Path,
        extra: &[&str],
    ) -> Result<Agent> {
        std::fs::create_dir_all(log)?;
        let child = command(bin)
            .args(["run", "--mode", "ebpf", "--volume"])
            .arg(volume)
            .arg("--log")
            .arg(log)
            .arg("--socket")
            .arg(socket)
            .args(extra)
            // BTM_BENCH_AGENT_LOG=debug shows where a cut's time goes (the agent logs to stderr).
            .env(
                "BTM_LOG",
                std::env::var("BTM_BENCH_AGENT_LOG").unwrap_or_else(|_| "warn".into()),
            )
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .spawn()
            .with_context(|| format!("starting {}", bin.display()))?;
        let mut a = Agent {
            child,
            socket: socket.to_path_buf(),
        };
        let t = Instant::now();
        loop {
            if let Some(st) = a.child.try_wait()? {
                bail!("btm-agent run exited early with {st}");
            }
            if a.request(r#"{"cmd":"status"}"#).is_ok() {
                return Ok(a);
            }
            if t.elapsed() > Duration::from_secs(120) {
                bail!(
                    "btm-agent run did not answer on {} in 120 s",
                    socket.display()
                );
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Ends the agent with SIGKILL: no resume state is written (a crash, or a reboot).
    pub fn kill(mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// The agent's status answer (tracker counters included).
    pub fn status(&self) -> Result<Value> {
        self.request(r#"{"cmd":"status"}"#)
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    fn request(&self, line: &str) -> Result<Value> {
        let mut s = UnixStream::connect(&self.socket)?;
        s.set_read_timeout(Some(Duration::from_secs(3600)))?;
        s.write_all(line.as_bytes())?;
        s.write_all(b"\n")?;
        let mut answer = String::new();
        BufReader::new(&s).read_line(&mut answer)?;
        let v: Value = serde_json::from_str(&answer).context("agent answer")?;
        if v["ok"] != Value::Bool(true) {
            bail!("agent refused: {}", v["error"]);
        }
        Ok(v["detail"].clone())
    }

    /// Cuts `height` (the same one-line request `btm-agent snapshot` sends); returns the wall
    /// time until the height is durable and the agent's CutReport.
    pub fn cut(&self, height: u64) -> Result<(f64, Value)> {
        let t = Instant::now();
        let v = self.request(&format!(r#"{{"cmd":"snapshot","height":{height}}}"#))?;
        Ok((t.elapsed().as_secs_f64(), v))
    }

    /// Peak and current resident memory (kB) and BPF map memory (bytes, memlock of map fds).
    pub fn memory(&self) -> (u64, u64, u64) {
        let pid = self.pid();
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
        let kb = |key: &str| {
            status
                .lines()
                .find_map(|l| l.strip_prefix(key))
                .and_then(|r| r.split_whitespace().next()?.parse().ok())
                .unwrap_or(0)
        };
        let mut maps = 0;
        if let Ok(rd) = std::fs::read_dir(format!("/proc/{pid}/fd")) {
            for e in rd.flatten() {
                let Ok(target) = std::fs::read_link(e.path()) else {
                    continue;
                };
                if target.to_string_lossy() != "anon_inode:bpf-map" {
                    continue;
                }
                let info = std::fs::read_to_string(format!(
                    "/proc/{pid}/fdinfo/{}",
                    e.file_name().to_string_lossy()
                ))
                .unwrap_or_default();
                maps += info
                    .lines()
                    .find_map(|l| l.strip_prefix("memlock:"))
                    .and_then(|v| v.trim().parse::<u64>().ok())
                    .unwrap_or(0);
            }
        }
        (kb("VmHWM:"), kb("VmRSS:"), maps)
    }
}

/// How long the deployments give the agent to stop (`TimeoutStopSec`, the DaemonSet's
/// `terminationGracePeriodSeconds`): a clean stop records what the next start needs.
pub const STOP_TIMEOUT: Duration = Duration::from_secs(120);

impl Agent {
    /// Stops the agent as its service manager does (SIGTERM, then SIGKILL after `limit`);
    /// its exit status and how long it took when it exited by itself.
    fn terminate(&mut self, limit: Duration) -> Option<(std::process::ExitStatus, f64)> {
        let t = Instant::now();
        if let Ok(Some(st)) = self.child.try_wait() {
            return Some((st, 0.0));
        }
        // SAFETY: kill(2) on the child we spawned (not reaped yet, so its pid is still ours).
        unsafe { libc::kill(self.child.id() as libc::pid_t, libc::SIGTERM) };
        while t.elapsed() < limit {
            if let Ok(Some(st)) = self.child.try_wait() {
                return Some((st, t.elapsed().as_secs_f64()));
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
        None
    }

    /// A clean stop within [`STOP_TIMEOUT`]: how long it took (it records what the next start
    /// needs, a row for every file, so it grows with the number of files). An agent that had
    /// exited already, or that fails its stop, did not record that: an error, not a time.
    pub fn stop(mut self) -> Result<f64> {
        if let Ok(Some(st)) = self.child.try_wait() {
            bail!("the agent had exited ({st}) before it was asked to stop");
        }
        match self.terminate(STOP_TIMEOUT) {
            Some((st, secs)) if st.success() => Ok(secs),
            Some((st, _)) => bail!("the agent's stop failed: {st}"),
            None => bail!(
                "the agent did not stop within {} s of SIGTERM (the deployments' stop timeout)",
                STOP_TIMEOUT.as_secs()
            ),
        }
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        self.terminate(Duration::from_secs(10));
    }
}

/// Time and bytes of one anchor run.
#[derive(Clone, Copy, Debug, Default)]
pub struct Run {
    pub secs: f64,
    /// Bytes the tool had to read (files it looked into, or the stream it produced).
    pub read: u64,
    /// Bytes it stored or sent.
    pub stored: u64,
}

/// Restic: local repository, password through the environment.
pub struct Restic {
    pub repo: PathBuf,
    cache: PathBuf,
}

impl Restic {
    pub fn init(dir: &Path) -> Result<Restic> {
        let r = Restic {
            repo: dir.join("restic-repo"),
            cache: dir.join("restic-cache"),
        };
        let _ = std::fs::remove_dir_all(&r.repo);
        timed(r.cmd().args(["init", "-q"]))?;
        Ok(r)
    }

    fn cmd(&self) -> Command {
        let mut c = command("restic");
        c.env("RESTIC_REPOSITORY", &self.repo)
            .env("RESTIC_PASSWORD", "btm-bench")
            .env("RESTIC_CACHE_DIR", &self.cache);
        c
    }

    /// `restic backup --json SRC`; returns the run and the snapshot id.
    pub fn backup(&self, src: &Path) -> Result<(Run, String)> {
        let (secs, out) = timed(
            self.cmd()
                .args(["backup", "--json", "--host", "bench"])
                .arg(src),
        )?;
        let summary = out
            .lines()
            .filter_map(|l| serde_json::from_str::<Value>(l).ok())
            .find(|v| v["message_type"] == "summary")
            .context("restic printed no summary")?;
        Ok((
            Run {
                secs,
                read: summary["total_bytes_processed"].as_u64().unwrap_or(0),
                stored: summary["data_added"].as_u64().unwrap_or(0),
            },
            summary["snapshot_id"].as_str().unwrap_or_default().into(),
        ))
    }

    pub fn restore(&self, snapshot: &str, target: &Path) -> Result<f64> {
        let (secs, _) = timed(
            self.cmd()
                .args(["restore", "-q", snapshot, "--target"])
                .arg(target),
        )?;
        Ok(secs)
    }
}

/// `rsync -a --delete --stats SRC/ DST/` (local: whole files, written to a temp file and renamed).
pub fn rsync(src: &Path, dst: &Path) -> Result<Run> {
    let (secs, out) = timed(
        command("rsync")
            .args(["-a", "--delete", "--stats"])
            .arg(format!("{}/", src.display()))
            .arg(format!("{}/", dst.display())),
    )?;
    let num = |key: &str| -> u64 {
        out.lines()
            .find_map(|l| l.strip_prefix(key))
            .map(|r| {
                r.split_whitespace()
                    .next()
                    .unwrap_or("0")
                    .replace(',', "")
                    .parse()
                    .unwrap_or(0)
            })
            .unwrap_or(0)
    };
    Ok(Run {
        secs,
        read: num("Total transferred file size:"),
        stored: num("Literal data:"),
    })
}

/// `btrfs send -p parent` of a new snapshot at `height`, which then becomes `parent` (the old
/// one is deleted).
pub fn btrfs_send_next(
    subvol: &Path,
    height: u64,
    parent: &mut PathBuf,
    out: &Path,
) -> Result<Run> {
    let (run, snap) = btrfs_send(subvol, height, Some(parent), out)?;
    sh(
        "btrfs",
        &["-q", "subvolume", "delete", parent.to_str().unwrap()],
    )?;
    *parent = snap;
    Ok(run)
}

/// A read-only snapshot of `subvol` named `snap-H`, sent (incrementally against `parent` when
/// given) into a file; both timed together. Returns the run and the new snapshot's path.
pub fn btrfs_send(
    subvol: &Path,
    height: u64,
    parent: Option<&Path>,
    out: &Path,
) -> Result<(Run, PathBuf)> {
    let snap = subvol
        .parent()
        .context("subvolume has no parent")?
        .join(format!("snap-{height}"));
    let t = Instant::now();
    sh(
        "btrfs",
        &[
            "-q",
            "subvolume",
            "snapshot",
            "-r",
            subvol.to_str().unwrap(),
            snap.to_str().unwrap(),
        ],
    )?;
    let mut c = command("btrfs");
    c.args(["-q", "send", "-f"]).arg(out);
    if let Some(p) = parent {
        c.arg("-p").arg(p);
    }
    c.arg(&snap);
    timed(&mut c)?;
    let secs = t.elapsed().as_secs_f64();
    let size = std::fs::metadata(out)?.len();
    std::fs::remove_file(out)?;
    Ok((
        Run {
            secs,
            read: size,
            stored: size,
        },
        snap,
    ))
}

/// A full copy: `tar -cf - . | zstd -1 -T0`.
pub fn tar_zstd(src: &Path, out: &Path, tree_bytes: u64) -> Result<Run> {
    let (secs, _) = pipeline(&format!(
        "tar -C '{}' -cf - . | zstd -q -1 -T0 -f -o '{}'",
        src.display(),
        out.display()
    ))?;
    let size = std::fs::metadata(out)?.len();
    std::fs::remove_file(out)?;
    Ok(Run {
        secs,
        read: tree_bytes,
        stored: size,
    })
}

/// Apparent bytes of every regular file under `root`.
pub fn tree_bytes(root: &Path) -> u64 {
    tree_files(root).iter().map(|(_, len)| len).sum()
}

/// Every regular file under `root` (symlinks not followed) and its apparent size, in path
/// order.
pub fn tree_files(root: &Path) -> Vec<(PathBuf, u64)> {
    let mut out = Vec::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(rd) = std::fs::read_dir(&d) else {
            continue;
        };
        for e in rd.flatten() {
            let Ok(md) = e.metadata() else { continue };
            if md.is_dir() {
                stack.push(e.path());
            } else if md.is_file() {
                out.push((e.path(), md.len()));
            }
        }
    }
    out.sort();
    out
}

/// One fio run: write IOPS and the write I/Os it issued in all.
#[derive(Clone, Copy, Debug, Default)]
pub struct Fio {
    pub iops: f64,
    pub ios: u64,
}

/// fio 4 KiB random writes on `file`.
pub fn fio(engine: &str, file: &Path, size: u64, secs: u64) -> Result<Fio> {
    let mut c = command("fio");
    c.args([
        "--name=bench",
        "--rw=randwrite",
        "--bs=4k",
        "--output-format=json",
        "--time_based",
        "--randrepeat=0",
    ])
    .arg(format!("--filename={}", file.display()))
    .arg(format!("--size={size}"))
    .arg(format!("--runtime={secs}"));
    match engine {
        "buffered" => c.args(["--ioengine=psync", "--direct=0", "--end_fsync=1"]),
        "direct" => c.args(["--ioengine=psync", "--direct=1"]),
        "mmap" => c.args(["--ioengine=mmap", "--end_fsync=1"]),
        other => bail!("unknown fio engine {other}"),
    };
    let (_, out) = timed(&mut c)?;
    // fio may print warnings before the JSON.
    let json = &out[out.find('{').context("fio printed no JSON")?..];
    let v: Value = serde_json::from_str(json).context("fio JSON")?;
    let w = &v["jobs"][0]["write"];
    Ok(Fio {
        iops: w["iops"].as_f64().context("fio JSON without write iops")?,
        ios: w["total_ios"].as_u64().unwrap_or(0),
    })
}
