//! The configuration file serves every verb, through the real binary: `list`, `verify`,
//! `replay`, `rollback`, `push`, `prune`, `status` and `snapshot` take the places `run` uses
//! (log, volume, socket; the remote where it is the destination) from `--config FILE` or
//! `BTM_CONFIG`, flags and `BTM_*` variables win, a source given on the command line keeps the
//! file's other sources off, and `config check --json` prints the effective settings.
use std::{
    path::Path,
    process::{Command, Output},
};

use btm_agent::{
    cmd::exit::Code,
    log::{CutRecord, Entry, ExtentBytes, ExtentData, Log, NsOp},
};
use btm_tests::agent_bin;

/// The agent with a clean environment: the runner's BTM_* variables must not leak in.
fn agent(args: &[&str]) -> Command {
    let mut c = Command::new(agent_bin());
    c.env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .args(args);
    c
}

fn out(c: &mut Command) -> Output {
    c.output().unwrap()
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

fn json(o: &Output) -> serde_json::Value {
    assert!(
        o.status.success(),
        "exit {:?}: {}{}",
        o.status.code(),
        text(&o.stdout),
        text(&o.stderr)
    );
    serde_json::from_slice(&o.stdout).unwrap_or_else(|e| panic!("{e}: {}", text(&o.stdout)))
}

/// Heights of `list --json` output (local or remote).
/// `prune --dry-run` with the config file `c`, its report.
fn dry_prune(c: &str) -> serde_json::Value {
    json(&out(&mut agent(&[
        "prune",
        "--config",
        c,
        "--dry-run",
        "--json",
    ])))
}

fn heights(v: &serde_json::Value) -> Vec<u64> {
    v.as_array()
        .unwrap_or_else(|| panic!("not a list: {v}"))
        .iter()
        .map(|h| h["height"].as_u64().unwrap())
        .collect()
}

/// Appends heights `hs` (one 4 KiB file each) to the log at `dir`.
fn append(dir: &Path, hs: &[u64]) {
    let mut log = Log::open_append(dir).unwrap();
    for &h in hs {
        log.append(CutRecord {
            height: h,
            time_unix_ms: h,
            ops: vec![
                NsOp::Put {
                    path: b"f".to_vec(),
                    entry: Entry::File {
                        id: 1,
                        mode: 0o644,
                        uid: 0,
                        gid: 0,
                    },
                },
                NsOp::SetSize { id: 1, size: 4096 },
            ],
            extents: vec![ExtentData {
                id: 1,
                offset: 0,
                bytes: ExtentBytes::Data(vec![h as u8; 4096]),
            }],
        })
        .unwrap();
    }
}

#[test]
fn verbs_take_places_from_the_config_file() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let (log_a, log_b) = (d.join("a"), d.join("b"));
    append(&log_a, &[1, 2]);
    append(&log_b, &[5]);
    let remote = format!("file://{}", d.join("remote").display());
    std::fs::create_dir(d.join("remote")).unwrap();
    let sock = d.join("nobody.sock");
    let vol = d.join("no-such-volume");
    let conf = d.join("btm.toml");
    // run's keys that the other verbs do not take (itv, cap) are fine in the file.
    std::fs::write(
        &conf,
        format!(
            "volume = {:?}\nlog = {:?}\nsocket = {:?}\nremote = {remote:?}\nitv = 1\ncap = 100\n",
            vol.to_str().unwrap(),
            log_a.to_str().unwrap(),
            sock.to_str().unwrap(),
        ),
    )
    .unwrap();
    let c = conf.to_str().unwrap();
    let b = log_b.to_str().unwrap();

    // list and verify read the file's log; a flag or BTM_LOG_DIR wins; BTM_CONFIG names it too.
    assert_eq!(
        heights(&json(&out(&mut agent(&["list", "--config", c, "--json"])))),
        [1, 2]
    );
    assert_eq!(
        heights(&json(&out(&mut agent(&[
            "list", "--config", c, "--log", b, "--json"
        ])))),
        [5]
    );
    assert_eq!(
        heights(&json(&out(
            agent(&["list", "--config", c, "--json"]).env("BTM_LOG_DIR", b)
        ))),
        [5]
    );
    assert_eq!(
        heights(&json(&out(agent(&["list", "--json"]).env("BTM_CONFIG", c)))),
        [1, 2]
    );
    let v = json(&out(&mut agent(&["verify", "--config", c, "--json"])));
    assert_eq!(v["records"], 2, "{v}");
    let into = d.join("into");
    let v = json(&out(&mut agent(&[
        "replay",
        "--config",
        c,
        "--into",
        into.to_str().unwrap(),
        "--json",
    ])));
    assert_eq!(v["height"], 2, "{v}");
    assert_eq!(std::fs::read(into.join("f")).unwrap(), vec![2u8; 4096]);

    // push ships the file's log to the file's remote; list keeps to the local log (the file's
    // remote is where run ships, not a source), unless --remote is given.
    json(&out(&mut agent(&["push", "--config", c, "--json"])));
    append(&log_a, &[3]);
    assert_eq!(
        heights(&json(&out(&mut agent(&["list", "--config", c, "--json"])))),
        [1, 2, 3]
    );
    assert_eq!(
        heights(&json(&out(&mut agent(&[
            "list", "--config", c, "--remote", &remote, "--json"
        ])))),
        [1, 2]
    );
    let v = dry_prune(c);
    assert_eq!(v["volumes"], 1, "{v}");
    // Without the file, prune has no remote.
    assert!(!out(&mut agent(&["prune", "--dry-run"])).status.success());

    // status and snapshot ask the agent on the file's socket (none listens: 69).
    for args in [
        &["status", "--config", c][..],
        &["snapshot", "--config", c, "--height", "9"][..],
    ] {
        let o = out(&mut agent(args));
        assert_eq!(
            o.status.code(),
            Some(Code::AgentNotRunning.status()),
            "{args:?}"
        );
        assert!(
            text(&o.stderr).contains(sock.to_str().unwrap()),
            "{args:?}: {}",
            text(&o.stderr)
        );
    }
    // rollback takes the volume from the file (it does not exist here: not a usage error).
    let o = out(&mut agent(&["rollback", "--config", c, "--to", "1"]));
    assert_ne!(
        o.status.code(),
        Some(Code::Usage.status()),
        "{}",
        text(&o.stderr)
    );
    assert!(!o.status.success());
    assert!(
        text(&o.stderr).contains(vol.to_str().unwrap()),
        "{}",
        text(&o.stderr)
    );
    // Without a file, it still needs --volume.
    let o = out(&mut agent(&["rollback", "--to", "1"]));
    assert_eq!(o.status.code(), Some(Code::Usage.status()));

    // A bad file fails every verb that reads it, naming the file and the key.
    std::fs::write(&conf, "log = \"/l\"\nlogg = \"/x\"\n").unwrap();
    let o = out(&mut agent(&["list", "--config", c]));
    assert_eq!(o.status.code(), Some(Code::Usage.status()));
    assert!(
        text(&o.stderr).contains(c) && text(&o.stderr).contains("`logg`"),
        "{}",
        text(&o.stderr)
    );
}

