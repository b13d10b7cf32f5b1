//! `btm-agent status`: asks the running agent over its socket (`{"cmd":"status"}`,
//! docs/PROTOCOL.md) and prints a summary, or the answer as JSON with `"v": 1`. Exits 69
//! (agent not running) when nothing listens on the socket.
use std::{path::PathBuf, time::Duration};

use anyhow::Result;
use serde_json::Value;

use super::proto::{self, DEFAULT_SOCKET, Request};

#[derive(clap::Args, Debug)]
pub struct StatusArgs {
    /// Socket of the agent to ask.
    #[arg(long, env = "BTM_SOCKET", default_value = DEFAULT_SOCKET)]
    pub socket: PathBuf,
    /// Print the answer as one JSON object: `v` (1), `socket`, and the agent's fields: `mode`,
    /// `volume`, `last_height` (null while nothing is recorded), `heights`, and `tracker` and
    /// `programs` (eBPF mode: each probe's `run_cnt` and `run_time_ns`, counted only while
    /// `sysctl kernel.bpf_stats_enabled=1`, and `verified_insns`, what loading it cost the
    /// verifier) or `target` (zfs/btrfs).
    #[arg(long)]
    pub json: bool,
    /// Give up after this many seconds (the agent answers between cuts).
    #[arg(long, default_value_t = 60)]
    pub timeout: u64,
}

pub fn run(a: StatusArgs) -> Result<()> {
    let detail = proto::call(&a.socket, &Request::Status, Duration::from_secs(a.timeout))?;
    let v = versioned(&a.socket, detail);
    if a.json {
        println!("{v}");
    } else {
        print!("{}", summary(&v));
    }
    Ok(())
}

/// The agent's answer with `v` and `socket` in front (the agent's status has neither field).
fn versioned(socket: &std::path::Path, detail: Value) -> Value {
    let mut v = serde_json::json!({ "v": 1, "socket": socket });
    if let (Some(out), Value::Object(d)) = (v.as_object_mut(), detail) {
        for (k, x) in d {
            out.entry(k).or_insert(x);
        }
    }
    v
}

/// A few aligned lines for a person.
fn summary(v: &Value) -> String {
    let text = |k: &str| match &v[k] {
        Value::String(s) => s.clone(),
        Value::Null => "-".into(),
        x => x.to_string(),
    };
    let mut s = format!(
        "agent        running on {}\nmode         {}\nvolume       {}\n",
        text("socket"),
        text("mode"),
        text("volume")
    );
    if v.get("target").is_some() {
        s += &format!("target       {}\n", text("target"));
    }
    s += &match v["last_height"].as_u64() {
        Some(h) => format!("last height  {h}\n"),
        None => "last height  none recorded yet\n".into(),
    };
    s += &format!("heights      {} kept\n", text("heights"));
    if let Some(t) = v.get("tracker").filter(|t| t.is_object()) {
        let n = |k: &str| t[k].as_u64().unwrap_or(0);
        s += &format!(
            "tracker      {} events, {} overflows, {} lost, {} missed runs\n",
            n("events"),
            n("chunk_overflows"),
            n("lost"),
            n("prog_misses")
        );
    }
    if let Some(c) = v.get("compaction").filter(|c| c.is_object()) {
        s += &format!(
            "compaction   running for {} s{}\n",
            c["running_secs"],
            if c["prepared"] == true {
                ", prepared: its commit waits for readers of the log"
            } else {
                ""
            }
        );
    }
    if let Some(c) = v.get("last_compaction").filter(|c| c.is_object()) {
        s += &last_compaction(c);
    }
    s
}

/// The `last compaction` line: how it ended, and what it freed or why it failed.
fn last_compaction(c: &serde_json::Value) -> String {
    let took = c["secs"]
        .as_f64()
        .map_or(String::new(), |t| format!(" after {t} s"));
    let what = match c["result"].as_str().unwrap_or("?") {
        "compacted" => format!(
            "compacted{took}: {} -> {} bytes",
            c["bytes_before"], c["bytes_after"]
        ),
        "failed" => format!(
            "FAILED{took} (retried in {} s): {}",
            c["retry_in_secs"],
            c["error"].as_str().unwrap_or("?")
        ),
        r => format!("{r}{took}"),
    };
    format!("last compact {what}\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versioned_keeps_the_agents_fields_and_adds_v() {
        let v = versioned(
            std::path::Path::new("/run/btm/btm.sock"),
            serde_json::json!({"mode": "ebpf", "last_height": 7, "heights": 3,
                "tracker": {"events": 10, "lost": 1}}),
        );
        assert_eq!(v["v"], 1);
        assert_eq!(v["socket"], "/run/btm/btm.sock");
        assert_eq!(v["last_height"], 7);
        let s = summary(&v);
        assert!(s.contains("last height  7\n"), "{s}");
        assert!(s.contains("3 kept"), "{s}");
        assert!(s.contains("10 events, 0 overflows, 1 lost"), "{s}");
    }

    #[test]
    fn an_empty_agent_says_so() {
        let v = versioned(
            std::path::Path::new("/s"),
            serde_json::json!({"mode": "zfs", "target": "dataset tank/data",
                "last_height": null, "heights": 0}),
        );
        let s = summary(&v);
        assert!(s.contains("none recorded yet"), "{s}");
        assert!(s.contains("target       dataset tank/data"), "{s}");
    }

    #[test]
    fn a_failed_compaction_is_not_shown_as_done() {
        let v = |c: serde_json::Value| {
            summary(&versioned(
                std::path::Path::new("/s"),
                serde_json::json!({"mode": "ebpf", "heights": 3, "last_compaction": c}),
            ))
        };
        let s = v(serde_json::json!({"result": "failed", "secs": 2.5,
            "error": "No space left on device", "retry_in_secs": 600}));
        assert!(
            s.contains("last compact FAILED after 2.5 s (retried in 600 s): No space left"),
            "{s}"
        );
        let s = v(serde_json::json!({"result": "compacted", "secs": 20.0,
            "bytes_before": 1000, "bytes_after": 400}));
        assert!(
            s.contains("last compact compacted after 20 s: 1000 -> 400 bytes"),
            "{s}"
        );
    }
}
