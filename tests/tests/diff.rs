//! `btm-agent diff --from A --to B` through the real binary, on a log written in-process: paths
//! added, removed and changed between two heights, with the bytes that differ, as text and as
//! JSON, from the log's metadata alone.
use std::process::Command;

use btm_agent::log::{CutRecord, Entry, ExtentBytes, ExtentData, Log, NsOp};
use btm_tests::agent_bin;

fn agent(args: &[&str]) -> std::process::Output {
    Command::new(agent_bin())
        .env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .args(args)
        .output()
        .unwrap()
}

fn file(path: &str, id: u64, mode: u32) -> NsOp {
    NsOp::Put {
        path: path.as_bytes().to_vec(),
        entry: Entry::File {
            id,
            mode,
            uid: 0,
            gid: 0,
        },
    }
}

fn data(id: u64, offset: u64, len: usize, seed: u8) -> ExtentData {
    ExtentData {
        id,
        offset,
        bytes: ExtentBytes::Data(
            (0..len)
                .map(|i| (i as u8).wrapping_mul(seed) ^ seed)
                .collect(),
        ),
    }
}

#[test]
fn diff_between_two_heights() {
    let dir = tempfile::tempdir().unwrap();
    let logdir = dir.path().join("log");
    let mut log = Log::open_append(&logdir).unwrap();
    // 10: a (8 KiB), b (4 KiB), dir d with f (4 KiB).
    log.append(CutRecord {
        height: 10,
        time_unix_ms: 1,
        ops: vec![
            file("a", 1, 0o644),
            NsOp::SetSize { id: 1, size: 8192 },
            file("b", 2, 0o644),
            NsOp::SetSize { id: 2, size: 4096 },
            NsOp::Put {
                path: b"d".to_vec(),
                entry: Entry::Dir {
                    mode: 0o755,
                    uid: 0,
                    gid: 0,
                },
            },
            file("d/f", 3, 0o600),
            NsOp::SetSize { id: 3, size: 4096 },
        ],
        extents: vec![
            data(1, 0, 8192, 3),
            data(2, 0, 4096, 5),
            data(3, 0, 4096, 7),
        ],
    })
    .unwrap();
    // 20: a's second 4 KiB rewritten, b removed, c added (12 KiB), d/f's mode changed, a link.
    log.append(CutRecord {
        height: 20,
        time_unix_ms: 2,
        ops: vec![
            NsOp::Remove {
                path: b"b".to_vec(),
            },
            file("c", 4, 0o644),
            NsOp::SetSize { id: 4, size: 12288 },
            file("d/f", 3, 0o640),
            NsOp::Put {
                path: b"d/link".to_vec(),
                entry: Entry::Symlink {
                    target: b"../a".to_vec(),
                    uid: 0,
                    gid: 0,
                },
            },
        ],
        extents: vec![data(1, 4096, 4096, 11), data(4, 0, 12288, 13)],
    })
    .unwrap();
    drop(log);
    let l = logdir.to_str().unwrap();

    let o = agent(&["diff", "--log", l, "--from", "10", "--to", "20", "--json"]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(
        (v["v"].as_u64(), v["from"].as_u64(), v["to"].as_u64()),
        (Some(1), Some(10), Some(20))
    );
    let paths = |k: &str| -> Vec<(String, u64)> {
        v[k].as_array()
            .unwrap()
            .iter()
            .map(|c| {
                (
                    c["path"].as_str().unwrap().to_string(),
                    c["bytes"].as_u64().unwrap(),
                )
            })
            .collect()
    };
    assert_eq!(
        paths("added"),
        [("c".into(), 12288), ("d/link".into(), 0)],
        "{v}"
    );
    assert_eq!(paths("removed"), [("b".into(), 4096)], "{v}");
    assert_eq!(
        paths("changed"),
        [("a".into(), 4096), ("d/f".into(), 0)],
        "{v}"
    );
    assert_eq!(v["changed"][1]["meta"], true, "{v}");
    assert_eq!(v["added"][1]["kind"], "symlink", "{v}");
    let s = &v["summary"];
    assert_eq!(
        (
            s["added"].as_u64(),
            s["removed"].as_u64(),
            s["changed"].as_u64()
        ),
        (Some(2), Some(1), Some(2)),
        "{v}"
    );
    assert_eq!(
        (
            s["bytes_added"].as_u64(),
            s["bytes_removed"].as_u64(),
            s["bytes_changed"].as_u64()
        ),
        (Some(12288), Some(4096), Some(4096)),
        "{v}"
    );

    // Text: one line per path, then the summary; backwards is the mirror image.
    let o = agent(&["diff", "--log", l, "--from", "20", "--to", "10"]);
    let text = String::from_utf8_lossy(&o.stdout);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    for line in [
        "A  b  (4.0 KiB)",
        "D  c  (12.0 KiB)",
        "D  d/link  (0 B)",
        "M  a  (4.0 KiB differ)",
    ] {
        assert!(text.lines().any(|x| x == line), "no {line:?} in:\n{text}");
    }
    assert!(text.contains("20 -> 10: 1 added"), "{text}");

    // The same height: nothing. A height not recorded: 67, as elsewhere.
    let o = agent(&["diff", "--log", l, "--from", "10", "--to", "10", "--json"]);
    let same: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(same["summary"]["changed"], 0, "{same}");
    let o = agent(&["diff", "--log", l, "--from", "10", "--to", "15"]);
    assert_eq!(o.status.code(), Some(67));
}
