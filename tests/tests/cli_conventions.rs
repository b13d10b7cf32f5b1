//! What scripts and operators rely on, through the real binary: documented exit codes (the
//! same table in `--help` and docs/OPERATIONS.md), `{"v":1,"error":{...}}` on stdout under
//! `--json`, `status` against a running agent, `daemon` as `run`, `rollback --mode`, and exit
//! 130 when interrupted. (Logs: cli_logging.rs.)
use std::{
    os::unix::net::UnixListener,
    path::{Path, PathBuf},
    process::{Output, Stdio},
    time::Duration,
};

mod cli_support;

use btm_agent::cmd::exit::Code;
use btm_tests::{LoopFs, Rng, Running, can_run, start_agent_env, workdir};
use cli_support::{clean_agent as agent, snapshot, text};

fn run(args: &[&str]) -> Output {
    agent().args(args).output().unwrap()
}

/// Asserts the exit status and returns the output.
fn expect(out: Output, code: Code) -> Output {
    assert_eq!(
        out.status.code(),
        Some(code.status()),
        "expected {code:?}; stdout: {}; stderr: {}",
        text(&out.stdout),
        text(&out.stderr)
    );
    out
}

/// Asserts success and returns the output.
fn ok(out: Output) -> Output {
    assert!(
        out.status.success(),
        "{}; stdout: {}; stderr: {}",
        out.status,
        text(&out.stdout),
        text(&out.stderr)
    );
    out
}

/// The one JSON error object a failed `--json` verb prints on stdout; returns its message.
fn json_error(out: &Output, code: Code) -> String {
    let v: serde_json::Value = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("stdout is not one JSON value ({e}): {}", text(&out.stdout)));
    assert_eq!(v["v"], 1, "{v}");
    assert_eq!(v["error"]["code"], code.name(), "{v}");
    let msg = v["error"]["message"]
        .as_str()
        .expect("a message")
        .to_string();
    assert!(!msg.is_empty(), "{v}");
    msg
}

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .into()
}

#[test]
fn help_and_docs_list_every_exit_code() {
    let help = text(&ok(run(&["--help"])).stdout);
    let docs = std::fs::read_to_string(repo().join("docs/OPERATIONS.md")).unwrap();
    for c in Code::ALL {
        let line = format!("{:>3}  {:<18} {}", c.status(), c.name(), c.meaning());
        assert!(help.contains(&line), "--help lacks {line:?}:\n{help}");
        let row = format!("| {} | `{}` |", c.status(), c.name());
        assert!(
            docs.contains(&row),
            "docs/OPERATIONS.md lacks the row {row:?}"
        );
    }
    let mut statuses: Vec<i32> = Code::ALL.iter().map(|c| c.status()).collect();
    statuses.sort_unstable();
    statuses.dedup();
    assert_eq!(statuses.len(), Code::ALL.len(), "two codes share a status");
}

#[test]
fn exit_codes_without_an_agent() {
    let work = workdir("btm-cli-");
    let missing = work.path().join("missing");
    let m = missing.to_str().unwrap();

    // No log: 66, with the error on stderr.
    let out = expect(run(&["list", "--log", m]), Code::NoLog);
    assert!(out.stdout.is_empty());
    assert!(
        text(&out.stderr).starts_with("error: no log at"),
        "{}",
        text(&out.stderr)
    );
    // A mistyped path is not made into a new log.
    expect(run(&["compact", "--log", m]), Code::NoLog);
    assert!(
        !missing.exists(),
        "compact created a log at a mistyped path"
    );

    // Usage: clap's errors, and ours.
    expect(run(&["list", "--no-such-flag"]), Code::Usage);
    expect(run(&[]), Code::Usage);

    // An empty log has no height to replay.
    let log = work.path().join("log");
    drop(btm_agent::log::Log::open_append(&log).unwrap());
    let into = work.path().join("into");
    let l = log.to_str().unwrap();
    let i = into.to_str().unwrap();
    expect(
        run(&["replay", "--log", l, "--into", i]),
        Code::HeightNotFound,
    );

    // Locked: another process appends to the log.
    let held = btm_agent::log::Log::open_append(&log).unwrap();
    let out = expect(run(&["compact", "--log", l]), Code::Locked);
    assert!(
        text(&out.stderr).contains("held by another process"),
        "{}",
        text(&out.stderr)
    );
    drop(held);

    // No agent: absent socket, and a socket file nobody listens on any more.
    let stale = work.path().join("stale.sock");
    drop(UnixListener::bind(&stale).unwrap());
    assert!(stale.exists());
    let s = stale.to_str().unwrap();
    for sock in [m, s] {
        expect(
            run(&["snapshot", "--height", "1", "--socket", sock]),
            Code::AgentNotRunning,
        );
        let out = expect(run(&["status", "--socket", sock]), Code::AgentNotRunning);
        assert!(out.stdout.is_empty());
    }
}

