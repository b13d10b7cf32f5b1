//! Offsite copies end to end: a real S3-compatible server (moto, from the project's setup) on
//! loopback behind a proxy that can "die" mid-upload, a real agent cutting 50 heights of a
//! loop-mounted ext4 volume, and restores compared with the tree at cut time.
mod offsite_support;

use std::{
    net::TcpStream,
    path::Path,
    process::{Command, Stdio},
    sync::atomic::Ordering,
    time::{Duration, Instant},
};

use btm_agent::treehash::hash_tree;
use btm_tests::{LoopFs, Rng, Running, can_run, scratch, skip, snapshot_via, start_agent};
use offsite_support::{BUCKET, Cli, Moto, Proxy, cut_heights, downloaded, free_port, python};

#[test]
fn s3_push_survives_a_dying_server_restores_and_detects_damage() {
    if !can_run("offsite") {
        return;
    }
    let Some(moto) = Moto::start() else { return };
    let proxy = Proxy::start(moto.port);
    let cli = Cli::s3(format!("http://127.0.0.1:{}", proxy.port));
    let remote = format!("s3://{BUCKET}/btm");
    let fs = LoopFs::new("ext4", 256).unwrap();
    let work = tempfile::Builder::new()
        .prefix("btm-offsite-")
        .tempdir_in(scratch())
        .unwrap();
    let log = work.path().join("log");
    let log_s = log.to_str().unwrap();
    let (states, last_ldb, agent) =
        cut_heights(&fs.mnt, &log, &work.path().join("s.sock"), 50, &[]);
    drop(agent);
    let log_bytes: u64 = std::fs::read_dir(&log)
        .unwrap()
        .map(|e| e.unwrap().metadata().unwrap().len())
        .sum();

    // The server dies a third of the way into the first push.
    proxy.kill_after.store(log_bytes / 3, Ordering::SeqCst);
    let push = [
        "push",
        "--log",
        log_s,
        "--remote",
        &remote,
        "--remote-name",
        "node1",
        "--tag",
        "nightly",
        "--meta",
        r#"{"chain":"ltc-regtest"}"#,
    ];
    let e = cli.run(&push).unwrap_err();
    assert!(
        proxy.down.load(Ordering::SeqCst),
        "the proxy never went down"
    );
    assert!(e.contains("run push again to resume"), "{e}");
    println!("interrupted push: {e}");
    proxy.revive();
    // What the interrupted push published restores exactly: nothing is half there.
    let partial: Vec<u64> = cli
        .json(&["list", "--remote", &remote])
        .as_array()
        .unwrap()
        .iter()
        .map(|x| x["height"].as_u64().unwrap())
        .collect();
    println!("published before the server died: {partial:?}");
    assert!(partial.len() < 50, "{partial:?}");
    if let Some(&k) = partial.last() {
        assert_eq!(partial, (1..=k).collect::<Vec<_>>());
        let into = work.path().join("partial");
        cli.replay(&remote, k, &into).unwrap();
        assert_eq!(
            hash_tree(&into).unwrap(),
            states[k as usize - 1].1,
            "partial height {k}"
        );
    }
    let forwarded_first = proxy.forwarded.swap(0, Ordering::SeqCst);
    let rep = cli.json(&push);
    println!("resumed push: {rep}");
    assert_eq!(rep["newest_height"], 50);
    let present =
        rep["objects_present"].as_u64().unwrap() + rep["records_present"].as_u64().unwrap();
    assert!(
        present > 0,
        "the resumed push uploaded everything again: {rep}"
    );
    assert!(
        proxy.forwarded.load(Ordering::SeqCst) < log_bytes,
        "resume sent {} bytes for a {log_bytes}-byte log (first attempt sent {forwarded_first})",
        proxy.forwarded.load(Ordering::SeqCst)
    );
    // A second push finds nothing to do.
    let again = cli.json(&push);
    assert_eq!(again["records_uploaded"], 0, "{again}");
    assert_eq!(again["objects_uploaded"], 0, "{again}");

    let listed = cli.json(&["list", "--remote", &remote, "--tag", "nightly"]);
    let hs: Vec<u64> = listed
        .as_array()
        .unwrap()
        .iter()
        .map(|x| x["height"].as_u64().unwrap())
        .collect();
    assert_eq!(hs, (1..=50).collect::<Vec<_>>());
    assert_eq!(listed[0]["meta"]["chain"], "ltc-regtest");
    assert!(
        cli.json(&["list", "--remote", &remote, "--tag", "weekly"])
            .as_array()
            .unwrap()
            .is_empty()
    );

    // Restores into empty directories match the tree at cut time.
    let mut full_50 = 0;
    for h in [1u64, 17, 33, 50] {
        let into = work.path().join(format!("empty-{h}"));
        let out = cli.replay(&remote, h, &into).unwrap();
        assert_eq!(
            hash_tree(&into).unwrap(),
            states[h as usize - 1].1,
            "height {h}"
        );
        if h == 50 {
            full_50 = downloaded(&out);
        }
    }
    // A stale directory (height 17) brought to 50 downloads only what differs.
    let stale = work.path().join("empty-17");
    let out = cli.replay(&remote, 50, &stale).unwrap();
    assert_eq!(hash_tree(&stale).unwrap(), states[49].1, "stale 17 -> 50");
    assert!(
        downloaded(&out) < full_50,
        "stale restore downloaded {} objects, a full one {full_50}",
        downloaded(&out)
    );
    // Backwards too (50 -> 33, files removed and rewritten).
    cli.replay(&remote, 33, &stale).unwrap();
    assert_eq!(hash_tree(&stale).unwrap(), states[32].1, "50 -> 33");
    let e = cli.replay(&remote, 51, &stale).unwrap_err();
    assert!(e.contains("51"), "{e}");

    // Damage: one payload (the ldb file written at height 50) inside its pack ...
    let h = blake3::hash(&last_ldb).to_hex().to_string();
    let pack = moto.corrupt_containing("btm/packs/", &last_ldb[1000..1064]);
    assert!(
        pack.starts_with("btm/packs/"),
        "no pack holds the ldb file: {pack:?}"
    );
    let e = cli
        .replay(&remote, 50, &work.path().join("after-damage"))
        .unwrap_err();
    let name = pack.rsplit('/').next().unwrap();
    assert!(
        e.contains("damaged") && e.contains(name) && e.contains(&h),
        "{e}"
    );
    // ... and a record object (height 49's: a chain is checked whole).
    let rec = listed[48]["record"].as_str().unwrap().to_string();
    moto.corrupt(&format!("btm/records/{}/{rec}", &rec[..2]));
    let e = cli
        .replay(&remote, 50, &work.path().join("after-damage2"))
        .unwrap_err();
    assert!(e.contains("record object") && e.contains("damaged"), "{e}");
    // verify --remote finds both without the log (the pack only when its data is read) and
    // exits 65 (damage).
    let check = ["verify", "--remote", &remote, "--remote-name", "node1"];
    let data = [&check[..], &["--read-data-subset", "100%"]].concat();
    let out = cli.command(&data).output().unwrap();
    let (stdout, stderr) = (
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
    );
    assert_eq!(out.status.code(), Some(65), "{stdout}{stderr}");
    assert!(
        stdout.contains(name) && stdout.contains("record object"),
        "{stdout}"
    );
    assert!(stderr.contains("push --verify"), "{stderr}");
    // push --verify finds both and repairs them from the log.
    let mut args = push.to_vec();
    args.push("--verify");
    let rep = cli.json(&args);
    assert_eq!(rep["repaired"], 2, "{rep}");
    let into = work.path().join("repaired");
    cli.replay(&remote, 50, &into).unwrap();
    assert_eq!(hash_tree(&into).unwrap(), states[49].1, "after repair");
    let v = cli.json(&data);
    assert_eq!(v["problems"].as_array().map(Vec::len), Some(0), "{v}");
    assert_eq!(v["payloads_read"], v["payloads"], "{v}");
}

