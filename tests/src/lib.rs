//! Shared fixtures for the end-to-end tests: root checks that skip (or fail under
//! `BTM_REQUIRE_KERNEL=1`), loop-mounted filesystems that clean up after themselves.
use std::{
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::Duration,
};

use tempfile::TempDir;

/// Returns false (after printing why) when the test cannot run here. Under
/// `BTM_REQUIRE_KERNEL=1` (CI) a skip is a failure instead.
pub fn can_run(what: &str) -> bool {
    let reason = if !is_root() {
        Some("needs root (loop devices, mount, eBPF)".to_string())
    } else if !Path::new("/sys/kernel/btf/vmlinux").exists() {
        Some("kernel has no BTF".to_string())
    } else {
        None
    };
    match reason {
        None => true,
        Some(r) => skip(what, &r),
    }
}

pub use btm_testkit::{
    Rng, Watchdog, have_tool, is_root, remove_tree, scratch, skip, tree_digest, watchdog,
    watchdog_then, zfs,
};

/// Where the cgroup v2 hierarchy is mounted (/sys/fs/cgroup, or /sys/fs/cgroup/unified on a
/// host that mounts both versions). A host that mounts only cgroup v1 gets the v2 hierarchy
/// mounted at /run/btm-test-cgroup2 (its core files, `cgroup.freeze` among them, need no
/// controller).
pub fn cgroup2() -> Option<PathBuf> {
    let find = || {
        let mounts = std::fs::read_to_string("/proc/self/mounts").ok()?;
        mounts.lines().find_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            (f.get(2) == Some(&"cgroup2")).then(|| PathBuf::from(f[1]))
        })
    };
    if let Some(p) = find() {
        return Some(p);
    }
    let at = Path::new("/run/btm-test-cgroup2");
    std::fs::create_dir_all(at).ok()?;
    let _ = Command::new("mount")
        .args(["-t", "cgroup2", "none"])
        .arg(at)
        .status();
    find()
}

/// A finished command's stdout when it succeeded, else its stderr.
pub fn outcome(out: std::process::Output) -> Result<String, String> {
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(String::from_utf8_lossy(&out.stderr).into_owned())
    }
}

/// How long a tool run by [`sh`] may take (`BTM_TEST_CMD_TIMEOUT` seconds, default 300): a tool
/// that hangs (a zfs-fuse daemon that stopped answering, a stuck loop device) fails its test
/// in minutes instead of holding CI until its own limit.
pub fn cmd_timeout() -> Duration {
    let secs = std::env::var("BTM_TEST_CMD_TIMEOUT")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(300);
    Duration::from_secs(secs)
}

/// Runs `cmd args`, returns its stdout; fails on a non-zero exit, or kills it and fails when it
/// runs longer than [`cmd_timeout`].
pub fn sh(cmd: &str, args: &[&str]) -> anyhow::Result<String> {
    use std::io::Read;
    use wait_timeout::ChildExt;
    let mut child = Command::new(cmd)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| anyhow::anyhow!("cannot run {cmd}: {e}"))?;
    // Drained beside the wait so that a chatty tool cannot block on a full pipe.
    let drain = |r: Option<Box<dyn Read + Send>>| {
        std::thread::spawn(move || {
            let mut v = Vec::new();
            if let Some(mut r) = r {
                let _ = r.read_to_end(&mut v);
            }
            String::from_utf8_lossy(&v).into_owned()
        })
    };
    let out = drain(child.stdout.take().map(|r| Box::new(r) as _));
    let err = drain(child.stderr.take().map(|r| Box::new(r) as _));
    let limit = cmd_timeout();
    let Some(status) = child.wait_timeout(limit)? else {
        let _ = child.kill();
        let _ = child.wait();
        anyhow::bail!(
            "{cmd} {args:?} did not finish within {}s and was killed (BTM_TEST_CMD_TIMEOUT)",
            limit.as_secs()
        );
    };
    let (out, err) = (
        out.join().unwrap_or_default(),
        err.join().unwrap_or_default(),
    );
    if !status.success() {
        anyhow::bail!("{cmd} {args:?} failed: {err}");
    }
    Ok(out)
}

/// A filesystem of `fstype` on a sparse image file, loop-mounted under a temp dir
/// (btm-testkit's [`btm_testkit::LoopFs`] in a scratch directory of its own).
pub struct LoopFs {
    /// Declared first: unmounted before the directory holding its image goes.
    pub fs: btm_testkit::LoopFs,
    pub dir: TempDir,
    pub mnt: PathBuf,
    pub fstype: String,
}

