//! `btm-agent run --mode btrfs|zfs` end to end, through the CLI only: snapshots handed over on
//! the socket, `list` (and BTM's -l), rollback exact and closest lower (through the agent and
//! without one), clean (-C), and retention (fair and fade, small caps) observed through `list`.
//! Btrfs runs on a loop-mounted filesystem, ZFS on a real zfs-fuse pool on a file.
use std::{
    collections::BTreeMap,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use btm_agent::retention::{Algo, Policy};
use btm_tests::{
    LoopFs, agent_bin, can_run, free_port, have_tool, http_get, prom_samples, scratch, sh, skip,
    watchdog_then, zfs,
};

/// Runs the CLI (no log configured: heights live in the native snapshots); returns stdout.
fn cli(args: &[&str]) -> Result<String, String> {
    let out = Command::new(agent_bin())
        .args(args)
        .env_remove("BTM_LOG_DIR")
        .env_remove("BTM_VOLUME")
        .env("BTM_SOCKET", "/nonexistent/btm.sock")
        .output()
        .unwrap();
    btm_tests::outcome(out)
}

struct Agent {
    child: Child,
    socket: PathBuf,
}

impl Agent {
    /// Started with metrics on `metrics_port`.
    fn start(
        mode: &str,
        vol: &Path,
        socket: &Path,
        (itv, cap, algo): (u64, usize, &str),
        metrics_port: u16,
    ) -> Agent {
        let _ = std::fs::remove_file(socket);
        let child = Command::new(agent_bin())
            .args(["run", "--mode", mode, "--volume"])
            .arg(vol)
            .arg("--socket")
            .arg(socket)
            .args(["--itv", &itv.to_string(), "--cap", &cap.to_string()])
            .args(["--algo", algo])
            .args(["--metrics-addr", &format!("127.0.0.1:{metrics_port}")])
            .env_remove("BTM_LOG_DIR")
            .stdout(Stdio::null())
            .spawn()
            .unwrap();
        let mut a = Agent {
            child,
            socket: socket.to_path_buf(),
        };
        let deadline = Instant::now() + Duration::from_secs(30);
        while std::os::unix::net::UnixStream::connect(socket).is_err() {
            if let Ok(Some(st)) = a.child.try_wait() {
                panic!("agent exited early: {st}");
            }
            assert!(Instant::now() < deadline, "agent did not listen");
            std::thread::sleep(Duration::from_millis(50));
        }
        a
    }

    fn snapshot(&self, h: u64) -> String {
        cli(&[
            "snapshot",
            "--height",
            &h.to_string(),
            "--socket",
            self.socket.to_str().unwrap(),
        ])
        .unwrap_or_else(|e| panic!("snapshot {h}: {e}"))
    }

    fn rollback(&self, vol: &Path, to: u64, exact: bool) -> Result<String, String> {
        let to = to.to_string();
        let mut a = vec![
            "rollback",
            "-p",
            vol.to_str().unwrap(),
            "--to",
            &to,
            "--socket",
            self.socket.to_str().unwrap(),
        ];
        if exact {
            a.push("--exact");
        }
        cli(&a)
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(self.child.id() as i32),
            nix::sys::signal::Signal::SIGTERM,
        );
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn list(vol: &Path) -> Vec<u64> {
    let out = cli(&["list", "-p", vol.to_str().unwrap(), "--json"]).unwrap();
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    v.as_array()
        .unwrap()
        .iter()
        .map(|e| e["height"].as_u64().unwrap())
        .collect()
}

/// The volume's state at height `h`: a file rewritten each height, one appended to, one
/// created per height.
fn write_height(vol: &Path, h: u64) -> btm_agent::treehash::TreeHash {
    let body = format!("state at height {h}\n").repeat((h as usize % 7) + 1);
    std::fs::write(vol.join("state"), &body).unwrap();
    std::fs::write(vol.join(format!("block-{h}")), h.to_le_bytes()).unwrap();
    sh("sync", &[]).unwrap();
    digest(vol)
}

/// The tree as the oracle sees it: paths, kinds, modes, sizes, contents.
fn digest(dir: &Path) -> btm_agent::treehash::TreeHash {
    btm_agent::treehash::hash_tree(dir).unwrap()
}

/// Retention as the agent applies it: after every snapshot, over what exists.
fn expected(policy: Policy, heights: impl IntoIterator<Item = u64>) -> Vec<u64> {
    let mut kept = Vec::new();
    for h in heights {
        if !policy.wants(h) {
            continue;
        }
        kept.push(h);
        let del = policy.to_delete(&kept);
        kept.retain(|k| !del.contains(k));
    }
    kept
}

/// The whole scenario on one native volume.
fn scenario(mode: &str, vol: &Path, socket: &Path) {
    let v = vol.to_str().unwrap();
    // Fair, cap 5: snapshot 1..=8, list keeps the newest five.
    let port = free_port();
    let agent = Agent::start(mode, vol, socket, (1, 5, "fair"), port);
    // A second agent on the same volume is refused, in native modes too.
    let other = socket.with_extension("other");
    let e = cli(&[
        "run",
        "--mode",
        mode,
        "--volume",
        v,
        "--socket",
        other.to_str().unwrap(),
    ])
    .unwrap_err();
    assert!(
        e.contains("another btm agent already tracks"),
        "{mode}: {e}"
    );
    let mut states = BTreeMap::new();
    for h in 1..=8 {
        states.insert(h, write_height(vol, h));
        agent.snapshot(h);
    }
    assert_eq!(list(vol), vec![4, 5, 6, 7, 8], "{mode}: fair cap 5");
    // Heights move the metrics in native modes too; the volume is not walked for a log size.
    let (status, text) = http_get(port, "/metrics").unwrap();
    assert_eq!(status, 200, "{text}");
    let m = prom_samples(&text);
    assert_eq!(m["btm_heights_total"], 8.0, "{mode}: {text}");
    assert_eq!(m["btm_last_height"], 8.0, "{mode}: {text}");
    assert!(!m.contains_key("btm_log_bytes"), "{mode}: {text}");
    // Asking for a kept height again is answered as done, with no new snapshot.
    assert!(agent.snapshot(8).contains("durable"));
    assert_eq!(list(vol), vec![4, 5, 6, 7, 8]);
    // Exact rollback through the agent: state of 6, newer snapshots gone.
    agent.rollback(vol, 6, true).unwrap();
    assert_eq!(digest(vol), states[&6], "{mode}: rollback -R 6");
    assert_eq!(list(vol), vec![4, 5, 6]);
    // Exact rollback to a height that was removed fails and changes nothing.
    let e = agent.rollback(vol, 2, true).unwrap_err();
    assert!(e.contains("no snapshot at height 2"), "{e}");
    assert_eq!(digest(vol), states[&6]);
    // The chain re-reaches 7 and 8 with other contents.
    for h in [7, 9] {
        states.insert(h, write_height(vol, h + 100));
        agent.snapshot(h);
    }
    assert_eq!(list(vol), vec![4, 5, 6, 7, 9]);
    // Closest lower: 8 is not there, 7 is.
    agent.rollback(vol, 8, false).unwrap();
    assert_eq!(digest(vol), states[&7], "{mode}: rollback -r 8");
    drop(agent);

    // Without an agent: BTM's flags on the volume's snapshots.
    let out = cli(&["-p", v, "-l"]).unwrap();
    assert!(out.contains('7') && out.contains('4'), "{out}");
    cli(&["-p", v, "-R", "5"]).unwrap();
    assert_eq!(digest(vol), states[&5], "{mode}: -R 5 without agent");
    assert_eq!(list(vol), vec![4, 5]);
    let e = cli(&["-p", v, "-r", "3"]).unwrap_err();
    assert!(e.contains("no snapshot at or below height 3"), "{e}");
    cli(&["-p", v, "-x"]).unwrap();
    assert_eq!(digest(vol), states[&5]);
    cli(&["-p", v, "-C", "--yes"]).unwrap();
    assert_eq!(list(vol), Vec::<u64>::new(), "{mode}: -C");

    // Fade, itv 2, cap 10: odd heights are acknowledged and skipped; density falls with age.
    let agent = Agent::start(mode, vol, socket, (2, 10, "fade"), free_port());
    let hs = 1..=40u64;
    for h in hs.clone() {
        write_height(vol, h);
        let out = agent.snapshot(h);
        assert_eq!(out.contains("skipped"), h % 2 == 1, "{out}");
    }
    let want = expected(Policy::new(2, 10, Algo::Fade).unwrap(), hs);
    let got = list(vol);
    println!("{mode}: fade itv 2 cap 10 over 1..=40 keeps {got:?}");
    assert_eq!(got, want, "{mode}: fade");
    assert!(got.len() <= 10 && got.contains(&40));
    cli(&["-p", v, "-C", "--yes"]).unwrap();
}

#[test]
fn btrfs_mode_end_to_end() {
    if !can_run("modes_native btrfs") {
        return;
    }
    if !have_tool("btrfs") {
        skip("modes_native btrfs", "btrfs-progs is not installed");
        return;
    }
    let fs = LoopFs::new("btrfs", 300).unwrap();
    let vol = fs.path("chain");
    sh("btrfs", &["subvolume", "create", vol.to_str().unwrap()]).unwrap();
    let socket = fs.dir.path().join("btm.sock");
    scenario("btrfs", &vol, &socket);
}

/// A zfs-fuse daemon that stops answering hangs file access on its pool, which no per-command
/// deadline reaches: the test process ends after this long instead of holding CI to its limit.
const ZFS_DEADLINE: Duration = Duration::from_secs(300);

#[test]
fn zfs_mode_end_to_end() {
    let _deadline = watchdog_then("modes_native zfs", ZFS_DEADLINE, zfs::detach_all_test_pools);
    if !can_run("modes_native zfs") {
        return;
    }
    if !have_tool("zpool") || !have_tool("zfs") {
        skip("modes_native zfs", "zfs tools are not installed");
        return;
    }
    if let Err(e) = zfs::ensure_daemon() {
        skip("modes_native zfs", &e);
        return;
    }
    let pool = pool("btmmodes");
    let socket = pool.dir().join("btm.sock");
    scenario("zfs", &pool.mnt, &socket);
}

/// A zfs-fuse (or OpenZFS) pool on a file in a scratch directory, destroyed (or detached, when
/// ZFS cannot destroy it) when dropped.
fn pool(prefix: &str) -> zfs::Pool {
    zfs::Pool::create(prefix, &scratch()).unwrap()
}

/// BTM's forms: the dataset's name instead of its mountpoint (`run -p pool/data`, `list -p`,
/// `rollback --volume`, BTM's `-p D` alone), `run --snapshot-volume/-itv/-cap/-mode/-algo`, and
/// a clear error when a name is neither a directory nor a dataset.
#[test]
fn zfs_takes_dataset_names_and_btm_long_flags() {
    let _deadline = watchdog_then(
        "modes_native zfs dataset names",
        ZFS_DEADLINE,
        zfs::detach_all_test_pools,
    );
    if !can_run("modes_native zfs dataset names") {
        return;
    }
    if !have_tool("zpool") || !have_tool("zfs") {
        skip(
            "modes_native zfs dataset names",
            "zfs tools are not installed",
        );
        return;
    }
    if let Err(e) = zfs::ensure_daemon() {
        skip("modes_native zfs dataset names", &e);
        return;
    }
    let pool = pool("btmnames");
    let (name, mnt) = (&pool.name, &pool.mnt);
    let dataset = pool.create_dataset("data").unwrap();
    let data = mnt.join("data");
    assert!(data.is_dir(), "the dataset is mounted under the pool");
    let socket = pool.dir().join("btm.sock");
    let s = socket.to_str().unwrap();
    let child = Command::new(agent_bin())
        .args([
            "run",
            "--snapshot-volume",
            &dataset,
            "--snapshot-mode",
            "zfs",
        ])
        .args([
            "--snapshot-itv",
            "2",
            "--snapshot-cap",
            "2",
            "--snapshot-algo",
            "fair",
        ])
        .args(["--socket", s])
        .env_remove("BTM_LOG_DIR")
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    let a = Agent {
        child,
        socket: socket.clone(),
    };
    let deadline = Instant::now() + Duration::from_secs(30);
    while std::os::unix::net::UnixStream::connect(&socket).is_err() {
        assert!(Instant::now() < deadline, "agent did not listen");
        std::thread::sleep(Duration::from_millis(50));
    }
    for h in 1..=6 {
        std::fs::write(data.join("height"), h.to_string()).unwrap();
        a.snapshot(h);
    }
    // --snapshot-itv 2 --snapshot-cap 2: heights 4 and 6.
    let listed = cli(&["list", "-p", &dataset, "--json"]).unwrap();
    let hs: Vec<u64> = serde_json::from_str::<serde_json::Value>(&listed)
        .unwrap()
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["height"].as_u64().unwrap())
        .collect();
    assert_eq!(hs, [4, 6], "{listed}");
    assert!(
        cli(&["-p", &dataset]).unwrap().contains('6'),
        "BTM's -p D alone lists"
    );
    drop(a);
    let out = cli(&[
        "rollback", "--volume", &dataset, "--mode", "zfs", "--to", "4",
    ])
    .unwrap();
    assert!(out.contains("height 4"), "{out}");
    assert_eq!(std::fs::read_to_string(data.join("height")).unwrap(), "4");

    let e = cli(&["list", "-p", &format!("{name}/nope")]).unwrap_err();
    assert!(
        e.contains("no such directory") && e.contains("not a ZFS dataset either"),
        "{e}"
    );
    assert!(!e.contains("(os error 2): No such file"), "{e}");
}
