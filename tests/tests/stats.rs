//! `btm-agent stats` through the real binary, on a log built with known content: heights,
//! records, segments and bytes on disk match the files; captured, deduplicated and stored bytes
//! and the ratios follow from what was written; the top files come largest first.
use std::{path::Path, process::Command};

use btm_agent::log::{CutRecord, Entry, ExtentBytes, ExtentData, Log, NsOp};
use btm_tests::agent_bin;

fn agent(args: &[&str]) -> String {
    let o = Command::new(agent_bin())
        .env_clear()
        .args(args)
        .output()
        .unwrap();
    let out = String::from_utf8_lossy(&o.stdout).into_owned();
    assert!(
        o.status.success(),
        "{args:?}: {out}{}",
        String::from_utf8_lossy(&o.stderr)
    );
    out
}

fn put(path: &str, id: u64, size: u64) -> Vec<NsOp> {
    vec![
        NsOp::Put {
            path: path.into(),
            entry: Entry::File {
                id,
                mode: 0o644,
                uid: 0,
                gid: 0,
            },
        },
        NsOp::SetSize { id, size },
    ]
}

fn data(id: u64, bytes: Vec<u8>) -> ExtentData {
    ExtentData {
        id,
        offset: 0,
        bytes: ExtentBytes::Data(bytes),
    }
}

/// Height 1: `big` (256 KiB, compressible) and `a` (64 KiB of noise); height 2: `b`, a copy of
/// `a` (deduplicated); heights 3..=5 rewrite `small` (4 KiB of noise each); height 3 is then
/// removed by retention.
fn build(dir: &Path) -> (u64, u64) {
    let mut rng = btm_tests::Rng(7);
    let mut noise = |n: usize| -> Vec<u8> { (0..n).map(|_| rng.next_u64() as u8).collect() };
    let a = noise(65536);
    let big: Vec<u8> = (0..262144u32).map(|i| (i % 7) as u8 + 1).collect();
    let mut log = Log::open_append(dir).unwrap();
    let mut ops = put("big", 1, big.len() as u64);
    ops.extend(put("a", 2, 65536));
    log.append(CutRecord {
        height: 1,
        time_unix_ms: 1,
        ops,
        extents: vec![data(1, big), data(2, a.clone())],
    })
    .unwrap();
    log.append(CutRecord {
        height: 2,
        time_unix_ms: 2,
        ops: put("b", 3, 65536),
        extents: vec![data(3, a)],
    })
    .unwrap();
    for h in 3..=5 {
        log.append(CutRecord {
            height: h,
            time_unix_ms: h,
            ops: if h == 3 {
                put("small", 4, 4096)
            } else {
                vec![]
            },
            extents: vec![data(4, noise(4096))],
        })
        .unwrap();
    }
    log.drop_heights(&[3]).unwrap();
    let captured = 262144 + 65536 * 2 + 4096 * 3;
    let unique = 262144 + 65536 + 4096 * 3;
    (captured, unique)
}

#[test]
fn stats_from_metadata() {
    let dir = tempfile::tempdir().unwrap();
    let logdir = dir.path().join("log");
    let (captured, unique) = build(&logdir);
    let l = logdir.to_str().unwrap();
    let v: serde_json::Value =
        serde_json::from_str(&agent(&["stats", "--log", l, "--json", "--top", "3"])).unwrap();
    assert_eq!(v["v"], 1, "{v}");
    let s = &v["stats"];
    assert_eq!(
        (&s["heights"], &s["first_height"], &s["last_height"]),
        (&4.into(), &1.into(), &5.into()),
        "{s}"
    );
    assert_eq!(
        (&s["records"], &s["dropped_records"]),
        (&5.into(), &1.into())
    );
    let segs: Vec<_> = std::fs::read_dir(&logdir)
        .unwrap()
        .map(|e| e.unwrap())
        .filter(|e| e.file_name().to_string_lossy().starts_with("seg-"))
        .collect();
    assert_eq!(s["segments"], segs.len(), "{s}");
    let on_disk: u64 = segs.iter().map(|e| e.metadata().unwrap().len()).sum();
    assert_eq!(s["log_bytes"], on_disk, "{s}");
    assert_eq!(s["files_at_last"], 4, "{s}");
    assert_eq!(s["logical_bytes_at_last"], 262144 + 65536 * 2 + 4096, "{s}");
    assert_eq!(s["captured_bytes"], captured, "{s}");
    assert_eq!(
        s["unique_bytes"], unique,
        "the copy of `a` is stored once: {s}"
    );
    assert_eq!(s["payloads"], 5, "{s}");
    let stored = s["stored_bytes"].as_u64().unwrap();
    assert!(
        stored < unique && stored > 65536,
        "`big` compresses, noise does not: {s}"
    );
    let r = |k: &str| s[k].as_f64().unwrap();
    assert!(
        (r("dedup_ratio") - captured as f64 / unique as f64).abs() < 1e-9,
        "{s}"
    );
    assert!(
        (r("total_ratio") - captured as f64 / stored as f64).abs() < 1e-9,
        "{s}"
    );
    let top = s["top_files"].as_array().unwrap();
    assert_eq!(top.len(), 3, "{s}");
    assert_eq!(top[0]["path"], "a", "64 KiB of noise takes the most: {s}");
    assert_eq!(
        top[1]["path"], "small",
        "three 4 KiB rewrites of noise: {s}"
    );
    assert_eq!(top[1]["payloads"], 3, "{s}");
    assert_eq!(top[2]["path"], "big", "256 KiB that compresses: {s}");
    assert!(top.iter().all(|f| f["live"] == true), "{s}");
    let sizes: Vec<u64> = top
        .iter()
        .map(|f| f["stored_bytes"].as_u64().unwrap())
        .collect();
    assert!(sizes.windows(2).all(|w| w[0] >= w[1]), "{s}");

    let text = agent(&["stats", "--log", l]);
    assert!(
        text.contains("4 heights (1..=5), 5 records (1 of removed heights)")
            && text.contains("KiB")
            && text.contains("after deduplication (")
            && text.contains("files taking the most stored bytes"),
        "{text}"
    );
    assert!(!text.contains('{'), "no Debug structs: {text}");
    let text = agent(&["stats", "--log", l, "--top", "0"]);
    assert!(!text.contains("files taking the most"), "{text}");
}
