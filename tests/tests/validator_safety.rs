//! Validator safety through the real binary, on a CometBFT-like home in a loop-mounted ext4
//! volume: `rollback`/`replay --preserve` (and `--preserve-preset cometbft`, from flags, the
//! configuration file and through a running agent) leave the signing state at its newest while
//! everything else rewinds exactly; `push --exclude` and `run --remote --exclude` keep the keys
//! home: no offsite object holds their bytes, and a restore names what it did not restore.
use std::{
    collections::BTreeMap,
    path::{Path, PathBuf},
    process::{Command, Output},
};

use btm_agent::treehash::hash_tree;
use btm_tests::{LoopFs, agent_bin, can_run, snapshot_via, start_agent, workdir};

const STATE: &str = "data/priv_validator_state.json";
const KEY: &str = "config/priv_validator_key.json";
const NODE_KEY: &str = "config/node_key.json";

fn agent(args: &[&str]) -> Output {
    Command::new(agent_bin())
        .env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .args(args)
        .output()
        .unwrap()
}

fn ok(args: &[&str]) -> String {
    let o = agent(args);
    let out = String::from_utf8_lossy(&o.stdout).into_owned();
    assert!(
        o.status.success(),
        "{args:?}: {out}{}",
        String::from_utf8_lossy(&o.stderr)
    );
    out
}

fn state_at(h: u64) -> String {
    format!("{{\"height\":\"{h}\",\"round\":0,\"step\":3,\"signature\":\"sig-{h}\"}}\n")
}

fn key_bytes(which: &str) -> String {
    // Not compressible into something else: 64 hex digits of a fixed "secret".
    let hex: String = (0..32u32)
        .map(|i| format!("{:02x}", (i * 97 + which.len() as u32 * 13) % 251))
        .collect();
    format!(
        "{{\"priv_key\":{{\"type\":\"tendermint/PrivKeyEd25519\",\"value\":\"SECRET{which}{hex}\"}}}}\n"
    )
}

fn write(root: &Path, rel: &str, data: &[u8]) {
    let p = root.join(rel);
    std::fs::create_dir_all(p.parent().unwrap()).unwrap();
    std::fs::write(p, data).unwrap();
}

/// Height `h` of a CometBFT home: the signing state says h, a block file per height, a
/// growing WAL, and the keys (unchanged).
fn advance(root: &Path, h: u64) {
    if h == 1 {
        write(
            root,
            "config/genesis.json",
            b"{\"chain_id\":\"btm-test\"}\n",
        );
        write(root, KEY, key_bytes("validator").as_bytes());
        write(root, NODE_KEY, key_bytes("node").as_bytes());
    }
    write(root, STATE, state_at(h).as_bytes());
    let block: Vec<u8> = (0..8192u32).map(|i| (i * h as u32 % 253) as u8).collect();
    write(root, &format!("data/blockstore.db/{h:06}.ldb"), &block);
    let wal = root.join("data/cs.wal/wal");
    let mut w = std::fs::read(&wal).unwrap_or_default();
    w.extend(format!("#ENDHEIGHT: {h}\n").as_bytes());
    write(root, "data/cs.wal/wal", &w);
}

/// The tree without lost+found and without `skip`.
fn tree(root: &Path, skip: &[&str]) -> BTreeMap<Vec<u8>, String> {
    let mut t = hash_tree(root).unwrap();
    t.retain(|k, _| !k.starts_with(b"lost+found") && !skip.iter().any(|s| k == s.as_bytes()));
    t
}

fn read(root: &Path, rel: &str) -> String {
    std::fs::read_to_string(root.join(rel)).unwrap()
}

/// Whether any file under `dir` holds `needle`, raw or inside a zstd frame.
fn holds(dir: &Path, needle: &[u8]) -> Option<PathBuf> {
    use std::io::Read;
    let found = |b: &[u8]| b.windows(needle.len()).any(|w| w == needle);
    for e in walk(dir) {
        let b = std::fs::read(&e).unwrap();
        if found(&b) {
            return Some(e);
        }
        for (i, _) in b
            .windows(4)
            .enumerate()
            .filter(|(_, w)| *w == [0x28, 0xb5, 0x2f, 0xfd])
        {
            let mut out = Vec::new();
            if let Ok(mut d) = zstd::stream::read::Decoder::new(&b[i..]) {
                let _ = d.read_to_end(&mut out);
            }
            if found(&out) {
                return Some(e);
            }
        }
    }
    None
}

