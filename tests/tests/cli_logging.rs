//! What operators rely on in the agent's logs, through the real binary: no colour codes when
//! stderr is a file, numbers as numbers in text and JSON lines, and `BTM_LOG_LEVEL` (and its
//! old name `BTM_LOG`) selecting the level.
use std::{path::Path, process::Stdio, time::Duration};

use btm_agent::cmd::exit::Code;
use btm_tests::{LoopFs, Running, can_run, start_agent_env, workdir};
use cli_support::{clean_agent as agent, snapshot};

mod cli_support;

/// `watch` against nothing logs at once (info) and then warns on every retry: its stderr,
/// written to a file, shows which level the environment selected.
fn watch_log(env: &[(&str, &str)]) -> String {
    let work = workdir("btm-cli-");
    let err = work.path().join("stderr");
    let child = agent()
        .args([
            "watch",
            "--source",
            "bitcoin",
            "--url",
            "http://127.0.0.1:9",
        ])
        .args(["--every", "0.1", "--socket"])
        .arg(work.path().join("none.sock"))
        .envs(env.iter().copied())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&err).unwrap())
        .spawn()
        .unwrap();
    let mut p = Running::new(child);
    std::thread::sleep(Duration::from_millis(800));
    let st = p.terminate();
    assert_eq!(st.code(), Some(Code::Interrupted.status()), "{st}");
    std::fs::read_to_string(&err).unwrap()
}

#[test]
fn logs_to_a_file_have_no_colour_and_follow_btm_log_level() {
    let info = "watching node heights";
    let log = watch_log(&[]);
    assert!(log.contains(info) && log.contains("WARN"), "{log}");
    assert!(
        !log.contains("\x1b["),
        "escape sequences in a log file: {log:?}"
    );
    // `every` is a number, not a string.
    assert!(log.contains("every=0.1"), "{log}");

    let log = watch_log(&[("BTM_LOG_LEVEL", "warn")]);
    assert!(!log.contains(info) && log.contains("WARN"), "{log}");
    // The old name still works; the new one wins over it.
    let log = watch_log(&[("BTM_LOG", "warn")]);
    assert!(!log.contains(info), "{log}");
    let log = watch_log(&[("BTM_LOG", "warn"), ("BTM_LOG_LEVEL", "info")]);
    assert!(log.contains(info), "{log}");
    // A path in BTM_LOG (the log directory, by mistake) is not a filter that silences all.
    let log = watch_log(&[("BTM_LOG", "/backup/btm")]);
    assert!(
        log.contains(info) && log.contains("ignoring BTM_LOG=/backup/btm"),
        "{log}"
    );
    // JSON lines: numbers as JSON numbers.
    let log = watch_log(&[("BTM_LOG_FORMAT", "json")]);
    let first: serde_json::Value = serde_json::from_str(log.lines().next().unwrap()).unwrap();
    assert_eq!(first["fields"]["every"], 0.1, "{first}");
}

/// The agent's own log lines with `msg`, parsed (BTM_LOG_FORMAT=json).
fn json_lines(file: &Path, msg: &str) -> Vec<serde_json::Value> {
    std::fs::read_to_string(file)
        .unwrap()
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|v| v["fields"]["message"] == msg)
        .collect()
}

#[test]
fn agent_logs_have_no_colour_and_numbers_as_numbers() {
    if !can_run("agent logs") {
        return;
    }
    let vol = LoopFs::new("ext4", 256).unwrap();
    let work = workdir("btm-cli-logs-");
    let (log, sock) = (work.path().join("log"), work.path().join("agent.sock"));
    let agent_log = log.with_extension("agent.log");

    // Text logs into a file: no colour codes, numbers unquoted.
    let mut a = start_agent_env(&vol.mnt, &log, &sock, &[], &[]);
    std::fs::write(vol.path("a"), b"one").unwrap();
    snapshot(&sock, 1);
    a.terminate();
    let text_log = std::fs::read_to_string(&agent_log).unwrap();
    assert!(text_log.contains("height durable"), "{text_log}");
    assert!(
        !text_log.contains("\x1b["),
        "escape sequences in the agent's log: {text_log:?}"
    );
    assert!(
        text_log.contains("freeze_ms=") && !text_log.contains("freeze_ms=\""),
        "{text_log}"
    );

    // JSON logs: the same fields as JSON numbers.
    let mut a = start_agent_env(&vol.mnt, &log, &sock, &[], &[("BTM_LOG_FORMAT", "json")]);
    std::fs::write(vol.path("a"), b"two").unwrap();
    snapshot(&sock, 2);
    a.terminate();
    let ready = json_lines(&agent_log, "agent ready");
    assert_eq!(ready[0]["fields"]["last_height"], 1, "{ready:?}");
    let durable = json_lines(&agent_log, "height durable");
    let f = &durable[0]["fields"];
    assert!(
        f["freeze_ms"].is_f64() && f["height"] == 2 && f["stored"].is_u64(),
        "{f}"
    );
}
