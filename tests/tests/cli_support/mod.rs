//! The agent as a user runs it, for tests that drive it as a process: started with arguments
//! (and killed when the test ends), and its CLI verbs.
// Each test binary that includes this uses part of it.
#![allow(dead_code)]
use std::{
    path::Path,
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use btm_agent::cmd::proto;
use btm_tests::agent_bin;
use serde_json::Value;

/// The agent with a clean environment: the runner's BTM_* variables must not leak in.
pub fn clean_agent() -> Command {
    let mut c = Command::new(agent_bin());
    c.env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default());
    c
}

/// Output bytes as text, for messages.
pub fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// `snapshot --height H` through the clean-environment agent, which must succeed.
pub fn snapshot(sock: &Path, h: u64) {
    let out = clean_agent()
        .args(["snapshot", "--height", &h.to_string(), "--socket"])
        .arg(sock)
        .output()
        .unwrap();
    assert!(out.status.success(), "height {h}: {}", text(&out.stderr));
}

/// A child process killed (and reaped) when the test ends, passing or not.
pub struct Guard(pub Option<Child>);

impl Guard {
    /// Waits up to `limit` for the process to exit by itself.
    pub fn wait_exit(&mut self, limit: Duration) {
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

pub fn start_agent(args: &[String], socket: &Path, out: &Path) -> Guard {
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

pub fn agent(args: &[&str]) -> String {
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
pub fn logged(log: &Path) -> Vec<u64> {
    heights_of(&agent(&["list", "--log", log.to_str().unwrap(), "--json"]))
}

pub fn heights_of(list_json: &str) -> Vec<u64> {
    let v: Value = serde_json::from_str(list_json).unwrap();
    v.as_array()
        .unwrap()
        .iter()
        .map(|h| h["height"].as_u64().unwrap())
        .collect()
}

/// A path as the `&str` argument the CLI takes.
pub fn s(p: &Path) -> String {
    p.to_str().unwrap().to_string()
}
