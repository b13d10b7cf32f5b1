//! What the offsite end-to-end tests share: the S3 server (moto) and a proxy that can "die" in
//! front of it, the agent's CLI pointed at a store, and a volume cut through 50 heights of a
//! chain node's life.
#![allow(dead_code)] // each test target uses part of it
use std::{
    io::{Read, Write},
    net::{Shutdown, TcpListener, TcpStream},
    path::Path,
    process::{Command, Stdio},
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use btm_agent::treehash::{TreeHash, hash_tree};
pub use btm_tests::free_port;
use btm_tests::{Rng, Running, agent_bin, outcome, skip, snapshot_via, start_agent};

pub const BUCKET: &str = "btm-offsite";

/// Runs a python script (the servers' own clients do what object_store cannot: create buckets
/// and containers, damage objects); returns its stdout.
pub fn python(script: &str) -> String {
    let out = Command::new("python3")
        .args(["-c", script])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "python: {}\n{script}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// moto's S3 server on loopback, stopped when dropped.
pub struct Moto {
    pub _proc: Running,
    pub port: u16,
}

impl Moto {
    pub fn start() -> Option<Moto> {
        let ok = Command::new("python3")
            .args(["-c", "import moto.server, boto3"])
            .output()
            .is_ok_and(|o| o.status.success());
        if !ok {
            skip(
                "offsite",
                "moto[server] is not installed (cargo xtask setup installs it)",
            );
            return None;
        }
        let port = free_port();
        let proc = Running::new(
            Command::new("python3")
                .args(["-m", "moto.server", "-H", "127.0.0.1", "-p"])
                .arg(port.to_string())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .unwrap(),
        );
        let t0 = Instant::now();
        while TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(t0.elapsed() < Duration::from_secs(60), "moto did not start");
            std::thread::sleep(Duration::from_millis(100));
        }
        let m = Moto { _proc: proc, port };
        m.boto(&format!("s3.create_bucket(Bucket='{BUCKET}')"));
        Some(m)
    }

    /// Runs python with `s3` a boto3 client of this server; returns stdout.
    pub fn boto(&self, code: &str) -> String {
        let script = format!(
            "import boto3\ns3 = boto3.client('s3', endpoint_url='http://127.0.0.1:{}', \
             aws_access_key_id='test', aws_secret_access_key='test', region_name='us-east-1')\n{code}\n",
            self.port
        );
        python(&script)
    }

    /// Flips one byte of `needle` inside whichever object under `prefix` holds it (a payload
    /// inside a pack); returns that object's key.
    pub fn corrupt_containing(&self, prefix: &str, needle: &[u8]) -> String {
        let hex: String = needle.iter().map(|b| format!("{b:02x}")).collect();
        let script = [
            format!("n = bytes.fromhex('{hex}')"),
            format!(
                "for o in s3.list_objects_v2(Bucket='{BUCKET}', Prefix='{prefix}')['Contents']:"
            ),
            format!(
                "    b = bytearray(s3.get_object(Bucket='{BUCKET}', Key=o['Key'])['Body'].read())"
            ),
            "    i = b.find(n)".into(),
            "    if i >= 0:".into(),
            "        b[i + len(n) // 2] ^= 0xff".into(),
            format!("        s3.put_object(Bucket='{BUCKET}', Key=o['Key'], Body=bytes(b))"),
            "        print(o['Key'])".into(),
            "        break".into(),
        ]
        .join("\n");
        self.boto(&script).trim().to_string()
    }

    /// Flips one byte in the middle of an object, in place on the server.
    pub fn corrupt(&self, key: &str) {
        self.boto(&format!(
            "b = bytearray(s3.get_object(Bucket='{BUCKET}', Key='{key}')['Body'].read())\n\
             b[len(b) // 2] ^= 0xff\n\
             s3.put_object(Bucket='{BUCKET}', Key='{key}', Body=bytes(b))"
        ));
    }
}

/// A TCP proxy in front of the server. Past `kill_after` forwarded request bytes it goes down:
/// every open connection is cut and new ones are closed at once, as if the server died.
pub struct Proxy {
    pub port: u16,
    pub down: Arc<AtomicBool>,
    pub forwarded: Arc<AtomicU64>,
    pub kill_after: Arc<AtomicU64>,
}

impl Proxy {
    pub fn start(upstream: u16) -> Proxy {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = l.local_addr().unwrap().port();
        let down = Arc::new(AtomicBool::new(false));
        let forwarded = Arc::new(AtomicU64::new(0));
        let kill_after = Arc::new(AtomicU64::new(u64::MAX));
        let conns: Arc<Mutex<Vec<TcpStream>>> = Arc::default();
        let (d, f, k) = (down.clone(), forwarded.clone(), kill_after.clone());
        std::thread::spawn(move || {
            for c in l.incoming() {
                let Ok(client) = c else { continue };
                if d.load(Ordering::SeqCst) {
                    let _ = client.shutdown(Shutdown::Both);
                    continue;
                }
                let Ok(server) = TcpStream::connect(("127.0.0.1", upstream)) else {
                    continue;
                };
                conns.lock().unwrap().push(client.try_clone().unwrap());
                conns.lock().unwrap().push(server.try_clone().unwrap());
                let pipe = |mut from: TcpStream, mut to: TcpStream, count: bool| {
                    let (d, f, k, conns) = (d.clone(), f.clone(), k.clone(), conns.clone());
                    std::thread::spawn(move || {
                        let mut buf = vec![0u8; 64 << 10];
                        loop {
                            let n = match from.read(&mut buf) {
                                Ok(0) | Err(_) => break,
                                Ok(n) => n,
                            };
                            if count
                                && f.fetch_add(n as u64, Ordering::SeqCst) + n as u64
                                    > k.load(Ordering::SeqCst)
                                && !d.swap(true, Ordering::SeqCst)
                            {
                                for c in conns.lock().unwrap().drain(..) {
                                    let _ = c.shutdown(Shutdown::Both);
                                }
                            }
                            if d.load(Ordering::SeqCst) || to.write_all(&buf[..n]).is_err() {
                                break;
                            }
                        }
                        let _ = to.shutdown(Shutdown::Both);
                        let _ = from.shutdown(Shutdown::Both);
                    });
                };
                pipe(
                    client.try_clone().unwrap(),
                    server.try_clone().unwrap(),
                    true,
                );
                pipe(server, client, false);
            }
        });
        Proxy {
            port,
            down,
            forwarded,
            kill_after,
        }
    }

    pub fn revive(&self) {
        self.kill_after.store(u64::MAX, Ordering::SeqCst);
        self.down.store(false, Ordering::SeqCst);
    }
}

/// The agent's CLI with the environment that reaches one store.
pub struct Cli {
    pub env: Vec<(&'static str, String)>,
}

impl Cli {
    /// An S3-compatible server at `endpoint` (moto's test credentials).
    pub fn s3(endpoint: String) -> Cli {
        Cli {
            env: vec![
                ("AWS_ENDPOINT_URL", endpoint),
                ("AWS_ACCESS_KEY_ID", "test".into()),
                ("AWS_SECRET_ACCESS_KEY", "test".into()),
                ("AWS_REGION", "us-east-1".into()),
            ],
        }
    }

    /// `btm-agent ARGS` with this store's environment.
    pub fn command(&self, args: &[&str]) -> Command {
        let mut c = Command::new(agent_bin());
        c.args(args)
            .env_remove("BTM_LOG_DIR")
            .env_remove("BTM_REMOTE_KEY_FILE")
            // Fail fast when the server is gone instead of retrying for minutes.
            .env("BTM_REMOTE_RETRY_SECS", "2")
            .envs(self.env.iter().map(|(k, v)| (k, v)));
        c
    }

    pub fn run(&self, args: &[&str]) -> Result<String, String> {
        outcome(self.command(args).output().unwrap())
    }

    pub fn json(&self, args: &[&str]) -> serde_json::Value {
        let mut a = args.to_vec();
        a.push("--json");
        let out = self.run(&a).unwrap_or_else(|e| panic!("{args:?}: {e}"));
        serde_json::from_str(&out).unwrap_or_else(|e| panic!("{args:?}: {e}: {out}"))
    }

    pub fn replay(&self, remote: &str, h: u64, into: &Path) -> Result<String, String> {
        self.run(&[
            "replay",
            "--remote",
            remote,
            "--to",
            &h.to_string(),
            "--exact",
            "--into",
            into.to_str().unwrap(),
        ])
    }
}

/// Objects downloaded, from `replay --remote`'s summary line.
pub fn downloaded(out: &str) -> u64 {
    let w: Vec<&str> = out.split_whitespace().collect();
    let i = w.iter().position(|x| *x == "objects").unwrap();
    w[i - 1].parse().unwrap()
}

/// One height of a chain node's life: blocks appended, state pages rewritten, old ldb files
/// replaced by new ones. Returns the content of the new ldb file, if one was written.
pub fn mutate(vol: &Path, h: u64, rng: &mut Rng) -> Option<Vec<u8>> {
    std::fs::create_dir_all(vol.join("blocks")).unwrap();
    std::fs::create_dir_all(vol.join("ldb")).unwrap();
    let mut blk = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(vol.join(format!("blocks/blk{:05}.dat", h / 10)))
        .unwrap();
    blk.write_all(&rng.bytes(150_000)).unwrap();
    let state = vol.join("chainstate");
    if h == 1 {
        std::fs::write(&state, rng.bytes(1 << 20)).unwrap();
    }
    let f = std::fs::OpenOptions::new()
        .write(true)
        .open(&state)
        .unwrap();
    for _ in 0..8 {
        let page = rng.below(256);
        std::os::unix::fs::FileExt::write_all_at(&f, &rng.bytes(4096), page * 4096).unwrap();
    }
    if h.is_multiple_of(7) || h == 50 {
        if h > 7 {
            let _ = std::fs::remove_file(vol.join(format!("ldb/{:06}.ldb", h.saturating_sub(7))));
        }
        let data = rng.bytes(300_000);
        std::fs::write(vol.join(format!("ldb/{h:06}.ldb")), &data).unwrap();
        return Some(data);
    }
    None
}

/// Runs an agent on `vol` and cuts heights 1..=n, returning the tree at each height and the
/// last ldb file written.
pub fn cut_heights(
    vol: &Path,
    log: &Path,
    sock: &Path,
    n: u64,
    extra: &[&str],
) -> (Vec<(u64, TreeHash)>, Vec<u8>, Running) {
    let agent = start_agent(vol, log, sock, extra);
    let mut rng = Rng(0x5eed_0ff5_17e5);
    let mut states = Vec::new();
    let mut last_ldb = Vec::new();
    for h in 1..=n {
        if let Some(d) = mutate(vol, h, &mut rng) {
            last_ldb = d;
        }
        states.push((h, hash_tree(vol).unwrap()));
        snapshot_via(sock, h);
    }
    (states, last_ldb, agent)
}