impl LoopFs {
    pub fn new(fstype: &str, size_mb: u64) -> anyhow::Result<LoopFs> {
        let dir = tempfile::Builder::new()
            .prefix("btm-fs-")
            .tempdir_in(scratch())?;
        let mnt = dir.path().join("mnt");
        let fs =
            btm_testkit::LoopFs::create(&dir.path().join("fs.img"), &mnt, fstype, size_mb << 20)?;
        Ok(LoopFs {
            fs,
            dir,
            mnt,
            fstype: fstype.into(),
        })
    }

    pub fn path(&self, rel: &str) -> PathBuf {
        self.mnt.join(rel)
    }
}

/// Filesystems the tests run on.
pub const FILESYSTEMS: [&str; 3] = ["ext4", "xfs", "btrfs"];

/// The `btm-agent` binary cargo builds beside the test executables.
pub fn agent_bin() -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    let bin = exe.parent().unwrap().parent().unwrap().join("btm-agent");
    assert!(
        bin.exists(),
        "{} missing: run `cargo build -p btm-agent` first",
        bin.display()
    );
    bin
}

/// `python3`, or with `thp_disabled` `btm-agent exec -- python3`: started the way a node
/// whose mmap stores should be tracked per 4 KiB is (THP disabled).
pub fn python3(thp_disabled: bool) -> Command {
    if thp_disabled {
        let mut c = Command::new(agent_bin());
        c.args(["exec", "--", "python3"]);
        c
    } else {
        Command::new("python3")
    }
}

/// A child process stopped when dropped, whether the test passed or not: SIGTERM, then SIGKILL
/// after the grace period. (An agent left running would keep its volume lock.)
pub struct Running {
    pub child: std::process::Child,
    grace: std::time::Duration,
}