#[test]
fn rollback_takes_mode() {
    let work = workdir("btm-cli-");
    let missing = work.path().join("missing");
    let m = missing.to_str().unwrap();
    expect(
        run(&["rollback", "--volume", m, "--mode", "tape"]),
        Code::Usage,
    );
    // ebpf reads the log (here: none, and none is created).
    let out = expect(
        run(&[
            "rollback", "--volume", m, "--mode", "ebpf", "--log", m, "--socket", m,
        ]),
        Code::NoLog,
    );
    assert!(
        text(&out.stderr).contains("no log at"),
        "{}",
        text(&out.stderr)
    );
    assert!(
        !missing.exists(),
        "rollback created a log at a mistyped path"
    );
    // auto without --log: the volume's native snapshots, which a plain directory lacks;
    // btrfs: only those.
    let dir = work.path().to_str().unwrap();
    let out = expect(
        run(&["rollback", "--volume", dir, "--socket", m]),
        Code::NoLog,
    );
    assert!(
        text(&out.stderr).contains("no native snapshots"),
        "{}",
        text(&out.stderr)
    );
    let out = run(&[
        "rollback", "--volume", dir, "--mode", "btrfs", "--socket", m,
    ]);
    let err = text(&out.stderr);
    assert!(!out.status.success() && err.contains("btrfs"), "{err}");
    assert!(
        !err.contains("no --log LOGDIR given"),
        "--mode btrfs ignored: {err}"
    );
}

#[test]
fn daemon_is_run() {
    let work = workdir("btm-cli-");
    let conf = work.path().join("btm.toml");
    std::fs::write(&conf, "itvs = 3\n").unwrap();
    let c = conf.to_str().unwrap();
    // The configuration file applies to `daemon` as to `run` (and names the bad key).
    for verb in ["run", "daemon"] {
        let out = expect(run(&[verb, "--config", c, "--volume", "/x"]), Code::Usage);
        assert!(
            text(&out.stderr).contains("unknown key `itvs`"),
            "{verb}: {}",
            text(&out.stderr)
        );
    }
    let out = ok(run(&["daemon", "--help"]));
    assert!(
        text(&out.stdout).contains("Usage: btm-agent run"),
        "{}",
        text(&out.stdout)
    );
}

#[test]
fn json_errors_on_stdout() {
    let work = workdir("btm-cli-");
    let m = work.path().join("missing");
    let m = m.to_str().unwrap();
    let out = expect(run(&["list", "--log", m, "--json"]), Code::NoLog);
    assert!(json_error(&out, Code::NoLog).contains(m));
    // stderr keeps the text line (scripts that read it go on working).
    assert!(
        text(&out.stderr).starts_with("error: no log at"),
        "{}",
        text(&out.stderr)
    );
    let out = expect(
        run(&["status", "--socket", m, "--json"]),
        Code::AgentNotRunning,
    );
    assert!(json_error(&out, Code::AgentNotRunning).contains("no btm agent"));
    let out = expect(
        run(&["prune", "--remote", "nope://x", "--json"]),
        Code::Failure,
    );
    json_error(&out, Code::Failure);
    // Usage errors too, but not help.
    let out = expect(run(&["list", "--json", "--bogus"]), Code::Usage);
    assert!(json_error(&out, Code::Usage).contains("--bogus"));
    let out = ok(run(&["list", "--json", "--help"]));
    assert!(text(&out.stdout).contains("Usage: btm-agent list"));
    // Without --json: nothing on stdout.
    let out = expect(run(&["status", "--socket", m]), Code::AgentNotRunning);
    assert!(out.stdout.is_empty());
}

