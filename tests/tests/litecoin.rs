//! A real chain node end to end: litecoind in -regtest with its datadir on a loop-mounted ext4
//! volume tracked by the agent, heights delivered per block by `-blocknotify` running
//! `btm-agent notify`. Rolled back (exact and closest lower) and replayed, the node must restart
//! at exactly the recorded height and block hash.
//!
//! Also the pollers of `btm-agent watch`: CometBFT and Ethereum cannot run here, so their
//! parsers are exercised over real sockets against a tiny HTTP server speaking their formats.
use std::{
    collections::BTreeMap,
    io::{BufRead, BufReader, Read, Write},
    net::TcpListener,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use btm_agent::{
    cmd::proto,
    heights::{Auth, Endpoint, Source},
};
use btm_tests::{LoopFs, agent_bin, can_run, have_tool, scratch, sh, skip};
use serde_json::{Value, json};

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A child process killed (and reaped) when the test ends, passing or not.
struct Guard(Option<Child>);

impl Guard {
    /// Waits up to `limit` for the process to exit by itself.
    fn wait_exit(&mut self, limit: Duration) {
        let c = self.0.as_mut().expect("process already gone");
        let t0 = Instant::now();
        while c.try_wait().unwrap().is_none() {
            assert!(t0.elapsed() < limit, "process {} did not exit", c.id());
            std::thread::sleep(Duration::from_millis(50));
        }
        self.0 = None;
    }
}

impl Drop for Guard {
    fn drop(&mut self) {
        if let Some(mut c) = self.0.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

fn start_agent(args: &[String], socket: &Path, out: &Path) -> Guard {
    let child = Command::new(agent_bin())
        .args(args)
        .env_remove("BTM_LOG_DIR")
        .env_remove("BTM_VOLUME")
        .env("BTM_LOG_FORMAT", "json")
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(out).unwrap())
        .spawn()
        .unwrap();
    let g = Guard(Some(child));
    let t0 = Instant::now();
    while proto::call(socket, &proto::Request::Status, Duration::from_secs(5)).is_err() {
        assert!(
            t0.elapsed() < Duration::from_secs(60),
            "agent did not come up: {}",
            std::fs::read_to_string(out).unwrap_or_default()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    g
}

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

fn agent(args: &[&str]) -> String {
    let out = Command::new(agent_bin())
        .args(args)
        .env_remove("BTM_LOG_DIR")
        .env_remove("BTM_VOLUME")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "btm-agent {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Heights in the log, through the CLI a user would use.
fn logged(log: &Path) -> Vec<u64> {
    heights_of(&agent(&["list", "--log", log.to_str().unwrap(), "--json"]))
}

fn heights_of(list_json: &str) -> Vec<u64> {
    let v: Value = serde_json::from_str(list_json).unwrap();
    v.as_array()
        .unwrap()
        .iter()
        .map(|h| h["height"].as_u64().unwrap())
        .collect()
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

fn s(p: &Path) -> String {
    p.to_str().unwrap().to_string()
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

    // The node runs the hook for every new tip; while `pause` exists the hook does nothing,
    // which leaves a gap in the log (as a misconfigured hook would).
    let hook = format!(
        "[ -e {pause} ] || {agent} notify --socket {sock} --bitcoin-rpc http://127.0.0.1:{RPCPORT} \
         --rpc-cookie {dd}/regtest/.cookie --flush --block-hash %s >>{out} 2>&1",
        pause = pause.display(),
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

/// What the fake node saw: method, path, headers (lowercase names), body.
#[derive(Clone, Debug, Default)]
struct Seen {
    method: String,
    path: String,
    headers: Vec<(String, String)>,
    body: String,
}

type Answer = Box<dyn Fn(&Seen) -> (u16, String) + Send + Sync>;

/// A tiny HTTP/1.1 server on 127.0.0.1: answers every request with `answer`, one connection
/// at a time, and records what it saw.
struct FakeNode {
    url: String,
    seen: Arc<Mutex<Vec<Seen>>>,
    stop: Arc<AtomicBool>,
}

impl FakeNode {
    fn start(answer: Answer) -> FakeNode {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{}", l.local_addr().unwrap());
        let seen = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let (seen2, stop2) = (seen.clone(), stop.clone());
        std::thread::spawn(move || {
            for conn in l.incoming() {
                if stop2.load(Ordering::SeqCst) {
                    break;
                }
                let Ok(mut s) = conn else { continue };
                let Some(req) = read_request(&mut s) else {
                    continue;
                };
                let (status, body) = answer(&req);
                seen2.lock().unwrap().push(req);
                let reason = if status == 200 { "OK" } else { "Error" };
                let _ = write!(
                    s,
                    "HTTP/1.1 {status} {reason}\r\nContent-Type: application/json\r\n\
                     Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
                    body.len()
                );
            }
        });
        FakeNode { url, seen, stop }
    }

    fn seen(&self) -> Vec<Seen> {
        self.seen.lock().unwrap().clone()
    }
}

impl Drop for FakeNode {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        let _ = std::net::TcpStream::connect(self.url.trim_start_matches("http://"));
    }
}

fn read_request(s: &mut std::net::TcpStream) -> Option<Seen> {
    s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    let mut r = BufReader::new(s.try_clone().ok()?);
    let mut line = String::new();
    r.read_line(&mut line).ok()?;
    let mut parts = line.split_whitespace();
    let (method, path) = (parts.next()?.to_string(), parts.next()?.to_string());
    let mut headers = Vec::new();
    loop {
        let mut h = String::new();
        r.read_line(&mut h).ok()?;
        let h = h.trim_end();
        if h.is_empty() {
            break;
        }
        let (k, v) = h.split_once(':')?;
        headers.push((k.trim().to_ascii_lowercase(), v.trim().to_string()));
    }
    let len = headers
        .iter()
        .find(|(k, _)| k == "content-length")
        .map_or(0, |(_, v)| v.parse().unwrap_or(0));
    let mut body = vec![0; len];
    r.read_exact(&mut body).ok()?;
    Some(Seen {
        method,
        path,
        headers,
        body: String::from_utf8_lossy(&body).into_owned(),
    })
}

/// A CometBFT v0.38 `/status` answer, as a node sends it.
fn cometbft_status(height: u64) -> String {
    json!({
        "jsonrpc": "2.0",
        "id": -1,
        "result": {
            "node_info": {
                "protocol_version": {"p2p": "8", "block": "11", "app": "0"},
                "id": "5576458aef205977e18fd50b274e9b5d9014525a",
                "listen_addr": "tcp://0.0.0.0:26656",
                "network": "cosmoshub-4",
                "version": "0.38.12",
                "channels": "40202122233038606100",
                "moniker": "node0",
                "other": {"tx_index": "on", "rpc_address": "tcp://127.0.0.1:26657"}
            },
            "sync_info": {
                "latest_block_hash": "50F03C0EAACA8BCA7F9C14189ACE9C05A9A1BBB5268DB63DC6A3C848D1ECFD27",
                "latest_app_hash": "2316CFF7644219F4F15BEE456435F280E2B38955EEA6D4617CCB6D7ABF781C22",
                "latest_block_height": height.to_string(),
                "latest_block_time": "2024-09-10T09:56:46.123456789Z",
                "earliest_block_hash": "1455A0C15AC49BB506992EC85A3CD4D32367E53A087689815E01A524231C3ADF",
                "earliest_app_hash": "E3B0C44298FC1C149AFBF4C8996FB92427AE41E4649B934CA495991B7852B855",
                "earliest_block_height": "1",
                "earliest_block_time": "2019-12-11T16:11:34Z",
                "catching_up": false
            },
            "validator_info": {
                "address": "B00A6323737F321EB0B8D59C6FD497A14B60938A",
                "pub_key": {"type": "tendermint/PubKeyEd25519",
                            "value": "cOQZvh/h9ZioSeUMZB/1Vy1Xo5x2sjrVjlE/qHnYifM="},
                "voting_power": "0"
            }
        }
    })
    .to_string()
}

#[test]
fn cometbft_status_over_http() {
    let fake = FakeNode::start(Box::new(|_| (200, cometbft_status(21_453_120))));
    let ep = Endpoint::new(
        &format!("{}/", fake.url),
        Auth::None,
        Duration::from_secs(5),
    );
    assert_eq!(Source::Cometbft.latest_height(&ep).unwrap(), 21_453_120);
    let seen = fake.seen();
    assert_eq!(
        (seen[0].method.as_str(), seen[0].path.as_str()),
        ("GET", "/status")
    );
}

#[test]
fn ethereum_block_number_over_http() {
    let fake = FakeNode::start(Box::new(|req| {
        let v: Value = serde_json::from_str(&req.body).unwrap_or_default();
        if v["method"] == "eth_blockNumber" {
            (
                200,
                json!({"jsonrpc": "2.0", "id": v["id"], "result": "0x1312d00"}).to_string(),
            )
        } else {
            (
                200,
                json!({"jsonrpc": "2.0", "id": v["id"], "error": {"code": -32601,
                       "message": format!("the method {} does not exist/is not available",
                                          v["method"].as_str().unwrap_or(""))}})
                .to_string(),
            )
        }
    }));
    let ep = Endpoint::new(
        &fake.url,
        Auth::UserPass("u".into(), "p".into()),
        Duration::from_secs(5),
    );
    assert_eq!(Source::Ethereum.latest_height(&ep).unwrap(), 20_000_000);
    let seen = fake.seen();
    assert_eq!(seen[0].method, "POST");
    let body: Value = serde_json::from_str(&seen[0].body).unwrap();
    assert_eq!(
        (body["jsonrpc"].as_str(), body["method"].as_str()),
        (Some("2.0"), Some("eth_blockNumber"))
    );
    assert!(
        seen[0]
            .headers
            .contains(&("authorization".into(), "Basic dTpw".into())),
        "{:?}",
        seen[0].headers
    );
    // A JSON-RPC error is reported with the node's message, not as a height.
    let e = ep.call("eth_nope", json!([])).unwrap_err().to_string();
    assert!(e.contains("does not exist"), "{e}");
}

#[test]
fn unreachable_or_garbage_node_is_a_clear_error() {
    let port = free_port(); // nothing listens there now
    let ep = Endpoint::new(
        &format!("http://127.0.0.1:{port}"),
        Auth::None,
        Duration::from_secs(2),
    );
    let e = format!("{:#}", Source::Ethereum.latest_height(&ep).unwrap_err());
    assert!(
        e.contains("eth_blockNumber") && e.contains(&port.to_string()),
        "{e}"
    );
    let fake = FakeNode::start(Box::new(|_| (503, "<html>warming up</html>".into())));
    let ep = Endpoint::new(&fake.url, Auth::None, Duration::from_secs(2));
    let e = format!("{:#}", Source::Cometbft.latest_height(&ep).unwrap_err());
    assert!(e.contains("503") && e.contains("not JSON"), "{e}");
    let fake = FakeNode::start(Box::new(|_| (401, String::new())));
    let ep = Endpoint::new(&fake.url, Auth::None, Duration::from_secs(2));
    let e = format!("{:#}", Source::Bitcoin.latest_height(&ep).unwrap_err());
    assert!(e.contains("credentials"), "{e}");
}

/// `btm-agent watch --source cometbft` against a fake node whose height the test moves (up,
/// back down, through an outage): every new height is cut once, never a lower one.
#[test]
fn watch_cometbft_cuts_each_new_height() {
    if !can_run("watch --source cometbft") {
        return;
    }
    let vol = LoopFs::new("ext4", 256).unwrap();
    let work = tempfile::Builder::new()
        .prefix("btm-watch-")
        .tempdir_in(scratch())
        .unwrap();
    let (log, sock) = (work.path().join("log"), work.path().join("agent.sock"));
    let run = [
        "run",
        "--volume",
        &s(&vol.mnt),
        "--log",
        &s(&log),
        "--socket",
        &s(&sock),
    ];
    let run: Vec<String> = run.iter().map(|a| a.to_string()).collect();
    let _agent = start_agent(&run, &sock, &work.path().join("agent.log"));
    // 0 means "down": answer 503 with a non-JSON body, as a proxy in front of a node would.
    let height = Arc::new(AtomicU64::new(0));
    let h2 = height.clone();
    let fake = FakeNode::start(Box::new(move |_| match h2.load(Ordering::SeqCst) {
        0 => (503, "<html>503 Service Unavailable</html>".into()),
        h => (200, cometbft_status(h)),
    }));
    let watch = Command::new(agent_bin())
        .args([
            "watch", "--source", "cometbft", "--every", "0.05", "--until", "40",
        ])
        .args(["--url", &fake.url, "--socket", sock.to_str().unwrap()])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut watch = Guard(Some(watch));
    let set = |h: u64| {
        std::fs::write(vol.path("state"), format!("at {h}")).unwrap();
        height.store(h, Ordering::SeqCst);
        std::thread::sleep(Duration::from_millis(400));
    };
    for h in [0, 10, 11, 11, 9, 0, 20, 40] {
        set(h);
    }
    let mut child = watch.0.take().unwrap();
    let t0 = Instant::now();
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        if t0.elapsed() > Duration::from_secs(30) {
            let _ = child.kill();
            panic!("watch did not stop at --until 40");
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let mut err = String::new();
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut err)
        .unwrap();
    assert!(status.success(), "watch failed: {err}");
    assert_eq!(logged(&log), vec![10, 11, 20, 40], "watch said:\n{err}");
    assert!(err.contains("503") && err.contains("retrying"), "{err}");

    // `notify --height` (hooks of nodes that pass a height): cut, already covered, no agent.
    let sock_s = s(&sock);
    let out = agent(&["notify", "--height", "41", "--socket", &sock_s]);
    assert!(out.contains("height 41 durable"), "{out}");
    let out = agent(&["notify", "--height", "30", "--socket", &sock_s]);
    assert!(out.contains("already holds height 41"), "{out}");
    assert_eq!(logged(&log), vec![10, 11, 20, 40, 41]);
    let out = Command::new(agent_bin())
        .args(["notify", "--height", "50", "--socket"])
        .arg(work.path().join("none.sock"))
        .output()
        .unwrap();
    let e = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && e.contains("none.sock"), "{e}");
    drop(fake);
}
