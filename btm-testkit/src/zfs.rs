//! A ZFS pool on a file for tests (zfs-fuse here, OpenZFS where loaded), written once for the
//! agent's snapshot tests and the end-to-end mode tests.
//!
//! zfs-fuse is a FUSE daemon: when it stops answering, every system call that touches one of its
//! mounts blocks, in any process. A pool left mounted by a failed test then hangs tests that
//! never use ZFS (libmdbx stats every mount point in /proc/mounts at open). So a pool that cannot
//! be destroyed is detached: its FUSE connection aborted and the mount lazily unmounted, found
//! through /proc/self/mountinfo without touching the path.
//!
//! zfs-fuse cannot take two mounts at once: each mount hands its new FUSE channel to the
//! listener thread as two separate writes to one shared pipe (`zfsfuse_newfs`: the channel's
//! info, then the mount point), with no lock. Two mounts in flight can interleave those writes;
//! the listener then reads a mount point's bytes as the next channel's info and the daemon
//! dies, closing every client's socket (`zfsfuse_ioctl_read_loop(): file descriptor closed`,
//! then `cannot mount: Input/output error` for each pool being created). So every command of
//! this module that mounts holds [`MOUNTING`]; tests create pools and datasets only here.
use std::ffi::OsStr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// A zfs or zpool command gets this long before it is killed: they take milliseconds, and a
/// daemon that does not answer must fail the test, not the run.
const CMD_SECS: &str = "60";

/// Where the mount points of test pools live: only FUSE mounts under such a directory are ever
/// aborted or detached.
const DIR_PREFIX: &str = "btm-zfs-";

/// Held by every command that makes zfs-fuse mount (see the module's doc). Test binaries run
/// one at a time, so a lock per process is enough.
static MOUNTING: Mutex<()> = Mutex::new(());

/// Prints straight to stderr: the harness captures eprintln! even in threads a test spawned
/// (the watchdog's), and loses it when the process ends first.
fn note(line: String) {
    use std::io::Write;
    let _ = writeln!(std::io::stderr(), "{line}");
}

/// Runs `program args` with a deadline; `Err` names the command line, its status and output.
pub fn zsh<S: AsRef<OsStr>>(program: &str, args: &[S]) -> Result<String, String> {
    let out = Command::new("timeout")
        .args(["-k", "5", CMD_SECS, program])
        .args(args)
        .env("LC_ALL", "C")
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("cannot run {program}: {e}"))?;
    if out.status.success() {
        return Ok(String::from_utf8_lossy(&out.stdout).into_owned());
    }
    let line: Vec<_> = std::iter::once(program.into())
        .chain(args.iter().map(|a| a.as_ref().to_string_lossy()))
        .collect();
    let hung = if out.status.code() == Some(124) {
        format!(" (no answer within {CMD_SECS}s; {})", daemon_state())
    } else {
        String::new()
    };
    Err(format!(
        "`{}` failed ({}){hung}: {}{}",
        line.join(" "),
        out.status,
        String::from_utf8_lossy(&out.stderr).trim(),
        String::from_utf8_lossy(&out.stdout).trim()
    ))
}

