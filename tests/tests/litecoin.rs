//! A real chain node end to end: litecoind in -regtest with its datadir on a loop-mounted ext4
//! volume tracked by the agent, heights delivered per block by `-blocknotify` running
//! `btm-agent notify`. Rolled back (exact and closest lower) and replayed, the node must restart
//! at exactly the recorded height and block hash.
//!
//! The pollers of `btm-agent watch` for CometBFT and Ethereum are in watch_http.rs.
use std::{
    collections::BTreeMap,
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use btm_agent::heights::{Auth, Endpoint, Source};
use btm_tests::{LoopFs, agent_bin, can_run, free_port, have_tool, scratch, sh, skip};
use serde_json::Value;

mod cli_support;
use cli_support::*;

/// Stands for the node's RPC port in a `-blocknotify` command.
const RPCPORT: &str = "{rpcport}";

/// A litecoind in -regtest, on loopback only.
struct Node {
    datadir: PathBuf,
    rpcport: u16,
    proc: Guard,
}

impl Node {
    fn start(datadir: &Path, blocknotify: Option<&str>, out: &Path) -> Node {
        let rpcport = free_port();
        let mut cmd = Command::new("litecoind");
        cmd.arg("-regtest")
            .arg(format!("-datadir={}", datadir.display()))
            .arg(format!("-rpcport={rpcport}"))
            .arg(format!("-port={}", free_port()))
            .args(["-listen=0", "-connect=0", "-server", "-printtoconsole=0"])
            .arg("-fallbackfee=0.0002");
        if let Some(n) = blocknotify {
            // The hook needs the node's own RPC port, known only here.
            cmd.arg(format!(
                "-blocknotify={}",
                n.replace(RPCPORT, &rpcport.to_string())
            ));
        }
        let child = cmd
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(out).unwrap())
            .spawn()
            .unwrap();
        let mut node = Node {
            datadir: datadir.into(),
            rpcport,
            proc: Guard(Some(child)),
        };
        let t0 = Instant::now();
        while node.try_cli(&["getblockcount"]).is_err() {
            if let Some(st) = node.proc.0.as_mut().unwrap().try_wait().unwrap() {
                panic!(
                    "litecoind exited ({st}): {} {}",
                    std::fs::read_to_string(out).unwrap_or_default(),
                    tail(&datadir.join("regtest/debug.log"))
                );
            }
            assert!(
                t0.elapsed() < Duration::from_secs(60),
                "litecoind not ready"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        node
    }

    fn try_cli(&self, args: &[&str]) -> Result<String, String> {
        let out = Command::new("litecoin-cli")
            .arg("-regtest")
            .arg(format!("-datadir={}", self.datadir.display()))
            .arg(format!("-rpcport={}", self.rpcport))
            .args(args)
            .output()
            .map_err(|e| e.to_string())?;
        if out.status.success() {
            Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
        } else {
            Err(String::from_utf8_lossy(&out.stderr).into_owned())
        }
    }

    fn cli(&self, args: &[&str]) -> String {
        self.try_cli(args)
            .unwrap_or_else(|e| panic!("litecoin-cli {args:?}: {e}"))
    }

    fn tip(&self) -> (u64, String) {
        (
            self.cli(&["getblockcount"]).parse().unwrap(),
            self.cli(&["getbestblockhash"]),
        )
    }

    fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.rpcport)
    }

    /// `stop` over RPC, then wait for the process to flush and exit.
    fn stop(mut self) {
        self.cli(&["stop"]);
        self.proc.wait_exit(Duration::from_secs(60));
    }
}

fn tail(p: &Path) -> String {
    let s = std::fs::read_to_string(p).unwrap_or_default();
    s.lines()
        .rev()
        .take(30)
        .collect::<Vec<_>>()
        .into_iter()
        .rev()
        .collect::<Vec<_>>()
        .join("\n")
}

/// Where the agent keeps heights: its log (eBPF mode, the volume is the whole filesystem), or
/// Btrfs snapshots of the subvolume holding the datadir (`--mode btrfs`).
enum Store {
    Log(PathBuf),
    Btrfs,
}

