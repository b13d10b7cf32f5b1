//! Operations: the agent's Prometheus endpoint scraped after real cuts, configuration
//! precedence (file < env < flag) through `btm-agent config check`, and the systemd install
//! script in a temporary root.
use std::{
    collections::BTreeMap,
    fs,
    io::{Read, Write},
    net::{TcpListener, TcpStream},
    path::{Path, PathBuf},
    process::{Command, Output, Stdio},
    time::{Duration, Instant},
};

use btm_tests::{LoopFs, Rng, Running, agent_bin, can_run, http_get, prom_samples, scratch};

/// The agent with a clean environment: the runner's BTM_* variables must not leak in.
fn agent() -> Command {
    let mut c = Command::new(agent_bin());
    c.env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default());
    c
}

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .into()
}

fn snapshot(socket: &Path, h: u64) -> Output {
    agent()
        .args([
            "snapshot",
            "--timeout",
            "120",
            "--height",
            &h.to_string(),
            "--socket",
        ])
        .arg(socket)
        .output()
        .unwrap()
}

#[test]
fn metrics_scraped_after_real_cuts() {
    if !can_run("metrics after cuts") {
        return;
    }
    let vol = LoopFs::new("ext4", 256).unwrap();
    let work = tempfile::Builder::new()
        .prefix("btm-ops-")
        .tempdir_in(scratch())
        .unwrap();
    let (log, socket) = (work.path().join("log"), work.path().join("agent.sock"));
    let port = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    // `run` reads its file like `config check` does: the volume from the flag, the rest from it.
    let conf = work.path().join("btm.toml");
    fs::write(
        &conf,
        format!(
            "log = {:?}\nsocket = {:?}\nmetrics_addr = \"127.0.0.1:{port}\"\n",
            log.to_str().unwrap(),
            socket.to_str().unwrap()
        ),
    )
    .unwrap();
    let mut child = agent()
        .args(["run", "--config"])
        .arg(&conf)
        .arg("--volume")
        .arg(&vol.mnt)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    // The endpoint comes up once the tracker is attached and the socket bound.
    let t0 = Instant::now();
    loop {
        if let Ok((200, body)) = http_get(port, "/healthz") {
            assert_eq!(body, "ok\n");
            break;
        }
        if let Some(st) = child.try_wait().unwrap() {
            panic!("agent exited with {st} before serving /healthz");
        }
        assert!(
            t0.elapsed() < Duration::from_secs(60),
            "no /healthz after 60 s"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let agent = Running::new(child);

    let before = prom_samples(&http_get(port, "/metrics").unwrap().1);
    assert_eq!(before["btm_heights_total"], 0.0);
    assert!(!before.contains_key("btm_last_height"), "{before:?}");
    assert_eq!(before["btm_up"], 1.0);

    let mut rng = Rng(0x6f70_7321);
    let heights = [10u64, 11, 12];
    for &h in &heights {
        fs::write(vol.path(&format!("block-{h}")), rng.bytes(300_000)).unwrap();
        let out = snapshot(&socket, h);
        assert!(
            out.status.success(),
            "snapshot {h}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    // A height that does not increase fails and is counted as an error; one already kept is
    // answered as done, and is neither a new height nor an error.
    assert!(!snapshot(&socket, 9).status.success());
    assert!(snapshot(&socket, 11).status.success());

    // A client that connects and says nothing holds up no scrape (the server gives a request
    // 5 s; this scrape waits 3 s at most).
    let _silent = TcpStream::connect(("127.0.0.1", port)).unwrap();
    std::thread::sleep(Duration::from_millis(200));
    let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(3))).unwrap();
    write!(s, "GET /healthz HTTP/1.1\r\nConnection: close\r\n\r\n").unwrap();
    let mut resp = String::new();
    s.read_to_string(&mut resp)
        .expect("a silent client held up the metrics server");
    assert!(resp.starts_with("HTTP/1.1 200"), "{resp}");
    let (status, text) = http_get(port, "/metrics").unwrap();
    assert_eq!(status, 200);
    let m = prom_samples(&text);
    assert_eq!(m["btm_heights_total"], heights.len() as f64, "{text}");
    assert_eq!(m["btm_last_height"], 12.0, "{text}");
    assert_eq!(m["btm_cut_errors_total"], 1.0, "{text}");
    // Each height wrote 300 kB of fresh random data: all of it was read and stored.
    assert!(m["btm_cut_bytes_read_total"] >= 900_000.0, "{text}");
    assert!(m["btm_cut_bytes_stored_total"] >= 900_000.0, "{text}");
    assert_eq!(
        m["btm_freeze_seconds_count"],
        heights.len() as f64,
        "{text}"
    );
    assert_eq!(
        m["btm_freeze_seconds_bucket{le=\"+Inf\"}"],
        heights.len() as f64
    );
    assert!(m["btm_freeze_seconds_sum"] > 0.0, "{text}");
    assert!(m.contains_key("btm_tracker_overflows_total"), "{text}");
    // Every kind of tracker counter, the loss counters included; 300 kB written per height
    // were seen as events.
    for kind in [
        "lost",
        "prog_misses",
        "fault_unresolved",
        "fault_wide",
        "remote_writes",
    ] {
        let key = format!("btm_tracker_events_total{{kind=\"{kind}\"}}");
        assert!(m.contains_key(&key), "{key} missing: {text}");
    }
    assert!(
        m["btm_tracker_events_total{kind=\"events\"}"] > 0.0,
        "{text}"
    );
    // The log holds at least what the cuts stored.
    assert!(
        m["btm_log_bytes"] >= m["btm_cut_bytes_stored_total"],
        "{text}"
    );
    assert_eq!(http_get(port, "/healthz").unwrap().0, 200);
    assert_eq!(http_get(port, "/nope").unwrap().0, 404);
    drop(agent);
    assert!(
        http_get(port, "/healthz").is_err(),
        "endpoint outlived the agent"
    );
}

/// `key -> (value, source)` from `config check`'s output lines `key = value  # source`.
fn effective(out: &Output) -> BTreeMap<String, (String, String)> {
    assert!(
        out.status.success(),
        "config check failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| {
            let (kv, src) = l.split_once("  # ")?;
            let (k, v) = kv.split_once(" = ")?;
            Some((k.to_string(), (v.to_string(), src.to_string())))
        })
        .collect()
}

#[test]
fn config_precedence_file_env_flag() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("btm.toml");
    fs::write(
        &file,
        "volume = \"/chain\"\nlog = \"/from/file\"\nitv = 10\ncap = 100\nalgo = \"fade\"\n\
         socket-mode = \"600\"\nno_freeze = true\n",
    )
    .unwrap();
    let out = agent()
        .args(["config", "check", "--config"])
        .arg(&file)
        .env("BTM_ITV", "20")
        .env("BTM_CAP", "200")
        .args(["--itv", "30"])
        .output()
        .unwrap();
    let e = effective(&out);
    let src = format!("file {}", file.display());
    assert_eq!(e["itv"], ("30".into(), "flag".into()));
    assert_eq!(e["cap"], ("200".into(), "env BTM_CAP".into()));
    assert_eq!(e["algo"], ("\"fade\"".into(), src.clone()));
    assert_eq!(e["log"], ("\"/from/file\"".into(), src.clone()));
    assert_eq!(e["socket_mode"], ("\"600\"".into(), src.clone()));
    assert_eq!(e["no_freeze"], ("true".into(), src));
    assert_eq!(
        e["socket"],
        ("\"/run/btm/btm.sock\"".into(), "default".into())
    );

    // The printed configuration is itself a valid file that gives the same values.
    let printed = dir.path().join("printed.toml");
    let body: String = String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter(|l| !l.starts_with('#'))
        .map(|l| format!("{}\n", l.split_once("  # ").map_or(l, |(kv, _)| kv)))
        .collect();
    fs::write(&printed, body).unwrap();
    let again = effective(
        &agent()
            .args(["config", "check", "--config"])
            .arg(&printed)
            .output()
            .unwrap(),
    );
    assert_eq!(again["itv"].0, "30");
    assert_eq!(again["cap"].0, "200");
    assert_eq!(again["algo"].0, "\"fade\"");

    // Errors name the file and the key.
    for (bad, key, why) in [
        ("volume = \"/c\"\nitv = \"ten\"\n", "itv", "invalid value"),
        (
            "volume = \"/c\"\nlog = \"/l\"\nvolumes = 3\n",
            "volumes",
            "unknown key",
        ),
        (
            "volume = \"/c\"\nlog = \"/l\"\nalgo = \"newest\"\n",
            "algo",
            "invalid value",
        ),
        (
            "volume = \"/c\"\nlog = \"/l\"\ncap = [1]\n",
            "cap",
            "expected a string",
        ),
        (
            "volume = \"/c\"\nlog = \"/l\"\nmetrics_addr = \"x:y\"\n",
            "metrics_addr",
            "not an address",
        ),
    ] {
        fs::write(&file, bad).unwrap();
        let out = agent()
            .args(["config", "check", "--config"])
            .arg(&file)
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{bad} was accepted");
        assert!(
            err.contains(&file.display().to_string())
                && err.contains(&format!("`{key}`"))
                && err.contains(why),
            "{bad}: {err}"
        );
    }
    // Checks across keys name the key and where its value came from.
    fs::write(&file, "volume = \"/c\"\nlog = \"/l\"\n").unwrap();
    let out = agent()
        .args(["config", "check", "--config"])
        .arg(&file)
        .env("BTM_CAP", "5000")
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && err.contains("cap = 5000 (env BTM_CAP)"),
        "{err}"
    );
}

