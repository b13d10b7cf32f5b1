//! An in-place rollback through the agent's store costs what changed, not the volume: it
//! compares only what the records after the target height and the tracker since the last
//! height name (the 64 MiB state file, written in a few blocks, is never read whole), and the
//! next cut reads what the tracker marks instead of the whole volume again. Every height,
//! before and after the rollbacks, replays exactly; the volume equals the target after each.
use std::{collections::BTreeMap, fs, os::unix::fs::PermissionsExt, path::Path};

use btm_agent::{
    log::PathGlobs,
    metrics::Metrics,
    retention::{Algo, Policy},
    store::{CompactSettings, HeightStore, LogStore},
    tracker::{Limits, Tracker},
    treehash::{TreeHash, diff, hash_tree},
    volume::Mount,
};
use btm_tests::{FILESYSTEMS, LoopFs, Rng, can_run, workdir, write_at};

const MIB: u64 = 1 << 20;
const VOL_MB: u64 = 512;
const STATE: u64 = 64 * MIB;

/// One height's worth of node writes: a few blocks of the state file, an appended log, a new
/// block file, and now and then a rename, a removal, a new directory and a mode change.
fn node_writes(vol: &Path, rng: &mut Rng, n: u64) {
    for _ in 0..4 {
        let at = rng.below(STATE / 4096) * 4096;
        write_at(&vol.join("state.db"), at, &rng.bytes(4096));
    }
    let mut log = fs::read(vol.join("wal.log")).unwrap_or_default();
    log.extend(rng.bytes(3000));
    fs::write(vol.join("wal.log"), log).unwrap();
    fs::write(vol.join(format!("blocks/{n:04}")), rng.bytes(100_000)).unwrap();
    match n % 4 {
        0 => fs::rename(
            vol.join(format!("blocks/{:04}", n - 1)),
            vol.join(format!("blocks/old-{n}")),
        )
        .unwrap(),
        1 => fs::create_dir_all(vol.join(format!("ancient/{n}/sub"))).unwrap(),
        2 => {
            let _ = fs::remove_dir_all(vol.join(format!("ancient/{}", n - 1)));
        }
        _ => fs::set_permissions(
            vol.join("wal.log"),
            fs::Permissions::from_mode(0o600 + (n % 2) as u32 * 0o40),
        )
        .unwrap(),
    }
}

fn open_store(vol: &LoopFs, logdir: &Path) -> LogStore {
    let mount = Mount::at(&vol.mnt).unwrap();
    let tracker = Tracker::start(&mount, Limits::for_volume_bytes(VOL_MB * MIB)).unwrap();
    let policy = Policy::new(1, 1000, Algo::Fair).unwrap();
    let compaction = CompactSettings {
        min_bytes: u64::MAX,
        bytes_per_sec: 0,
    };
    LogStore::open(
        mount,
        tracker,
        logdir,
        &policy,
        compaction,
        btm_agent::cut::Freeze::Volume,
    )
    .unwrap()
}

fn num(v: &serde_json::Value, key: &str) -> u64 {
    v[key].as_u64().unwrap_or_else(|| panic!("no {key} in {v}"))
}

fn run(fstype: &str) {
    let vol = LoopFs::new(fstype, VOL_MB).unwrap();
    let work = workdir("btm-rollback-");
    let logdir = work.path().join("log");
    let mut store = open_store(&vol, &logdir);
    let metrics = Metrics::new(None, None);
    let mut rng = Rng(0x0011_ba4c);
    fs::write(vol.path("state.db"), rng.bytes(STATE as usize)).unwrap();
    fs::create_dir(vol.path("blocks")).unwrap();
    for i in 0..32 {
        fs::write(
            vol.path(&format!("blocks/base-{i:02}")),
            rng.bytes(256 << 10),
        )
        .unwrap();
    }
    let mut expected: BTreeMap<u64, TreeHash> = BTreeMap::new();
    let digest = || hash_tree(&vol.mnt).unwrap();
    store.keep(1, &metrics).unwrap();
    expected.insert(1, digest());
    for h in 2..=8 {
        node_writes(&vol.mnt, &mut rng, h);
        store.keep(h, &metrics).unwrap();
        expected.insert(h, digest());
    }

    // The node wrote part of height 9, then asks for 5: what it wrote since 8 goes too.
    node_writes(&vol.mnt, &mut rng, 9);
    let rolled = store
        .rollback(Some(5), true, &PathGlobs::default())
        .unwrap();
    let stats = &rolled["stats"];
    eprintln!("{fstype}: rollback to 5: {stats}");
    assert!(
        stats["scoped"].is_u64(),
        "{fstype}: the rollback compared the whole volume: {rolled}"
    );
    let d = diff(&expected[&5], &digest());
    assert!(d.is_empty(), "{fstype}: rollback to 5 differs: {d:?}");
    // The state file was written in a few blocks per height: its 64 MiB are not compared.
    assert!(
        num(stats, "bytes_compared") < 8 * MIB,
        "{fstype}: the rollback compared {} bytes",
        num(stats, "bytes_compared")
    );
    expected.retain(|&h, _| h <= 5);

    // The node goes on from 5: the next cut reads what the tracker marked (the rollback's
    // own writes included), not the whole volume.
    node_writes(&vol.mnt, &mut rng, 6);
    let rep = store.keep(6, &metrics).unwrap();
    eprintln!("{fstype}: first cut after the rollback: {rep}");
    assert_eq!(rep["full"], false, "{fstype}: {rep}");
    let read = num(&rep, "read_unfrozen") + num(&rep, "read_frozen");
    assert!(
        read < 8 * MIB,
        "{fstype}: the cut after the rollback read {read} bytes"
    );
    expected.insert(6, digest());
    node_writes(&vol.mnt, &mut rng, 7);
    store.keep(7, &metrics).unwrap();
    expected.insert(7, digest());

    // Back to the last height itself (the node drops a half-written block).
    node_writes(&vol.mnt, &mut rng, 8);
    let rolled = store.rollback(None, false, &PathGlobs::default()).unwrap();
    assert_eq!(rolled["height"], 7);
    assert!(rolled["stats"]["scoped"].is_u64(), "{fstype}: {rolled}");
    let d = diff(&expected[&7], &digest());
    assert!(d.is_empty(), "{fstype}: rollback to 7 differs: {d:?}");
    node_writes(&vol.mnt, &mut rng, 8);
    store.keep(8, &metrics).unwrap();
    expected.insert(8, digest());
    drop(store);

    let log = btm_agent::log::Log::open_read(&logdir).unwrap();
    let opts = btm_agent::log::ReplayOptions {
        progress: false,
        sync: false,
        ..Default::default()
    };
    for (h, want) in &expected {
        let into = work.path().join(format!("replay-{h}"));
        log.replay(*h, &into, &opts).unwrap();
        let d = diff(want, &hash_tree(&into).unwrap());
        assert!(d.is_empty(), "{fstype}: height {h} replays wrong: {d:?}");
        fs::remove_dir_all(&into).unwrap();
    }
}

#[test]
fn scoped_rollback_on_every_filesystem() {
    if !can_run("rollback_scoped") {
        return;
    }
    for fstype in FILESYSTEMS {
        run(fstype);
    }
}