/// A socket that accepts and never answers: the client waits until it is interrupted.
#[test]
fn interrupted_verbs_exit_130() {
    use nix::sys::signal::{Signal, kill};
    let work = workdir("btm-cli-");
    let sock = work.path().join("mute.sock");
    let l = UnixListener::bind(&sock).unwrap();
    for (sig, verb) in [
        (Signal::SIGINT, &["snapshot", "--height", "1"][..]),
        (Signal::SIGTERM, &["status", "--json"][..]),
    ] {
        let child = agent()
            .args(verb)
            .arg("--socket")
            .arg(&sock)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        // Accepted: the client is past its setup and waits for the answer.
        let _conn = l.accept().unwrap();
        std::thread::sleep(Duration::from_millis(200));
        kill(nix::unistd::Pid::from_raw(child.id() as i32), sig).unwrap();
        let out = expect(child.wait_with_output().unwrap(), Code::Interrupted);
        if sig == Signal::SIGTERM {
            assert!(json_error(&out, Code::Interrupted).contains("SIGTERM"));
        } else {
            assert!(
                text(&out.stderr).contains("interrupted by SIGINT"),
                "{}",
                text(&out.stderr)
            );
        }
    }
}

#[test]
fn status_and_exit_codes_with_a_real_agent() {
    if !can_run("status and exit codes with an agent") {
        return;
    }
    let vol = LoopFs::new("ext4", 256).unwrap();
    let work = workdir("btm-cli-agent-");
    let (log, sock) = (work.path().join("log"), work.path().join("agent.sock"));
    let (l, s) = (log.to_str().unwrap(), sock.to_str().unwrap());
    let mut rng = Rng(0x636c_6921);

    let mut a = start_agent_env(&vol.mnt, &log, &sock, &[], &[]);
    let v = btm_tests::agent_status(&sock);
    assert_eq!(v["v"], 1, "{v}");
    assert!(v["last_height"].is_null(), "{v}");
    // Height 1: a megabyte of incompressible data (damaged below).
    std::fs::write(vol.path("big"), rng.bytes(1 << 20)).unwrap();
    snapshot(&sock, 1);
    std::fs::write(vol.path("small"), b"two").unwrap();
    snapshot(&sock, 2);
    let v = btm_tests::agent_status(&sock);
    assert_eq!(v["v"], 1, "{v}");
    assert_eq!(v["mode"], "ebpf", "{v}");
    assert_eq!(v["last_height"], 2, "{v}");
    assert_eq!(v["heights"], 2, "{v}");
    assert_eq!(v["socket"], s, "{v}");
    assert!(v["tracker"]["events"].as_u64().unwrap() > 0, "{v}");
    let summary = text(&ok(run(&["status", "--socket", s])).stdout);
    assert!(summary.contains("last height  2\n"), "{summary}");
    assert!(summary.contains("2 kept"), "{summary}");
    // The agent holds the log and the volume.
    expect(run(&["compact", "--log", l]), Code::Locked);
    let other = work.path().join("other.sock");
    let out = expect(
        run(&[
            "run",
            "--mode",
            "ebpf",
            "--volume",
            vol.mnt.to_str().unwrap(),
            "--log",
            l,
            "--socket",
            other.to_str().unwrap(),
        ]),
        Code::Locked,
    );
    assert!(
        text(&out.stderr).contains("another btm agent"),
        "{}",
        text(&out.stderr)
    );
    a.terminate();

    // The agent is gone.
    expect(run(&["status", "--socket", s]), Code::AgentNotRunning);
    // A height the log does not hold.
    let into = work.path().join("into");
    let i = into.to_str().unwrap();
    let out = expect(
        run(&["replay", "--log", l, "--to", "7", "--exact", "--into", i]),
        Code::HeightNotFound,
    );
    assert!(
        text(&out.stderr).contains("not recorded"),
        "{}",
        text(&out.stderr)
    );
    ok(run(&["verify", "--log", l]));
    // Damage inside height 1's data.
    let seg = log.join("seg-00000001.btm");
    let mut bytes = std::fs::read(&seg).unwrap();
    let at = bytes.len() / 3;
    bytes[at] ^= 0xff;
    std::fs::write(&seg, bytes).unwrap();
    let out = expect(run(&["verify", "--log", l]), Code::Damage);
    assert!(
        text(&out.stderr).contains("damaged"),
        "{}",
        text(&out.stderr)
    );
}