fn walk(dir: &Path) -> Vec<PathBuf> {
    let mut v = Vec::new();
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            v.extend(walk(&p));
        } else {
            v.push(p);
        }
    }
    v
}

#[test]
fn rollback_and_replay_keep_the_newest_signing_state() {
    if !can_run("validator safety: rollback --preserve") {
        return;
    }
    let vol = LoopFs::new("ext4", 128).unwrap();
    let work = workdir("btm-validator-");
    let (log, sock) = (work.path().join("log"), work.path().join("sock"));
    let store = work.path().join("offsite");
    let url = format!("file://{}", store.display());
    let m = vol.mnt.to_str().unwrap();
    let l = log.to_str().unwrap();
    let s = sock.to_str().unwrap();
    let mut running = start_agent(
        &vol.mnt,
        &log,
        &sock,
        &["--remote", &url, "--exclude", "config/*_key.json"],
    );
    for h in 1..=5 {
        advance(&vol.mnt, h);
        snapshot_via(&sock, h);
    }
    // Height 2 as it was: its signing state says 2 (what a rollback without --preserve writes).
    let two = work.path().join("two");
    ok(&[
        "replay",
        "--log",
        l,
        "--to",
        "2",
        "--into",
        two.to_str().unwrap(),
    ]);
    assert_eq!(read(&two, STATE), state_at(2));

    // Through the running agent: the newest signing state stays.
    let out = ok(&[
        "rollback",
        "--volume",
        m,
        "--log",
        l,
        "--socket",
        s,
        "--to",
        "4",
        "--preserve-preset",
        "cometbft",
    ]);
    assert!(out.contains("through the agent"), "{out}");
    assert_eq!(
        read(&vol.mnt, STATE),
        state_at(5),
        "the agent rewound the signing state"
    );
    assert!(!vol.path("data/blockstore.db/000005.ldb").exists());

    // run --remote --exclude shipped the heights without the keys.
    let t0 = std::time::Instant::now();
    // (A listing that races the push removing height 5's pointer leaves that height out.)
    let listed = || {
        let o = agent(&["list", "--remote", &url, "--json"]);
        let out = String::from_utf8_lossy(&o.stdout).into_owned();
        assert!(o.status.success(), "{out}");
        out
    };
    while !listed().contains("\"height\": 4") {
        assert!(
            t0.elapsed().as_secs() < 60,
            "run --remote never shipped height 4"
        );
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
    running.terminate();
    assert_eq!(
        holds(&store, b"SECRETvalidator"),
        None,
        "a key left the host"
    );
    assert_eq!(holds(&store, b"SECRETnode"), None, "a key left the host");
    assert!(
        holds(&store, b"sig-4").is_some(),
        "the scan finds what was shipped"
    );

    // Without an agent, the globs from the configuration file.
    let cfg = work.path().join("btm.toml");
    std::fs::write(
        &cfg,
        format!("preserve = [\"{STATE}\", \"config/*_key.json\"]\n"),
    )
    .unwrap();
    let c = cfg.to_str().unwrap();
    let v: serde_json::Value = serde_json::from_str(&ok(&[
        "config", "check", "--config", c, "--volume", m, "--json",
    ]))
    .unwrap();
    assert_eq!(
        v["settings"]["preserve"]["value"],
        serde_json::json!([STATE, "config/*_key.json"]),
        "{v}"
    );
    let v: serde_json::Value = serde_json::from_str(&ok(&[
        "rollback", "--config", c, "--volume", m, "--log", l, "--socket", s, "--to", "2", "--json",
    ]))
    .unwrap();
    assert_eq!(v["height"], 2, "{v}");
    let kept = v["stats"]["preserved"].as_array().unwrap();
    assert!(kept.contains(&STATE.into()), "{v}");
    assert_eq!(
        read(&vol.mnt, STATE),
        state_at(5),
        "rollback rewound the signing state"
    );
    assert_eq!(
        tree(&vol.mnt, &[STATE]),
        tree(&two, &[STATE]),
        "everything else is height 2 exactly"
    );

    // replay --preserve into a directory holding a newer state; the rest becomes height 3.
    let three = work.path().join("three");
    ok(&[
        "replay",
        "--log",
        l,
        "--to",
        "3",
        "--into",
        three.to_str().unwrap(),
    ]);
    write(&two, STATE, state_at(9).as_bytes());
    std::fs::remove_file(two.join(NODE_KEY)).unwrap();
    let out = ok(&[
        "replay",
        "--log",
        l,
        "--to",
        "3",
        "--into",
        two.to_str().unwrap(),
        "--preserve",
        STATE,
        "--preserve",
        "config/node_key.json",
    ]);
    assert!(
        out.contains("preserved as they were") && out.contains(STATE),
        "{out}"
    );
    assert_eq!(read(&two, STATE), state_at(9));
    assert!(
        !two.join(NODE_KEY).exists(),
        "a preserved path absent stays absent"
    );
    assert_eq!(
        tree(&two, &[STATE, NODE_KEY]),
        tree(&three, &[STATE, NODE_KEY])
    );

    // zfs/btrfs rollbacks restore whole datasets: --preserve is refused there, not ignored.
    let o = agent(&[
        "rollback",
        "--volume",
        m,
        "--mode",
        "btrfs",
        "--socket",
        s,
        "--preserve",
        STATE,
    ]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success(), "--preserve ignored in btrfs mode");
    assert!(err.contains("--preserve works on the log"), "{err}");
}

#[test]
fn push_exclude_keeps_keys_home_and_restore_names_them() {
    if !can_run("validator safety: push --exclude") {
        return;
    }
    let vol = LoopFs::new("ext4", 128).unwrap();
    let work = workdir("btm-exclude-");
    let (log, sock) = (work.path().join("log"), work.path().join("sock"));
    let l = log.to_str().unwrap();
    let mut running = start_agent(&vol.mnt, &log, &sock, &[]);
    for h in 1..=3 {
        advance(&vol.mnt, h);
        snapshot_via(&sock, h);
    }
    running.terminate();
    let store = work.path().join("offsite");
    let url = format!("file://{}", store.display());
    let cfg = work.path().join("btm.toml");
    // From the configuration file, as push reads `exclude` there.
    std::fs::write(&cfg, format!("exclude = [\"{KEY}\"]\n")).unwrap();
    let c = cfg.to_str().unwrap();
    ok(&[
        "push",
        "--config",
        c,
        "--log",
        l,
        "--remote",
        &url,
        "--exclude",
        "config/*_key.json",
    ]);
    assert_eq!(
        holds(&store, b"SECRETvalidator"),
        None,
        "a key left the host"
    );
    assert_eq!(holds(&store, b"SECRETnode"), None, "a key left the host");
    assert!(
        holds(&store, b"sig-3").is_some(),
        "the scan finds what was pushed"
    );

    let into = work.path().join("restored");
    let i = into.to_str().unwrap();
    let out = ok(&["replay", "--remote", &url, "--into", i]);
    assert!(
        out.contains("not restored") && out.contains(KEY) && out.contains(NODE_KEY),
        "the restore must say what it left out: {out}"
    );
    assert!(!into.join(KEY).exists() && !into.join(NODE_KEY).exists());
    assert_eq!(read(&into, STATE), state_at(3));
    assert_eq!(
        tree(&into, &[KEY, NODE_KEY]),
        tree(&vol.mnt, &[KEY, NODE_KEY]),
        "the rest is height 3 exactly"
    );
    // A key put back by hand survives the next restore; --json names it too.
    write(&into, KEY, b"restored from a backup\n");
    let v: serde_json::Value =
        serde_json::from_str(&ok(&["replay", "--remote", &url, "--into", i, "--json"])).unwrap();
    assert!(
        v["excluded"].as_array().unwrap().contains(&KEY.into()),
        "{v}"
    );
    assert_eq!(read(&into, KEY), "restored from a backup\n");
}