/// Makes sure `zpool` talks to ZFS. Starts the zfs-fuse daemon when none runs; when one runs
/// but does not answer, kills it and detaches the test pools it held first (loudly: the test
/// that wedged it has failed already, the ones after it must not hang).
pub fn ensure_daemon() -> Result<(), String> {
    static LOCK: Mutex<()> = Mutex::new(());
    let _g = LOCK.lock().unwrap_or_else(|e| e.into_inner());
    let err = match zsh("zpool", &["list", "-H"]) {
        Ok(_) => return Ok(()),
        Err(e) => e,
    };
    let gone = err.contains("connect") || err.contains("daemon") || err.contains("initialize");
    let hung = err.contains("no answer within");
    if !gone && !hung {
        return Err(format!("zpool does not work: {err}"));
    }
    if !crate::have_tool("zfs-fuse") {
        return Err(format!(
            "ZFS does not answer and zfs-fuse is not installed: {err}"
        ));
    }
    if hung {
        note(format!("zfs-fuse does not answer ({err}); restarting it"));
        let _ = Command::new("pkill")
            .args(["-9", "-x", "zfs-fuse"])
            .status();
    }
    // Mounts of a daemon that is gone answer ENOTCONN forever; a new daemon cannot reuse them.
    detach_all_test_pools();
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut last = err;
    while Instant::now() < deadline {
        // A daemon still shutting down holds its pid file: the new one exits at once, so
        // starting is retried until one answers.
        if !daemon_running() {
            Command::new("zfs-fuse")
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status()
                .map_err(|e| format!("cannot start zfs-fuse: {e}"))?;
        }
        match zsh("zpool", &["list", "-H"]) {
            Ok(_) => return warm_up(deadline),
            Err(e) => last = e,
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    Err(format!(
        "started zfs-fuse but zpool still does not answer: {last}"
    ))
}

/// A zfs-fuse daemon just started answers `zpool list` before it can mount: the tests' first
/// pools, created at once, then fail to mount (`Input/output error`, about one cold start in
/// three here). One pool is made and destroyed alone first, until that works.
fn warm_up(deadline: Instant) -> Result<(), String> {
    let parent = crate::scratch();
    loop {
        let err = match Pool::create("btmwarm", &parent) {
            Ok(_) => return Ok(()), // destroyed on drop
            Err(e) => e,
        };
        // Created but not mounted: not destroyed by the drop.
        for name in warm_pools() {
            let _ = zsh("zpool", &["destroy", "-f", &name]);
        }
        if Instant::now() > deadline {
            return Err(format!(
                "started zfs-fuse but it cannot mount a pool: {err}"
            ));
        }
        std::thread::sleep(Duration::from_millis(500));
    }
}

/// The warm-up pools of this process that ZFS still lists.
fn warm_pools() -> Vec<String> {
    let prefix = format!("btmwarm{}x", std::process::id());
    zsh("zpool", &["list", "-H", "-o", "name"])
        .unwrap_or_default()
        .lines()
        .filter(|n| n.starts_with(&prefix))
        .map(str::to_string)
        .collect()
}

/// What the zfs-fuse daemon is doing, for the message of a command that got no answer: its
/// state and where it waits, per thread that is not idle in the kernel.
fn daemon_state() -> String {
    let Ok(out) = Command::new("pgrep").args(["-x", "zfs-fuse"]).output() else {
        return "pgrep failed".into();
    };
    let pids = String::from_utf8_lossy(&out.stdout);
    let Some(pid) = pids.split_whitespace().next() else {
        return "no zfs-fuse process".into();
    };
    let read = |p: String| std::fs::read_to_string(p).unwrap_or_default();
    let mut threads = std::collections::BTreeMap::<String, usize>::new();
    for t in std::fs::read_dir(format!("/proc/{pid}/task"))
        .into_iter()
        .flatten()
        .flatten()
    {
        let tid = t.file_name().to_string_lossy().into_owned();
        let stat = read(format!("/proc/{pid}/task/{tid}/stat"));
        let state = stat.rsplit(") ").next().and_then(|r| r.split(' ').next());
        let wchan = read(format!("/proc/{pid}/task/{tid}/wchan"));
        *threads
            .entry(format!("{}:{wchan}", state.unwrap_or("?")))
            .or_default() += 1;
    }
    let threads: Vec<String> = threads.iter().map(|(k, n)| format!("{n}x {k}")).collect();
    format!("zfs-fuse {pid} threads {}", threads.join(", "))
}

/// Runs a command that makes the daemon mount, one at a time; a failure says whether the
/// daemon survived it.
fn mounting<S: AsRef<OsStr>>(program: &str, args: &[S]) -> Result<String, String> {
    let _one = MOUNTING.lock().unwrap_or_else(|e| e.into_inner());
    zsh(program, args).map_err(|e| format!("{e} ({})", daemon_state()))
}

fn daemon_running() -> bool {
    Command::new("pgrep")
        .args(["-x", "zfs-fuse"])
        .stdout(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// A pool named `<prefix><pid>x<n>` on a 512 MiB sparse file in a fresh directory under
/// `parent`, mounted at `<dir>/mnt`; destroyed on drop, or detached when ZFS cannot destroy it.
pub struct Pool {
    pub name: String,
    pub mnt: PathBuf,
    dir: PathBuf,
    created: bool,
}

impl Pool {
    pub fn create(prefix: &str, parent: &Path) -> Result<Pool, String> {
        use std::sync::atomic::{AtomicU32, Ordering};
        static N: AtomicU32 = AtomicU32::new(0);
        let n = N.fetch_add(1, Ordering::Relaxed);
        let name = format!("{prefix}{}x{n}", std::process::id());
        let dir = parent.join(format!("{DIR_PREFIX}{name}"));
        std::fs::create_dir_all(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
        let mut pool = Pool {
            mnt: dir.join("mnt"),
            name,
            dir,
            created: false,
        };
        let img = pool.dir.join("pool.img");
        std::fs::File::create(&img)
            .and_then(|f| f.set_len(512 << 20))
            .map_err(|e| format!("{}: {e}", img.display()))?;
        mounting(
            "zpool",
            &[
                OsStr::new("create"),
                OsStr::new("-m"),
                pool.mnt.as_os_str(),
                OsStr::new(&pool.name),
                img.as_os_str(),
            ],
        )?;
        pool.created = true;
        Ok(pool)
    }

    /// Creates the dataset `<pool>/<child>`, mounted under the pool's mount point; returns its
    /// full name.
    pub fn create_dataset(&self, child: &str) -> Result<String, String> {
        let name = format!("{}/{child}", self.name);
        mounting("zfs", &["create", &name])?;
        Ok(name)
    }

    /// The directory holding the pool's file and mount point (for a test's other files).
    pub fn dir(&self) -> &Path {
        &self.dir
    }
}

impl Drop for Pool {
    fn drop(&mut self) {
        if self.created
            && zsh("zpool", &["destroy", "-f", &self.name]).is_err()
            && zsh("zpool", &["destroy", "-f", &self.name]).is_err()
        {
            note(format!(
                "cleanup: pool {} cannot be destroyed; detaching its mounts so that nothing \
                 else hangs on them",
                self.name
            ));
            detach_under(&self.dir);
        }
        // Never stat a mount that may still hang: remove only what is certainly ours.
        if !mounted_under(&self.dir) {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}

/// Detaches every FUSE mount of a test pool (under a `btm-zfs-` directory): for a watchdog
/// that ends a test whose daemon hangs, and before starting a new daemon.
pub fn detach_all_test_pools() {
    for m in fuse_mounts() {
        if m.point.to_string_lossy().contains(DIR_PREFIX) {
            detach(&m);
        }
    }
}

fn detach_under(dir: &Path) {
    for m in fuse_mounts() {
        if m.point.starts_with(dir) {
            detach(&m);
        }
    }
}

fn mounted_under(dir: &Path) -> bool {
    fuse_mounts().iter().any(|m| m.point.starts_with(dir))
}

/// A FUSE mount as /proc/self/mountinfo lists it.
struct FuseMount {
    point: PathBuf,
    /// The device minor: the mount's connection in /sys/fs/fuse/connections.
    minor: String,
}

fn fuse_mounts() -> Vec<FuseMount> {
    let info = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    info.lines()
        .filter_map(|l| {
            let f: Vec<&str> = l.split(' ').collect();
            let sep = f.iter().position(|x| *x == "-")?;
            let fstype = f.get(sep + 1)?;
            if !fstype.starts_with("fuse") {
                return None;
            }
            let minor = f.get(2)?.split(':').nth(1)?.to_string();
            Some(FuseMount {
                point: PathBuf::from(unescape(f.get(4)?)),
                minor,
            })
        })
        .collect()
}

/// mountinfo escapes space, tab, newline and backslash as `\ooo`.
fn unescape(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        let oct = b
            .get(i + 1..i + 4)
            .filter(|d| d.iter().all(|c| (b'0'..=b'7').contains(c)));
        match (b[i], oct) {
            (b'\\', Some(d)) => {
                out.push((d[0] - b'0') * 64 + (d[1] - b'0') * 8 + (d[2] - b'0'));
                i += 4;
            }
            (c, _) => {
                out.push(c);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Aborts the mount's FUSE connection (every waiting call returns ENOTCONN) and unmounts it
/// lazily. The fusectl filesystem is mounted first when it is not.
fn detach(m: &FuseMount) {
    let conns = Path::new("/sys/fs/fuse/connections");
    let abort = conns.join(&m.minor).join("abort");
    if !abort.exists() {
        let _ = Command::new("mount")
            .args(["-t", "fusectl", "fusectl"])
            .arg(conns)
            .stderr(Stdio::null())
            .status();
    }
    if let Err(e) = std::fs::write(&abort, "1") {
        note(format!("cleanup: cannot abort {}: {e}", abort.display()));
    }
    if let Err(e) = nix::mount::umount2(&m.point, nix::mount::MntFlags::MNT_DETACH) {
        note(format!("cleanup: cannot detach {}: {e}", m.point.display()));
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn mountinfo_escapes_are_undone() {
        assert_eq!(super::unescape(r"/tmp/a\040b\134c"), "/tmp/a b\\c");
        assert_eq!(super::unescape(r"/x\04"), r"/x\04");
    }
}