/// The agent of one end-to-end run and the CLI calls that depend on its mode.
struct Setup {
    store: Store,
    /// The node's datadir: the tracked volume (eBPF) or the snapshotted subvolume (Btrfs).
    datadir: PathBuf,
    sock: PathBuf,
}

impl Setup {
    fn run_args(&self) -> Vec<String> {
        let mut a = vec!["run".to_string(), "--volume".into(), s(&self.datadir)];
        match &self.store {
            Store::Log(log) => a.extend(["--log".into(), s(log)]),
            Store::Btrfs => a.extend(["--mode".into(), "btrfs".into()]),
        }
        a.extend(["--socket".into(), s(&self.sock)]);
        a
    }

    fn list_json(&self) -> String {
        match &self.store {
            Store::Log(log) => agent(&["list", "--log", &s(log), "--json"]),
            Store::Btrfs => agent(&["list", "--volume", &s(&self.datadir), "--json"]),
        }
    }

    fn heights(&self) -> Vec<u64> {
        heights_of(&self.list_json())
    }

    /// Rolls the datadir back in place through the running agent.
    fn rollback(&self, to: u64, exact: bool) {
        let (v, k, to) = (s(&self.datadir), s(&self.sock), to.to_string());
        let mut args = vec!["rollback", "--volume", &v, "--socket", &k, "--to", &to];
        let log;
        if let Store::Log(l) = &self.store {
            log = s(l);
            args.extend(["--log", &log]);
        }
        if exact {
            args.push("--exact");
        }
        agent(&args);
    }

    /// Materialises height `h` into `into`, a fresh directory a second node can run on.
    fn replay(&self, h: u64, into: &Path) {
        match &self.store {
            Store::Log(log) => {
                agent(&[
                    "replay",
                    "--log",
                    &s(log),
                    "--to",
                    &h.to_string(),
                    "--exact",
                    "--into",
                    &s(into),
                ]);
            }
            // A writable snapshot of the read-only one the agent took at `h`.
            Store::Btrfs => {
                let name = self.datadir.file_name().unwrap().to_str().unwrap();
                let snap = self
                    .datadir
                    .parent()
                    .unwrap()
                    .join(format!(".btm-snapshots/{name}@{h}"));
                sh("btrfs", &["subvolume", "snapshot", &s(&snap), &s(into)]).unwrap();
            }
        }
    }
}

