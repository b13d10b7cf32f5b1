//! Semantic oracles: real storage engines (LMDB with and without write-map, MDBX write-map,
//! SQLite in WAL mode with mmap, LevelDB, RocksDB) open the restored data and must return
//! exactly what they had committed at that height, on ext4, xfs and btrfs.
//!
//! The engine (tests/py/engine.py) loads its data elsewhere and arrives on the volume copied in
//! 2 MiB chunks, as a restored data directory does, so its files sit in 2 MiB folios that
//! write-map engines map by PMD on ext4 and xfs (asserted from the engine's smaps). At each
//! height it commits, then starts the next height's transaction and leaves it open while the
//! height is cut: the cut must hold height H and nothing of H+1. Before a height is trusted as
//! an oracle, the engine's own on-disk state must survive `kill -9` at that height. Then every
//! height is replayed into a fresh directory, and the volume is rolled back in place through
//! the cutter to three heights (comparing only what changed since each), and each time the
//! engine opens the result and returns the committed state of that height.
use std::{
    collections::BTreeMap,
    fs,
    io::{BufRead, BufReader, Write},
    path::Path,
    process::{Child, ChildStdout, Command, Stdio},
    time::Duration,
};

use btm_agent::log::{Log, PathGlobs, ReplayOptions};
use btm_tests::{Cutting, can_run, cutting, have_tool, python3, skip, watchdog};

const HEIGHTS: u64 = 10;
const DRIVER: &str = include_str!("../py/engine.py");
const ENGINES: &[&str] = &[
    "lmdb",
    "lmdb-writemap",
    "mdbx-writemap",
    "sqlite-wal-mmap",
    "leveldb",
    "rocksdb",
];

struct Engine {
    child: Child,
    out: BufReader<ChildStdout>,
}

impl Engine {
    /// Loads the engine's data into `dir`; with `exec`, started the way `btm-agent exec`
    /// starts a node (THP disabled). Returns the engine and the digest of its first state.
    fn start(kind: &str, dir: &Path, exec: bool) -> (Engine, String, u64) {
        let mut child = python3(exec)
            .args(["-c", DRIVER, "run", kind])
            .arg(dir)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .expect("python3");
        let out = BufReader::new(child.stdout.take().unwrap());
        let mut e = Engine { child, out };
        let (d, pmd) = e.answer("ready");
        (e, d, pmd)
    }

    fn answer(&mut self, word: &str) -> (String, u64) {
        let mut line = String::new();
        self.out.read_line(&mut line).unwrap();
        let v: Vec<&str> = line.split_whitespace().collect();
        assert!(v.len() == 3 && v[0] == word, "engine said {line:?}");
        (v[1].to_string(), v[2].parse().unwrap())
    }

    /// `commit H` or `begin H`: the committed state's digest and FilePmdMapped (kB).
    fn command(&mut self, cmd: &str, h: u64) -> (String, u64) {
        writeln!(self.child.stdin.as_mut().unwrap(), "{cmd} {h}").unwrap();
        self.answer("ok")
    }

    fn kill9(mut self) {
        self.child.kill().unwrap();
        self.child.wait().unwrap();
    }
}