impl Running {
    pub fn new(child: std::process::Child) -> Running {
        Running {
            child,
            grace: std::time::Duration::from_secs(30),
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// SIGTERM, then wait for a clean exit; panics when the signal is ignored.
    pub fn terminate(&mut self) -> std::process::ExitStatus {
        let pid = nix::unistd::Pid::from_raw(self.child.id() as i32);
        let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
        let t0 = std::time::Instant::now();
        loop {
            if let Some(st) = self.child.try_wait().unwrap() {
                return st;
            }
            assert!(
                t0.elapsed() < self.grace,
                "process {} ignored SIGTERM",
                self.child.id()
            );
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let pid = nix::unistd::Pid::from_raw(self.child.id() as i32);
            let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
            let t0 = std::time::Instant::now();
            while t0.elapsed() < self.grace && matches!(self.child.try_wait(), Ok(None)) {
                std::thread::sleep(std::time::Duration::from_millis(50));
            }
            let _ = self.child.kill();
        }
        let _ = self.child.wait();
    }
}

/// Waits (up to a minute) until something accepts connections on `socket`; fails at once,
/// with `log()`, if the process exits first.
pub fn wait_listening(p: &mut Running, socket: &Path, log: impl Fn() -> String) {
    let t0 = std::time::Instant::now();
    while std::os::unix::net::UnixStream::connect(socket).is_err() {
        if let Ok(Some(st)) = p.child.try_wait() {
            panic!(
                "process exited with {st} before listening on {}:\n{}",
                socket.display(),
                log()
            );
        }
        assert!(
            t0.elapsed() < std::time::Duration::from_secs(60),
            "nothing listens on {}:\n{}",
            socket.display(),
            log()
        );
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
}

/// Starts `btm-agent run --mode ebpf` on `vol` with `extra` flags and waits until it listens;
/// its stderr goes to `<log>.agent.log` and is shown if it exits first.
pub fn start_agent(vol: &Path, log: &Path, sock: &Path, extra: &[&str]) -> Running {
    start_agent_env(vol, log, sock, extra, &[])
}

/// [`start_agent`] with more environment variables (test hooks).
pub fn start_agent_env(
    vol: &Path,
    log: &Path,
    sock: &Path,
    extra: &[&str],
    env: &[(&str, &str)],
) -> Running {
    start_agent_via(&[], vol, log, sock, extra, env)
}

/// [`start_agent_env`] run through `wrapper` (a program and its arguments that end by
/// exec'ing the agent command line appended to them, like `sh -c '...; exec "$@"' sh`).
pub fn start_agent_via(
    wrapper: &[&std::ffi::OsStr],
    vol: &Path,
    log: &Path,
    sock: &Path,
    extra: &[&str],
    env: &[(&str, &str)],
) -> Running {
    let agent_log = log.with_extension("agent.log");
    let mut cmd = match wrapper.split_first() {
        Some((prog, args)) => {
            let mut c = Command::new(prog);
            c.args(args).arg(agent_bin());
            c
        }
        None => Command::new(agent_bin()),
    };
    let mut agent = Running::new(
        cmd.args(["run", "--mode", "ebpf", "--volume"])
            .arg(vol)
            .arg("--log")
            .arg(log)
            .arg("--socket")
            .arg(sock)
            .args(extra)
            // A failing offsite remote is retried quickly (the tests' stores are on loopback).
            .env("BTM_REMOTE_RETRY_SECS", "2")
            .envs(env.iter().copied())
            .stdout(std::process::Stdio::null())
            .stderr(std::fs::File::create(&agent_log).unwrap())
            .spawn()
            .unwrap(),
    );
    wait_listening(&mut agent, sock, || {
        std::fs::read_to_string(&agent_log).unwrap_or_default()
    });
    agent
}

/// Waits until the agent started on log `log` (by [`start_agent`]) has logged a line
/// holding `needle` at least `times` times; returns its log. Panics with it after a minute.
pub fn wait_agent_log(log: &Path, needle: &str, times: usize) -> String {
    let path = log.with_extension("agent.log");
    let t0 = std::time::Instant::now();
    loop {
        let text = std::fs::read_to_string(&path).unwrap_or_default();
        if text.lines().filter(|l| l.contains(needle)).count() >= times {
            return text;
        }
        assert!(
            t0.elapsed() < std::time::Duration::from_secs(60),
            "the agent never logged {needle:?} {times} time(s):\n{text}"
        );
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
}

/// `btm-agent status --json` through `sock`; panics with the agent's words when it does not
/// answer (did it die?).
pub fn agent_status(sock: &Path) -> serde_json::Value {
    let out = Command::new(agent_bin())
        .args(["status", "--json", "--socket"])
        .arg(sock)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "the agent on {} does not answer: {}",
        sock.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

/// Waits until the agent listening on `sock` has no compaction in progress (its status).
pub fn wait_compaction_idle(sock: &Path) {
    let t0 = std::time::Instant::now();
    loop {
        let v = agent_status(sock);
        if v["compaction"].is_null() {
            return;
        }
        assert!(
            t0.elapsed() < std::time::Duration::from_secs(120),
            "the agent's compaction never finished: {v}"
        );
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
}

/// `btm-agent snapshot --height h` through `sock`; panics with the agent's words on failure.
pub fn snapshot_via(sock: &Path, h: u64) {
    let out = Command::new(agent_bin())
        .args(["snapshot", "--timeout", "600", "--height", &h.to_string()])
        .arg("--socket")
        .arg(sock)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "snapshot {h}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Runs the `#[ignore]`d test `name` of this test binary in a child process with `env` (the
/// fixture reads its arguments there); panics with its output unless it ran and passed.
///
/// For fixtures that open a log for appending: a lock taken in this process is inherited by
/// every child another test thread forks meanwhile, and held by it until it execs, so it can
/// outlive the fixture's `drop` and make the verb run next find the log locked (exit 75).
pub fn run_in_child(name: &str, env: &[(&str, &Path)]) {
    let out = Command::new(std::env::current_exe().unwrap())
        .args([name, "--exact", "--ignored", "--test-threads=1"])
        .envs(env.iter().map(|(k, v)| (*k, v.as_os_str())))
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.status.success() && text.contains("1 passed"),
        "fixture {name} in a child process: {text}"
    );
}

/// A scratch work directory (logs, replays) on the real disk, removed when dropped.
pub fn workdir(prefix: &str) -> TempDir {
    tempfile::Builder::new()
        .prefix(prefix)
        .tempdir_in(scratch())
        .unwrap()
}

/// A tracked loop volume with a cutter writing a log in a scratch work directory: what the
/// in-process end-to-end tests start from.
pub struct Cutting {
    pub cutter: btm_agent::cut::Cutter,
    pub vol: LoopFs,
    pub work: TempDir,
    pub logdir: PathBuf,
}

pub fn cutting(fstype: &str, size_mb: u64, prefix: &str) -> Cutting {
    use btm_agent::{
        cut::Cutter,
        log::Log,
        tracker::{Limits, Tracker},
        volume::Mount,
    };
    let vol = LoopFs::new(fstype, size_mb).expect("loop fs");
    let work = workdir(prefix);
    let logdir = work.path().join("log");
    std::fs::create_dir(&logdir).unwrap();
    let mount = Mount::at(&vol.mnt).unwrap();
    let tracker = Tracker::start(&mount, Limits::for_volume_bytes(size_mb << 20)).unwrap();
    let cutter = Cutter::new(mount, tracker, Log::open_append(&logdir).unwrap()).unwrap();
    Cutting {
        cutter,
        vol,
        work,
        logdir,
    }
}

/// A cutter started again on a volume of `size_mb` MiB whose log a clean stop may have left a
/// resume state in: it takes over the tracker that stop left running, if any.
pub fn restart_cutter(vol: &Path, logdir: &Path, size_mb: u64) -> btm_agent::cut::Cutter {
    use btm_agent::{
        cut::{Cutter, resume::Resume},
        log::Log,
        tracker::{Limits, Tracker},
        volume::Mount,
    };
    let mount = Mount::at(vol).unwrap();
    let running = Resume::peek_running(logdir);
    let tracker =
        Tracker::start_after(&mount, Limits::for_volume_bytes(size_mb << 20), running).unwrap();
    Cutter::new(mount, tracker, Log::open_append(logdir).unwrap()).unwrap()
}

/// Overwrites `bytes` at offset `at` of the existing file `path` (a pwrite, as a database
/// updates a page).
pub fn write_at(path: &Path, at: u64, bytes: &[u8]) {
    use std::os::unix::fs::FileExt;
    std::fs::OpenOptions::new()
        .write(true)
        .open(path)
        .unwrap()
        .write_all_at(bytes, at)
        .unwrap();
}

/// The heights a log holds.
pub fn log_heights(log: &Path) -> Vec<u64> {
    btm_agent::log::Log::open_read(log)
        .unwrap()
        .heights()
        .iter()
        .map(|i| i.height)
        .collect()
}

/// Replays height `h` of the log in `logdir` into a fresh directory under `work` and asserts
/// it equals the tree at `vol` (paths, types, modes, contents), then removes the replay.
pub fn assert_replay_equals(logdir: &Path, h: u64, vol: &Path, work: &Path) {
    use btm_agent::treehash::{diff, hash_tree};
    let log = btm_agent::log::Log::open_read(logdir).unwrap();
    let into = work.join(format!("replay-{h}"));
    let opts = btm_agent::log::ReplayOptions {
        progress: false,
        sync: false,
        ..Default::default()
    };
    log.replay(h, &into, &opts).unwrap();
    let d = diff(&hash_tree(&into).unwrap(), &hash_tree(vol).unwrap());
    assert!(d.is_empty(), "height {h} differs from the volume: {d:?}");
    std::fs::remove_dir_all(&into).unwrap();
}

/// A plain HTTP/1.1 GET on loopback: (status code, body).
pub fn http_get(port: u16, path: &str) -> std::io::Result<(u16, String)> {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port))?;
    s.set_read_timeout(Some(std::time::Duration::from_secs(10)))?;
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n"
    )?;
    let mut resp = String::new();
    s.read_to_string(&mut resp)?;
    let status = resp
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let body = resp
        .split_once("\r\n\r\n")
        .map_or("", |(_, b)| b)
        .to_string();
    Ok((status, body))
}

/// `name value` lines of the Prometheus text format (labels kept in the name).
pub fn prom_samples(text: &str) -> std::collections::BTreeMap<String, f64> {
    text.lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
        .filter_map(|l| {
            let (k, v) = l.rsplit_once(' ')?;
            Some((k.to_string(), v.parse().ok()?))
        })
        .collect()
}

/// A loopback TCP port nobody listens on right now.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// What a cut drains, as the tracker tests take it: freeze the volume, flip and drain, thaw.
pub fn drain_frozen(
    tracker: &mut btm_agent::tracker::Tracker,
    mnt: &Path,
) -> btm_agent::tracker::DirtySet {
    let frozen = btm_agent::volume::Frozen::freeze(mnt).expect("freeze");
    let set = tracker.take().expect("drain");
    frozen.thaw().expect("thaw");
    set
}

/// Pages (4 KiB block numbers) of `pages` that the tracker's `set` does not cover for file
/// `ino`: neither marked nor at or beyond its marked tail.
pub fn missed(
    set: &btm_agent::tracker::DirtySet,
    ino: u64,
    pages: &std::collections::BTreeSet<u64>,
) -> Vec<u64> {
    let f = set.files.get(&ino);
    pages
        .iter()
        .copied()
        .filter(|&p| {
            f.is_none_or(|f| !f.blocks.contains(&p) && f.tail_from.is_none_or(|t| t > p * 4096))
        })
        .collect()
}