/// Waits until `h` is the newest durable height.
fn wait_durable(setup: &Setup, h: u64, hook_out: &Path) {
    let t0 = Instant::now();
    while setup.heights().last() != Some(&h) {
        assert!(
            t0.elapsed() < Duration::from_secs(60),
            "height {h} never became durable; newest is {:?}; hook said: {}",
            setup.heights().last(),
            tail(hook_out)
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn litecoind_regtest_ebpf_on_ext4() {
    litecoind_end_to_end("ext4");
}

#[test]
fn litecoind_regtest_btrfs_mode() {
    litecoind_end_to_end("btrfs");
}

/// On "ext4": the eBPF tracker and the log. On "btrfs": `--mode btrfs` snapshots.
fn litecoind_end_to_end(fs: &str) {
    let what = format!("litecoind end to end on {fs}");
    if !can_run(&what) {
        return;
    }
    if !have_tool("litecoind") || !have_tool("litecoin-cli") {
        skip(&what, "litecoind not installed (apt-get install litecoind)");
        return;
    }
    if fs == "btrfs" && !have_tool("btrfs") {
        skip(&what, "btrfs-progs not installed");
        return;
    }
    let t_start = Instant::now();
    // Drop order (reverse of declaration): nodes, then the agent, then the volume.
    let vol = LoopFs::new(fs, 1024).unwrap();
    let work = tempfile::Builder::new()
        .prefix("btm-ltc-")
        .tempdir_in(scratch())
        .unwrap();
    let w = work.path();
    let (sock, hook_out, pause) = (w.join("agent.sock"), w.join("notify.log"), w.join("pause"));
    let setup = if fs == "btrfs" {
        let datadir = vol.path("chain");
        sh("btrfs", &["subvolume", "create", &s(&datadir)]).unwrap();
        Setup {
            store: Store::Btrfs,
            datadir,
            sock,
        }
    } else {
        Setup {
            store: Store::Log(w.join("log")),
            datadir: vol.mnt.clone(),
            sock,
        }
    };
    let dd = setup.datadir.clone();
    let _agent = start_agent(&setup.run_args(), &setup.sock, &w.join("agent.log"));

    // The node runs the hook for every new tip; while `pause` exists the hook only notes the
    // block in `paused`, which leaves a gap in the log (as a misconfigured hook would).
    let paused = w.join("paused.log");
    let hook = format!(
        "if [ -e {pause} ]; then echo %s >>{paused}; else {agent} notify --socket {sock} \
         --bitcoin-rpc http://127.0.0.1:{RPCPORT} --rpc-cookie {dd}/regtest/.cookie --flush \
         --block-hash %s >>{out} 2>&1; fi",
        pause = pause.display(),
        paused = paused.display(),
        agent = agent_bin().display(),
        sock = setup.sock.display(),
        dd = dd.display(),
        out = hook_out.display(),
    );
    let node = Node::start(&dd, Some(&hook), &w.join("node.out"));

    node.cli(&["createwallet", "w"]);
    let mine_to = node.cli(&["getnewaddress"]);
    let pay_to = node.cli(&["getnewaddress"]);
    let mut recorded: BTreeMap<u64, String> = BTreeMap::new();
    // One block, its hook cuts it, and only then the next: each cut holds exactly that height.
    let mine_one = |recorded: &mut BTreeMap<u64, String>, cut: bool| {
        node.cli(&["generatetoaddress", "1", &mine_to]);
        let (h, hash) = node.tip();
        if cut {
            wait_durable(&setup, h, &hook_out);
            assert_eq!(node.tip(), (h, hash.clone()), "node moved during the cut");
            recorded.insert(h, hash);
        }
        h
    };
    // Coinbase outputs mature after 100 blocks.
    for _ in 0..101 {
        mine_one(&mut recorded, true);
    }
    let t_first = t_start.elapsed();
    // Bursts: a few transactions, then three blocks.
    for burst in 0..3 {
        for i in 0..4 {
            let amount = format!("0.{}{}", burst + 1, i + 1);
            node.cli(&["sendtoaddress", &pay_to, &amount]);
        }
        for _ in 0..3 {
            mine_one(&mut recorded, true);
        }
    }
    let before_gap = *recorded.keys().last().unwrap();
    assert_eq!(before_gap, 110);
    // A gap: three blocks with transactions while the hook is paused, then a cut again.
    std::fs::write(&pause, b"").unwrap();
    for _ in 0..3 {
        node.cli(&["sendtoaddress", &pay_to, "0.5"]);
        mine_one(&mut recorded, false);
    }
    // The node runs hooks in the background: the pause ends only once the three paused
    // blocks' hooks have seen it (else a late hook cuts a paused height, as on a slow CI
    // machine).
    let t = Instant::now();
    while std::fs::read_to_string(&paused).map_or(0, |s| s.lines().count()) < 3 {
        assert!(
            t.elapsed() < Duration::from_secs(120),
            "the hooks of the paused blocks did not run"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    std::fs::remove_file(&pause).unwrap();
    node.cli(&["sendtoaddress", &pay_to, "0.25"]);
    let after_gap = mine_one(&mut recorded, true);
    assert_eq!(after_gap, 114);
    // A racing burst: eight blocks at once. Hooks run concurrently while the node keeps going;
    // the tip's hook always cuts, earlier ones may find a later height already cut.
    node.cli(&["sendtoaddress", &pay_to, "1.5"]);
    node.cli(&["generatetoaddress", "8", &mine_to]);
    let (tip, tip_hash) = node.tip();
    assert_eq!(tip, 122);
    wait_durable(&setup, tip, &hook_out);
    recorded.insert(tip, tip_hash.clone());
    // The Bitcoin-style poller reads the same height from the real node.
    let ep = Endpoint::new(
        &node.url(),
        Auth::Cookie(dd.join("regtest/.cookie")),
        Duration::from_secs(10),
    );
    assert_eq!(Source::Bitcoin.latest_height(&ep).unwrap(), tip);
    let chain: Vec<String> = (0..=tip)
        .map(|h| node.cli(&["getblockhash", &h.to_string()]))
        .collect();
    let heights = setup.heights();
    for h in (1..=110).chain([114, 122]) {
        assert!(heights.contains(&h), "height {h} missing from {heights:?}");
    }
    for h in 111..=113 {
        assert!(!heights.contains(&h), "paused height {h} was cut");
    }
    let hooks = std::fs::read_to_string(&hook_out).unwrap();
    assert!(!hooks.contains("error"), "a hook failed:\n{hooks}");
    let t_mined = t_start.elapsed();
    node.stop();

    // Replay a height into a fresh directory and run a second node on it.
    let fresh = if fs == "btrfs" {
        vol.path("replayed")
    } else {
        w.join("replayed")
    };
    setup.replay(100, &fresh);
    let node2 = Node::start(&fresh, None, &w.join("node2.out"));
    assert_eq!(node2.tip(), (100, recorded[&100].clone()));
    node2.stop();

    // Roll back in place through the running agent, restart, compare with the record.
    let rollback = |to: u64, exact: bool| {
        setup.rollback(to, exact);
        let node = Node::start(&dd, None, &w.join("node.out"));
        let got = node.tip();
        node.stop();
        got
    };
    let exact = |h: u64| {
        assert_eq!(
            rollback(h, true),
            (h, recorded[&h].clone()),
            "exact rollback to {h}"
        );
    };
    // Closest lower: 112 lies in the gap, so the newest height at or below it is 110.
    let closest = || {
        let got = rollback(112, false);
        assert_eq!(got, (before_gap, recorded[&before_gap].clone()));
    };
    // An intermediate height of the racing burst (if one was cut) was taken while the node kept
    // mining: crash-consistent at the freeze, so the node restarts at that height or later,
    // on the same chain.
    let mid = heights
        .iter()
        .rev()
        .find(|&&h| h > after_gap && h < tip)
        .copied();
    let burst = || {
        if let Some(mid) = mid {
            let (h, hash) = rollback(mid, true);
            assert!(
                (mid..=tip).contains(&h),
                "burst height {mid} restarted at {h}"
            );
            assert_eq!(hash, chain[h as usize]);
        }
    };
    // A rollback removes the newer heights (like `zfs rollback -r`, in every mode), so the
    // chain can re-reach them and have them cut again: go down.
    exact(tip);
    burst();
    closest();
    exact(105);
    exact(60);
    assert_eq!(setup.heights().last(), Some(&60));
    if let Store::Log(l) = &setup.store {
        agent(&["verify", "--log", &s(l)]);
    }

    let cost = match &setup.store {
        Store::Btrfs => "btrfs snapshots".to_string(),
        Store::Log(_) => {
            let list: Value = serde_json::from_str(&setup.list_json()).unwrap();
            let stored: u64 = list
                .as_array()
                .unwrap()
                .iter()
                .map(|h| h["stored_bytes"].as_u64().unwrap())
                .sum();
            let mut freeze_ms: Vec<f64> = std::fs::read_to_string(w.join("agent.log"))
                .unwrap()
                .lines()
                .filter_map(|l| {
                    let v: Value = serde_json::from_str(l).ok()?;
                    v["fields"]["freeze_ms"].as_f64()
                })
                .collect();
            freeze_ms.sort_by(f64::total_cmp);
            assert!(!freeze_ms.is_empty(), "the agent logged no cut");
            format!(
                "log {} KiB, freeze ms median {:.1} max {:.1}",
                stored >> 10,
                freeze_ms[freeze_ms.len() / 2],
                freeze_ms[freeze_ms.len() - 1]
            )
        }
    };
    eprintln!(
        "litecoind e2e on {fs}: {} heights cut ({cost}); first 101 blocks in {t_first:.1?}, \
         all {tip} in {t_mined:.1?}, total {:.1?}",
        heights.len(),
        t_start.elapsed()
    );
}

// ---- pollers against canned answers over real sockets ----