#[test]
fn run_ships_heights_retention_and_prune_apply_remotely() {
    if !can_run("offsite") {
        return;
    }
    let fs = LoopFs::new("ext4", 256).unwrap();
    let work = tempfile::Builder::new()
        .prefix("btm-offsite-")
        .tempdir_in(scratch())
        .unwrap();
    let cli = Cli { env: vec![] };
    let store = work.path().join("store");
    let remote = format!("file://{}", store.display());
    let log = work.path().join("log");
    let log_s = log.to_str().unwrap();
    let (states, _, mut agent) = cut_heights(
        &fs.mnt,
        &log,
        &work.path().join("s.sock"),
        12,
        &[
            "--remote",
            &remote,
            "--remote-name",
            "node1",
            "--remote-tag",
            "live",
            "--cap",
            "4",
            "--compact-min-bytes",
            "0",
        ],
    );
    // Shipping is asynchronous: wait until the remote mirrors the log's kept heights.
    let local = |cli: &Cli| -> Vec<u64> {
        // The agent compacts after cuts (readers wait for it).
        let out = loop {
            match cli.run(&["list", "--log", log_s, "--json"]) {
                Ok(o) => break o,
                Err(e) if e.contains("being compacted") => {
                    std::thread::sleep(Duration::from_millis(100))
                }
                Err(e) => panic!("list: {e}"),
            }
        };
        serde_json::from_str::<serde_json::Value>(&out)
            .unwrap()
            .as_array()
            .unwrap()
            .iter()
            .map(|x| x["height"].as_u64().unwrap())
            .collect()
    };
    let remote_heights = |cli: &Cli| -> Vec<u64> {
        cli.json(&["list", "--remote", &remote])
            .as_array()
            .unwrap()
            .iter()
            .map(|x| x["height"].as_u64().unwrap())
            .collect()
    };
    let caught_up = |last: u64| {
        let t0 = Instant::now();
        loop {
            let (l, r) = (local(&cli), remote_heights(&cli));
            if l == r && l.last() == Some(&last) {
                return l;
            }
            assert!(
                t0.elapsed() < Duration::from_secs(60),
                "remote {r:?} never caught up with the log {l:?}"
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    };
    let kept = caught_up(12);
    // A rollback removes newer heights from the log, and so from the remote; a new height
    // cut after it (same number, other content) replaces the old one there too.
    let sock = work.path().join("s.sock");
    let sock_s = sock.to_str().unwrap();
    let back = kept[kept.len() - 2];
    cli.run(&[
        "rollback",
        "-p",
        fs.mnt.to_str().unwrap(),
        "--log",
        log_s,
        "--to",
        &back.to_string(),
        "--exact",
        "--socket",
        sock_s,
    ])
    .unwrap();
    caught_up(back);
    std::fs::write(fs.mnt.join("after-rollback"), b"new branch").unwrap();
    let new_tree = hash_tree(&fs.mnt).unwrap();
    snapshot_via(Path::new(sock_s), 12);
    caught_up(12);
    let into = work.path().join("new12");
    cli.replay(&remote, 12, &into).unwrap();
    assert_eq!(
        hash_tree(&into).unwrap(),
        new_tree,
        "height 12 after the rollback"
    );
    let mut states = states;
    states[11].1 = new_tree;
    let kept = local(&cli);
    assert_eq!(kept.len(), 4, "cap 4 keeps 4 heights: {kept:?}");
    assert_eq!(agent.terminate().code(), Some(0));
    // Whatever compaction the agent left (postponed while a push read the log) is done now,
    // and pushed: the remote's chain no longer holds the dropped records.
    cli.run(&["compact", "--log", log_s]).unwrap();
    cli.json(&[
        "push",
        "--log",
        log_s,
        "--remote",
        &remote,
        "--remote-name",
        "node1",
    ]);

    // Retention removed pointers; compaction rewrote records; prune frees what nothing reaches.
    // Push and prune keep out of each other's way (a push could link an object prune deletes).
    let locks = store.join("locks");
    std::fs::create_dir_all(&locks).unwrap();
    std::fs::write(locks.join("push-elsewhere.json"), b"{}").unwrap();
    let e = cli
        .run(&["prune", "--remote", &remote, "--grace", "0"])
        .unwrap_err();
    assert!(e.contains("pushes are running"), "{e}");
    std::fs::remove_file(locks.join("push-elsewhere.json")).unwrap();
    std::fs::write(locks.join("prune-elsewhere.json"), b"{}").unwrap();
    let e = cli
        .run(&[
            "push",
            "--log",
            log_s,
            "--remote",
            &remote,
            "--remote-name",
            "node1",
        ])
        .unwrap_err();
    assert!(e.contains("a prune is running"), "{e}");
    std::fs::remove_file(locks.join("prune-elsewhere.json")).unwrap();
    let dry = cli.json(&["prune", "--remote", &remote, "--grace", "0", "--dry-run"]);
    let freed = dry["objects_deleted"].as_u64().unwrap() + dry["records_deleted"].as_u64().unwrap();
    assert!(freed > 0, "nothing to prune after retention: {dry}");
    let rep = cli.json(&["prune", "--remote", &remote, "--grace", "0"]);
    assert_eq!(rep["objects_deleted"], dry["objects_deleted"], "{rep}");
    let again = cli.json(&["prune", "--remote", &remote, "--grace", "0"]);
    assert_eq!(again["objects_deleted"], 0, "{again}");
    let left: Vec<_> = std::fs::read_dir(&locks).unwrap().collect();
    assert!(left.is_empty(), "locks left behind: {left:?}");
    for h in &kept {
        let into = work.path().join(format!("r{h}"));
        cli.replay(&remote, *h, &into).unwrap();
        assert_eq!(
            hash_tree(&into).unwrap(),
            states[*h as usize - 1].1,
            "height {h} after prune"
        );
    }

    // Another log may not push under a name it does not own ...
    let copy = work.path().join("copy");
    assert!(
        Command::new("cp")
            .args(["-a", log_s, copy.to_str().unwrap()])
            .status()
            .unwrap()
            .success()
    );
    std::fs::remove_file(copy.join("remote-id")).unwrap();
    let copy_s = copy.to_str().unwrap();
    let e = cli
        .run(&[
            "push",
            "--log",
            copy_s,
            "--remote",
            &remote,
            "--remote-name",
            "node1",
        ])
        .unwrap_err();
    assert!(e.contains("belongs to another log"), "{e}");
    // ... under its own name an identical log shares every record object ...
    let rep = cli.json(&[
        "push",
        "--log",
        copy_s,
        "--remote",
        &remote,
        "--remote-name",
        "copy",
    ]);
    assert_eq!(rep["records_uploaded"], 0, "{rep}");
    assert_eq!(rep["objects_uploaded"], 0, "{rep}");
    assert_eq!(rep["pointers_written"], 4, "{rep}");
    // A log cut far back (here: truncated to its first height) does not take the offsite copy
    // with it unless the push says so.
    let first = kept[0];
    btm_agent::log::Log::open_append(&copy)
        .unwrap()
        .truncate_after(first)
        .unwrap();
    let copy_push = [
        "push",
        "--log",
        copy_s,
        "--remote",
        &remote,
        "--remote-name",
        "copy",
    ];
    let e = cli.run(&copy_push).unwrap_err();
    assert!(
        e.contains("would remove 3 of the 4 heights") && e.contains("--allow-removals"),
        "{e}"
    );
    let n = |cli: &Cli| {
        cli.json(&["list", "--remote", &remote, "--remote-name", "copy"])
            .as_array()
            .unwrap()
            .len()
    };
    assert_eq!(n(&cli), 4, "the refused push changed the remote");
    let mut allowed = copy_push.to_vec();
    allowed.push("--allow-removals");
    cli.run(&allowed).unwrap();
    assert_eq!(n(&cli), 1);
    // ... and another node's volume holding a file node1 has.
    let fs2 = LoopFs::new("ext4", 128).unwrap();
    let shared = std::fs::read(fs.mnt.join("ldb/000007.ldb")).unwrap();
    std::fs::write(fs2.mnt.join("same.ldb"), &shared).unwrap();
    std::fs::write(fs2.mnt.join("own.dat"), Rng(99).bytes(200_000)).unwrap();
    let log2 = work.path().join("log2");
    let sock2 = work.path().join("s2.sock");
    let mut agent2 = start_agent(&fs2.mnt, &log2, &sock2, &[]);
    snapshot_via(&sock2, 1);
    assert_eq!(agent2.terminate().code(), Some(0));
    let rep = cli.json(&[
        "push",
        "--log",
        log2.to_str().unwrap(),
        "--remote",
        &remote,
        "--remote-name",
        "node2",
    ]);
    // Packs (layout 3) do not dedup payloads across volumes (a push asks the store nothing
    // per payload): node2's bytes go up in its own pack, one for its one height.
    assert_eq!(rep["objects_present"], 0, "{rep}");
    assert_eq!(rep["packs_uploaded"], 1, "{rep}");
    assert!(
        rep["bytes_uploaded"].as_u64().unwrap() >= shared.len() as u64 + 200_000,
        "{rep}"
    );
    let e = cli
        .run(&[
            "replay",
            "--remote",
            &remote,
            "--into",
            work.path().join("x").to_str().unwrap(),
        ])
        .unwrap_err();
    assert!(
        e.contains("several volumes") && e.contains("--remote-name"),
        "{e}"
    );
}

/// The Azure blob emulator (Azurite) on loopback, persisting to `dir`: it can be killed and
/// started again on the same data.
struct Azurite {
    proc: Option<Running>,
    port: u16,
    dir: std::path::PathBuf,
}

const AZ_CONTAINER: &str = "btm";
/// The emulator's well-known development account.
const AZ_CONN: &str = "DefaultEndpointsProtocol=http;AccountName=devstoreaccount1;AccountKey=\
    Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw==;";

impl Azurite {
    fn start(dir: &Path) -> Option<Azurite> {
        let ok = Command::new("azurite-blob")
            .arg("--version")
            .output()
            .is_ok_and(|o| o.status.success())
            && Command::new("python3")
                .args(["-c", "import azure.storage.blob"])
                .output()
                .is_ok_and(|o| o.status.success());
        if !ok {
            skip(
                "offsite az://",
                "azurite or azure-storage-blob is not installed (cargo xtask setup installs them)",
            );
            return None;
        }
        let mut a = Azurite {
            proc: None,
            port: free_port(),
            dir: dir.to_path_buf(),
        };
        a.restart();
        let script = format!(
            "from azure.storage.blob import BlobServiceClient\n\
             BlobServiceClient.from_connection_string('{AZ_CONN}BlobEndpoint=http://127.0.0.1:{}/devstoreaccount1;')\
             .create_container('{AZ_CONTAINER}')\n",
            a.port
        );
        python(&script);
        Some(a)
    }

    fn restart(&mut self) {
        self.proc = Some(Running::new(
            Command::new("azurite-blob")
                .args(["--blobHost", "127.0.0.1", "--blobPort"])
                .arg(self.port.to_string())
                .arg("--location")
                .arg(&self.dir)
                .args([
                    "--disableTelemetry",
                    "--silent",
                    "--skipApiVersionCheck",
                    "--loose",
                ])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .unwrap(),
        ));
        let t0 = Instant::now();
        while TcpStream::connect(("127.0.0.1", self.port)).is_err() {
            assert!(
                t0.elapsed() < Duration::from_secs(60),
                "azurite did not start"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Stops the server mid-request (SIGTERM: requests in flight are cut, and Azurite saves
    /// its metadata on the way down; after SIGKILL it loses even the container, so nothing
    /// of a restart would be left to resume).
    fn kill(&mut self) {
        if let Some(mut p) = self.proc.take() {
            p.terminate();
        }
    }

    /// The agent's CLI pointed at this emulator.
    fn cli(&self) -> Cli {
        Cli {
            env: vec![
                ("AZURE_STORAGE_USE_EMULATOR", "true".into()),
                (
                    "AZURITE_BLOB_STORAGE_URL",
                    format!("http://127.0.0.1:{}", self.port),
                ),
            ],
        }
    }
}

#[test]
fn azure_push_survives_killing_the_server_and_restores() {
    if !can_run("offsite az://") {
        return;
    }
    let work = tempfile::Builder::new()
        .prefix("btm-offsite-az-")
        .tempdir_in(scratch())
        .unwrap();
    let Some(mut az) = Azurite::start(&work.path().join("azurite")) else {
        return;
    };
    let fs = LoopFs::new("ext4", 256).unwrap();
    let log = work.path().join("log");
    let log_s = log.to_str().unwrap();
    let (states, _, agent) = cut_heights(&fs.mnt, &log, &work.path().join("s.sock"), 20, &[]);
    drop(agent);
    let remote = format!("az://{AZ_CONTAINER}/btm");
    let push = ["push", "--log", log_s, "--remote", &remote, "--json"];
    // Stop the server for real while the push is uploading.
    let mut child = az
        .cli()
        .command(&push[..push.len() - 1])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let blobs = work.path().join("azurite");
    let t0 = Instant::now();
    // Wait until some payload data has reached the server's disk, then kill it.
    while btm_agent_dir_bytes(&blobs) < 2 << 20 {
        if child.try_wait().unwrap().is_some() || t0.elapsed() > Duration::from_secs(60) {
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    az.kill();
    let out = child.wait_with_output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    println!("push while the server died: {} {err}", out.status);
    assert!(
        !out.status.success(),
        "the push finished before the kill; raise the data size"
    );
    assert!(err.contains("run push again to resume"), "{err}");
    az.restart();
    // Resume, then scrub: `push --verify` reads everything back and finds nothing to repair.
    let rep: serde_json::Value = serde_json::from_str(&az.cli().run(&push).unwrap()).unwrap();
    println!("resumed: {rep}");
    assert_eq!(rep["newest_height"], 20);
    let mut verify = push.to_vec();
    verify.push("--verify");
    let rep: serde_json::Value = serde_json::from_str(&az.cli().run(&verify).unwrap()).unwrap();
    println!("verified: {rep}");
    assert_eq!(rep["repaired"], 0, "{rep}");
    assert_eq!(rep["objects_uploaded"], 0, "{rep}");
    for h in [1u64, 10, 20] {
        let into = work.path().join(format!("az-{h}"));
        az.cli()
            .run(&[
                "replay",
                "--remote",
                &remote,
                "--to",
                &h.to_string(),
                "--exact",
                "--into",
                into.to_str().unwrap(),
            ])
            .unwrap();
        assert_eq!(
            hash_tree(&into).unwrap(),
            states[h as usize - 1].1,
            "az height {h}"
        );
    }
}

fn btm_agent_dir_bytes(dir: &Path) -> u64 {
    let Ok(rd) = std::fs::read_dir(dir) else {
        return 0;
    };
    rd.flatten()
        .map(|e| match e.metadata() {
            Ok(m) if m.is_dir() => btm_agent_dir_bytes(&e.path()),
            Ok(m) => m.len(),
            Err(_) => 0,
        })
        .sum()
}