/// The digest of what the engine returns from `dir`.
fn engine_digest(kind: &str, dir: &Path) -> String {
    let out = Command::new("python3")
        .args(["-c", DRIVER, "verify", kind])
        .arg(dir)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{kind} cannot open {}: {}",
        dir.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// What one engine run measured.
struct Run {
    read_per_height: u64,
    pmd_kb: u64,
    fault_wide: u64,
}

fn one(fstype: &str, kind: &str, exec: bool) -> Run {
    let what = format!("{kind} on {fstype}{}", if exec { " (exec)" } else { "" });
    let Cutting {
        mut cutter,
        vol: fs,
        work,
        logdir,
    } = cutting(fstype, 1024, "btm-engines-");
    let db = fs.mnt.join("db");
    let (mut engine, d1, mut pmd_kb) = Engine::start(kind, &db, exec);
    let mut expected: BTreeMap<u64, String> = BTreeMap::new();
    cutter
        .cut(1)
        .unwrap_or_else(|e| panic!("{what}: cut 1: {e:#}"));
    expected.insert(1, d1);
    let mut read = 0;
    for h in 2..=HEIGHTS {
        let (d, pmd) = engine.command("commit", h);
        pmd_kb = pmd_kb.max(pmd);
        // The next height's writes are in flight, uncommitted, while H is cut.
        engine.command("begin", h + 1);
        let (rep, _) = cutter
            .cut(h)
            .unwrap_or_else(|e| panic!("{what}: cut {h}: {e:#}"));
        read += rep.read_unfrozen + rep.read_frozen;
        expected.insert(h, d);
    }
    let stats = cutter.tracker().stats().unwrap();
    // The oracle is valid only if the engine's own state survives a crash at the height.
    engine.kill9();
    assert_eq!(
        engine_digest(kind, &db),
        expected[&HEIGHTS],
        "{what}: after kill -9 the engine does not return height {HEIGHTS}: not a valid oracle"
    );

    let opts = ReplayOptions {
        progress: false,
        ..Default::default()
    };
    let mut failures = Vec::new();
    let log = Log::open_read(&logdir).unwrap();
    for (&h, want) in &expected {
        let fresh = work.path().join(format!("fresh-{h}"));
        log.replay(h, &fresh, &opts).unwrap();
        if engine_digest(kind, &fresh.join("db")) != *want {
            failures.push(format!("{what}: replay of height {h} returns other data"));
        }
        fs::remove_dir_all(&fresh).unwrap();
    }
    drop(log);
    // In place, the node stopped (its uncommitted next height on the volume): roll the
    // volume back through the cutter, comparing only what changed since each height.
    for h in [HEIGHTS - 1, HEIGHTS / 2, 2] {
        let st = cutter
            .rollback(h, &PathGlobs::default())
            .unwrap_or_else(|e| panic!("{what}: rollback to {h}: {e:#}"));
        if st.scoped.is_none() {
            failures.push(format!(
                "{what}: the rollback to {h} compared the whole volume"
            ));
        }
        if engine_digest(kind, &db) != expected[&h] {
            failures.push(format!(
                "{what}: in-place rollback to {h} returns other data"
            ));
        }
    }
    drop(cutter);
    let run = Run {
        read_per_height: read / (HEIGHTS - 1),
        pmd_kb,
        fault_wide: stats.fault_wide,
    };
    eprintln!(
        "{what}: read {} KiB per height; FilePmdMapped {} kB; {stats:?}",
        run.read_per_height >> 10,
        run.pmd_kb
    );
    assert!(failures.is_empty(), "{}", failures.join("\n"));
    run
}

fn engines(fstype: &str) {
    // An engine that blocks (in a read from its pipe nothing else would end) fails this test
    // in minutes instead of holding CI to its limit; the six engines take 1-2 minutes.
    let _deadline = watchdog(&format!("engines on {fstype}"), Duration::from_secs(900));
    if !can_run(&format!("storage engines on {fstype}")) {
        return;
    }
    let missing = Command::new("python3")
        .args(["-c", "import lmdb, mdbx, plyvel, rocksdict"])
        .status()
        .map_or(true, |s| !s.success());
    if missing || !have_tool("python3") {
        skip(
            &format!("storage engines on {fstype}"),
            "python3 with lmdb, libmdbx, plyvel and rocksdict is missing: run `cargo xtask setup`",
        );
        return;
    }
    for &kind in ENGINES {
        let run = one(fstype, kind, false);
        if kind == "lmdb-writemap" && fstype != "btrfs" {
            // The case this suite exists for: stores into PMD-mapped 2 MiB folios. (libmdbx
            // maps its file so that no PMD maps it here: FilePmdMapped stays 0.)
            assert!(
                run.pmd_kb > 0,
                "{kind} on {fstype}: no PMD-mapped folios: the setup did not build the case"
            );
            assert!(
                run.fault_wide > 0,
                "{kind} on {fstype}: no fault was widened"
            );
        }
    }
    // The precision mechanism: the same write-map engine started through `btm-agent exec`.
    let run = one(fstype, "lmdb-writemap", true);
    assert_eq!(
        run.pmd_kb, 0,
        "{fstype}: PMD mappings despite btm-agent exec"
    );
}

#[test]
fn engines_ext4() {
    engines("ext4");
}

#[test]
fn engines_xfs() {
    engines("xfs");
}

#[test]
fn engines_btrfs() {
    engines("btrfs");
}