/// `rollback --mode btrfs` against a real subvolume whose heights a `run --mode btrfs` agent
/// kept (and `status` of a native-mode agent).
#[test]
fn rollback_mode_btrfs_restores_a_height() {
    if !can_run("rollback --mode btrfs") {
        return;
    }
    if !btm_tests::have_tool("btrfs") {
        btm_tests::skip("rollback --mode btrfs", "btrfs-progs is not installed");
        return;
    }
    let fs = LoopFs::new("btrfs", 300).unwrap();
    let vol = fs.path("chain");
    btm_tests::sh("btrfs", &["subvolume", "create", vol.to_str().unwrap()]).unwrap();
    let sock = fs.dir.path().join("btm.sock");
    let (v, s) = (vol.to_str().unwrap(), sock.to_str().unwrap());
    let mut a = Running::new(
        agent()
            .args(["run", "--mode", "btrfs", "--volume", v, "--socket", s])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    btm_tests::wait_listening(&mut a, &sock, String::new);
    std::fs::write(vol.join("f"), b"one").unwrap();
    snapshot(&sock, 1);
    std::fs::write(vol.join("f"), b"two").unwrap();
    snapshot(&sock, 2);
    let st = btm_tests::agent_status(&sock);
    assert_eq!(st["mode"], "btrfs", "{st}");
    assert_eq!(st["last_height"], 2, "{st}");
    assert!(st["target"].is_string(), "{st}");
    a.terminate();

    let rollback = |to: &str| {
        run(&[
            "rollback", "--mode", "btrfs", "-p", v, "--to", to, "--exact", "--socket", s,
        ])
    };
    let out = expect(rollback("7"), Code::HeightNotFound);
    assert!(
        text(&out.stderr).contains("no snapshot at height 7"),
        "{}",
        text(&out.stderr)
    );
    ok(rollback("1"));
    assert_eq!(std::fs::read(vol.join("f")).unwrap(), b"one");
}

/// Sizes are accepted as people write them, in flags and in the configuration file, and a
/// size that is not one is a usage error naming the flag.
#[test]
fn sizes_are_human() {
    let out = ok(run(&[
        "config",
        "check",
        "--volume",
        "/tmp",
        "--compact-min-bytes",
        "1.5GiB",
    ]));
    assert!(
        text(&out.stdout).contains(r#"compact_min_bytes = "1.5GiB""#),
        "{}",
        text(&out.stdout)
    );
    let out = expect(
        run(&[
            "config",
            "check",
            "--volume",
            "/tmp",
            "--compact-min-bytes",
            "12parsecs",
        ]),
        Code::Usage,
    );
    let err = text(&out.stderr);
    assert!(
        err.contains("--compact-min-bytes") && err.contains("unknown unit"),
        "{err}"
    );
    let dir = tempfile::tempdir().unwrap();
    let conf = dir.path().join("btm.toml");
    std::fs::write(&conf, "volume = \"/tmp\"\ncompact_min_bytes = \"256MiB\"\n").unwrap();
    let out = ok(run(&[
        "config",
        "check",
        "--config",
        conf.to_str().unwrap(),
    ]));
    assert!(
        text(&out.stdout).contains(r#"compact_min_bytes = "256MiB""#),
        "{}",
        text(&out.stdout)
    );
}

/// verify, replay and rollback say what they did in a sentence, or with --json as one object:
/// never a Rust debug dump.
#[test]
fn verify_and_replay_report_as_text_or_json() {
    use btm_agent::log::{CutRecord, Entry, ExtentBytes, ExtentData, Log, NsOp};
    let dir = tempfile::tempdir().unwrap();
    let logdir = dir.path().join("log");
    let mut log = Log::open_append(&logdir).unwrap();
    for h in 1..=2u64 {
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
                NsOp::SetSize { id: 1, size: 8192 },
            ],
            extents: vec![ExtentData {
                id: 1,
                offset: 0,
                bytes: ExtentBytes::Data(vec![h as u8; 8192]),
            }],
        })
        .unwrap();
    }
    drop(log);
    let l = logdir.to_str().unwrap();
    let out = text(&ok(run(&["verify", "--log", l])).stdout);
    assert!(out.starts_with("ok: 2 records (heights 1..=2)"), "{out}");
    let v: serde_json::Value =
        serde_json::from_slice(&ok(run(&["verify", "--log", l, "--json"])).stdout).unwrap();
    assert_eq!(
        (v["v"].as_u64(), v["records"].as_u64()),
        (Some(1), Some(2)),
        "{v}"
    );
    let into = dir.path().join("into");
    let i = into.to_str().unwrap();
    let out = text(&ok(run(&["replay", "--log", l, "--to", "1", "--into", i])).stdout);
    assert!(out.contains("wrote 8.0 KiB") && !out.contains('{'), "{out}");
    let v: serde_json::Value =
        serde_json::from_slice(&ok(run(&["replay", "--log", l, "--into", i, "--json"])).stdout)
            .unwrap();
    assert_eq!(v["height"], 2, "{v}");
    assert_eq!(v["stats"]["bytes_written"], 8192, "{v}");
    assert_eq!(std::fs::read(into.join("f")).unwrap(), vec![2u8; 8192]);
}