#[test]
fn install_script_in_temp_root() {
    let root = tempfile::tempdir().unwrap();
    let r = root.path();
    let install = |extra: &[&str]| {
        Command::new("bash")
            .arg(repo().join("deploy/systemd/install.sh"))
            .arg("--root")
            .arg(r)
            .arg("--binary")
            .arg(agent_bin())
            .args(extra)
            .env_remove("BTM_CONFIG")
            .output()
            .unwrap()
    };
    let flags = [
        "--snapshot-volume",
        "/srv/chain",
        "--log",
        "/backup/btm",
        "--snapshot-itv",
        "10",
        "--snapshot-cap=500",
        "--snapshot-mode",
        "ebpf",
        "--snapshot-algo",
        "fade",
        "--metrics-addr",
        ":9100",
    ];
    let out = install(&flags);
    assert!(
        out.status.success(),
        "install.sh: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let unit = fs::read_to_string(r.join("etc/systemd/system/btm-agent.service")).unwrap();
    for line in [
        "Restart=on-failure",
        "ExecStart=/usr/local/bin/btm-agent run",
        "EnvironmentFile=-/etc/btm/btm.env",
        "WantedBy=multi-user.target",
    ] {
        assert!(
            unit.lines().any(|l| l == line),
            "unit lacks {line}:\n{unit}"
        );
    }
    // The template unit too, both naming this install's binary (the .deb's is in /usr/bin).
    let template = fs::read_to_string(r.join("etc/systemd/system/btm-agent@.service")).unwrap();
    assert!(
        template
            .lines()
            .any(|l| l == "ExecStart=/usr/local/bin/btm-agent run"),
        "{template}"
    );
    assert!(!unit.contains("/usr/bin/") && !template.contains("/usr/bin/"));
    // The sandboxed unit may write the volume and the log, once they are mounted.
    let dropin =
        fs::read_to_string(r.join("etc/systemd/system/btm-agent.service.d/btm-paths.conf"))
            .unwrap();
    for line in [
        "RequiresMountsFor=\"/srv/chain\" \"/backup/btm\"",
        "ReadWritePaths=\"/srv/chain\" \"/backup/btm\"",
    ] {
        assert!(
            dropin.lines().any(|l| l == line),
            "drop-in lacks {line}:\n{dropin}"
        );
    }
    let bin = r.join("usr/local/bin/btm-agent");
    assert_eq!(fs::read(&bin).unwrap(), fs::read(agent_bin()).unwrap());
    let env = fs::read_to_string(r.join("etc/btm/btm.env")).unwrap();
    assert!(
        env.lines().any(|l| l == "BTM_CONFIG=/etc/btm/btm.toml"),
        "{env}"
    );
    // Offsite credentials go there: nobody but root may read it.
    use std::os::unix::fs::PermissionsExt;
    let mode = fs::metadata(r.join("etc/btm/btm.env"))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600, "btm.env mode {mode:o}");

    // The installed binary reads the written file back with the flags' values.
    let conf = r.join("etc/btm/btm.toml");
    let check = || {
        let mut c = Command::new(&bin);
        c.env_clear()
            .args(["config", "check", "--config"])
            .arg(&conf)
            .output()
            .unwrap()
    };
    let e = effective(&check());
    let src = format!("file {}", conf.display());
    for (k, v) in [
        ("volume", "\"/srv/chain\""),
        ("log", "\"/backup/btm\""),
        ("itv", "10"),
        ("cap", "500"),
        ("mode", "\"ebpf\""),
        ("algo", "\"fade\""),
        ("metrics_addr", "\":9100\""),
    ] {
        assert_eq!(e[k], (v.to_string(), src.clone()), "{k}");
    }

    // A bad value is refused before anything is replaced; a new valid one keeps a backup.
    let before = fs::read_to_string(&conf).unwrap();
    let out = install(&[
        "--snapshot-volume",
        "/srv/chain",
        "--snapshot-algo",
        "newest",
    ]);
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("`algo`"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(fs::read_to_string(&conf).unwrap(), before);
    let mut changed = flags.to_vec();
    changed[5] = "20";
    assert!(install(&changed).status.success());
    assert_eq!(effective(&check())["itv"].0, "20");
    assert_eq!(
        fs::read_to_string(r.join("etc/btm/btm.toml.bak")).unwrap(),
        before
    );
}
