//! The pollers of `btm-agent watch`: CometBFT and Ethereum cannot run here, so their parsers
//! are exercised over real sockets against a tiny HTTP server speaking their formats.
use std::{
    io::{BufRead, BufReader, Read, Write},
    net::TcpListener,
    process::{Command, Stdio},
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use btm_agent::heights::{Auth, Endpoint, Source};
use btm_tests::{LoopFs, agent_bin, can_run, free_port, scratch};
use serde_json::{Value, json};

mod cli_support;
use cli_support::*;

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