/// `-C` asks before removing every height (here: no terminal, so --yes is required), and
/// removes only what btm wrote: a user's file in the log directory stays.
#[test]
fn clean_asks_and_removes_only_btms_files() {
    let dir = tempfile::tempdir().unwrap();
    let logdir = dir.path().join("log");
    // In a child: this process never holds the log's lock (see run_in_child).
    btm_tests::run_in_child("fixture_one_height_log", &[("BTM_FIXTURE_LOG", &logdir)]);
    std::fs::write(logdir.join("notes.txt"), b"mine").unwrap();
    let l = logdir.to_str().unwrap();
    // As in BTM, naming the heights' place alone lists them.
    let out = text(&ok(run(&["--log", l])).stdout);
    assert!(out.trim_start().starts_with("1 "), "{out}");
    let out = expect(
        agent()
            .args(["--log", l, "-C"])
            .stdin(std::process::Stdio::null())
            .output()
            .unwrap(),
        Code::Usage,
    );
    assert!(text(&out.stderr).contains("--yes"), "{}", text(&out.stderr));
    assert!(
        logdir.join("seg-00000001.btm").exists(),
        "removed without asking"
    );
    let out = ok(run(&["--log", l, "-C", "--yes"]));
    assert!(
        text(&out.stdout).contains("left 1 other"),
        "{}",
        text(&out.stdout)
    );
    let left: Vec<String> = std::fs::read_dir(&logdir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(left, ["notes.txt"]);
}

/// The log of [`clean_asks_and_removes_only_btms_files`]: one height in `BTM_FIXTURE_LOG`.
#[test]
#[ignore = "a fixture: clean_asks_and_removes_only_btms_files runs it in a child process"]
fn fixture_one_height_log() {
    use btm_agent::log::{CutRecord, Log};
    let Some(dir) = std::env::var_os("BTM_FIXTURE_LOG") else {
        return;
    };
    let mut log = Log::open_append(Path::new(&dir)).unwrap();
    log.append(CutRecord {
        height: 1,
        time_unix_ms: 1,
        ops: vec![],
        extents: vec![],
    })
    .unwrap();
}