/// push and prune take the file's remote key with its remote (and push its upload limit): a
/// keyed remote configured once for `run` is pushed to and pruned sealed, not refused.
#[test]
fn push_and_prune_take_the_remote_key_from_the_config_file() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let log = d.join("log");
    append(&log, &[1, 2]);
    let store = d.join("remote");
    std::fs::create_dir(&store).unwrap();
    let remote = format!("file://{}", store.display());
    let key = d.join("remote.key");
    let o = out(&mut agent(&[
        "remote-key",
        "generate",
        "--out",
        key.to_str().unwrap(),
    ]));
    assert!(o.status.success(), "{}", text(&o.stderr));
    let conf = d.join("btm.toml");
    std::fs::write(
        &conf,
        format!(
            "log = {:?}\nremote = {remote:?}\nremote_key = {:?}\nlimit_upload = \"64MiB\"\n",
            log.to_str().unwrap(),
            key.to_str().unwrap(),
        ),
    )
    .unwrap();
    let c = conf.to_str().unwrap();
    let v = json(&out(&mut agent(&["push", "--config", c, "--json"])));
    assert_eq!(v["records_uploaded"], 2, "{v}");
    let marker: serde_json::Value =
        serde_json::from_slice(&std::fs::read(store.join("layout.json")).unwrap()).unwrap();
    assert_ne!(
        marker["sealing"], "none",
        "pushed sealed with the file's key: {marker}"
    );
    let v = dry_prune(c);
    assert_eq!(v["volumes"], 1, "{v}");
    // The keyed remote read without its key (no file): refused with 78.
    let o = out(&mut agent(&["list", "--remote", &remote, "--json"]));
    assert_eq!(o.status.code(), Some(78), "{}", text(&o.stderr));
}

#[test]
fn config_check_json_prints_the_effective_settings() {
    let dir = tempfile::tempdir().unwrap();
    let conf = dir.path().join("btm.toml");
    std::fs::write(
        &conf,
        "volume = \"/chain\"\nlog = \"/backup/btm\"\nitv = 10\nno_freeze = true\n",
    )
    .unwrap();
    let c = conf.to_str().unwrap();
    let v = json(&out(agent(&[
        "config", "check", "--json", "--config", c, "--algo", "fade",
    ])
    .env("BTM_CAP", "50")));
    assert_eq!(v["v"], 1, "{v}");
    assert_eq!(v["file"], c, "{v}");
    let s = &v["settings"];
    assert_eq!(s["itv"], serde_json::json!({"value": 10, "source": "file"}));
    assert_eq!(
        s["no_freeze"],
        serde_json::json!({"value": true, "source": "file"})
    );
    assert_eq!(
        s["log"],
        serde_json::json!({"value": "/backup/btm", "source": "file"})
    );
    assert_eq!(
        s["algo"],
        serde_json::json!({"value": "fade", "source": "flag"})
    );
    assert_eq!(
        s["cap"],
        serde_json::json!({"value": 50, "source": "env", "env": "BTM_CAP"})
    );
    assert_eq!(
        s["socket"],
        serde_json::json!({"value": "/run/btm/btm.sock", "source": "default"})
    );
    assert_eq!(
        s["metrics_addr"],
        serde_json::json!({"value": null, "source": "unset"})
    );
    assert!(s.get("json").is_none() && s.get("config").is_none(), "{v}");
    // An error is JSON on stdout too, with the usage code.
    std::fs::write(&conf, "volume = \"/c\"\nitv = \"ten\"\n").unwrap();
    let o = out(&mut agent(&["config", "check", "--json", "--config", c]));
    assert_eq!(
        o.status.code(),
        Some(Code::Usage.status()),
        "{}",
        text(&o.stderr)
    );
    let e: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(e["v"], 1, "{e}");
    assert!(
        e["error"]["message"].as_str().unwrap().contains("itv"),
        "{e}"
    );
}
