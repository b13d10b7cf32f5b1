//! Layout 3 (packs) through `file://`, without root: a height's 4 KiB payloads go up in one
//! pack, so a push costs a few requests however many blocks changed (counted at the
//! object_store boundary); every height restores exactly into empty and stale directories,
//! reading only the changed payloads by range; altered, forged and oversized packs are refused
//! or repaired; prune keeps exactly the packs kept records name; stores in layouts 1 and 2
//! stay in their layout.

use std::time::Duration;

use btm_log::testing::noise;
use btm_log::{CutRecord, ExtentBytes, ExtentData, Log};
use btm_remote::{PushOptions, RemoteError, RemoteKey, prune, push, push_plan, replay};

mod support;
use support::*;

#[test]
fn a_height_is_one_pack_and_restores_by_range() {
    let tmp = tempfile::tempdir().unwrap();
    let logdir = tmp.path().join("log");
    log_with(&logdir, 1..=4);
    let (pdir, ldir) = (tmp.path().join("packed"), tmp.path().join("loose"));
    let (packed, loose) = (open(&pdir, None, false), open(&ldir, None, true));
    let log = Log::open_read(&logdir).unwrap();
    let first = push(&log, &packed, &opts("v")).unwrap();
    assert_eq!((first.records_uploaded, first.packs_uploaded), (4, 4));
    assert_eq!(first.objects_uploaded, 192 + 3 * CHANGED, "{first:?}");
    push(&log, &loose, &opts("v")).unwrap();
    drop(log);

    // One more height, pushed to both: the same payloads, in one pack instead of 24 objects.
    let log = log_with(&logdir, 5..=5);
    let p = push(&log, &packed, &opts("v")).unwrap();
    let l = push(&log, &loose, &opts("v")).unwrap();
    println!(
        "packed {:?} {} bytes\nloose {:?} {} bytes",
        p.requests, p.bytes_uploaded, l.requests, l.bytes_uploaded
    );
    assert_eq!((p.objects_uploaded, l.objects_uploaded), (CHANGED, CHANGED));
    assert_eq!((p.packs_uploaded, p.records_uploaded), (1, 1), "{p:?}");
    // Lock, pack, record, pointer; no request per payload.
    assert_eq!(p.requests.put, 4, "{p:?}");
    assert!(p.requests.head <= 4, "resume search only: {p:?}");
    assert!(
        l.requests.put >= CHANGED + 3 && l.requests.head >= CHANGED,
        "{l:?}"
    );
    assert!(
        l.requests.total() >= 3 * p.requests.total(),
        "{:?} vs {:?}",
        l.requests,
        p.requests
    );
    // Bytes: the same entries, the pack's magic and an index of 48 bytes a payload, but the
    // record object compressed (layout 4), where each index row's hash repeats one of the
    // metadata: fewer bytes than the loose layout, which has no index.
    assert!(
        p.bytes_uploaded < l.bytes_uploaded,
        "{} vs {}",
        p.bytes_uploaded,
        l.bytes_uploaded
    );
    assert_eq!(walk(&pdir.join("packs")).len(), 5, "one pack per height");
    assert!(walk(&pdir.join("objects")).is_empty(), "no loose payloads");
    let marker: serde_json::Value =
        serde_json::from_slice(&std::fs::read(pdir.join("layout.json")).unwrap()).unwrap();
    assert_eq!(
        (marker["layout"].as_u64(), marker["sealing"].as_str()),
        (Some(4), Some("none"))
    );
    for r in walk(&pdir.join("records")) {
        let b = std::fs::read(&r).unwrap();
        assert_eq!(&b[8..10], &3u16.to_le_bytes(), "{}: version 3", r.display());
    }

    // Every height restores exactly into an empty directory; a fresh restore reads payloads
    // in ranges covering many at once (fewer GETs than payloads).
    for h in 1..=5u64 {
        let local = tmp.path().join(format!("local{h}"));
        log.replay(h, &local, &no_sync()).unwrap();
        let fresh = tmp.path().join(format!("fresh{h}"));
        let r = replay(&packed, "v", Some(h), true, &fresh, &no_sync()).unwrap();
        assert_eq!(tree(&fresh), tree(&local), "height {h}");
        assert_eq!(r.objects_downloaded, 192, "height {h}: {r:?}");
        // Pointers (5) and records (h), then the payloads.
        let payload_gets = r.requests.get - 5 - h;
        assert!(
            payload_gets <= 3 * h,
            "height {h}: {payload_gets} GETs for 192 payloads"
        );
    }
    // Into a stale tree (height 4 there, 5 wanted): only the changed payloads, those that
    // neighbour each other in the pack in one range (replay compares a file first, then
    // names what differs).
    let stale = tmp.path().join("fresh4");
    let r = replay(&packed, "v", Some(5), true, &stale, &no_sync()).unwrap();
    assert_eq!(tree(&stale), tree(&tmp.path().join("local5")));
    assert_eq!(r.objects_downloaded, CHANGED, "{r:?}");
    assert!(
        r.bytes_downloaded <= CHANGED * (BLOCK + 17 + 16),
        "only the changed blocks: {r:?}"
    );
    let payload_gets = r.requests.get - 5 - 5;
    assert!(
        (1..=CHANGED / 4).contains(&payload_gets),
        "{payload_gets} GETs for {CHANGED} changed payloads: {r:?}"
    );
    // And back to 1 from 5: what differs, again.
    let r = replay(&packed, "v", Some(1), true, &stale, &no_sync()).unwrap();
    assert_eq!(tree(&stale), tree(&tmp.path().join("local1")));
    assert!(r.objects_downloaded <= 4 * CHANGED, "{r:?}");
}

/// A byte changed inside a pack, a pack larger than btm writes, and (keyed) entries swapped or
/// sealed with another key: refused with the pack named, and `push --verify` packs again.
#[test]
fn altered_forged_and_oversized_packs() {
    let tmp = tempfile::tempdir().unwrap();
    let log = log_with(&tmp.path().join("log"), 1..=3);
    let local = tmp.path().join("local");
    log.replay(3, &local, &no_sync()).unwrap();
    let dir = tmp.path().join("plain");
    let remote = open(&dir, None, false);
    push(&log, &remote, &opts("v")).unwrap();
    let packs = walk(&dir.join("packs"));
    assert_eq!(packs.len(), 3);
    // A payload's byte inside every pack.
    for p in &packs {
        let mut b = std::fs::read(p).unwrap();
        b[8 + 17 + 16 + 100] ^= 1;
        std::fs::write(p, b).unwrap();
    }
    let e = replay(
        &remote,
        "v",
        Some(3),
        true,
        &tmp.path().join("a"),
        &no_sync(),
    )
    .unwrap_err();
    let msg = format!("{e:#}");
    assert!(msg.contains("damaged") && msg.contains("packs/"), "{msg}");
    let rep = push(
        &log,
        &remote,
        &PushOptions {
            verify: true,
            ..opts("v")
        },
    )
    .unwrap();
    assert_eq!((rep.repaired, rep.packs_uploaded), (3, 3), "{rep:?}");
    let out = tmp.path().join("b");
    replay(&remote, "v", Some(3), true, &out, &no_sync()).unwrap();
    assert_eq!(tree(&out), tree(&local));
    // Plaintext packs are named by their bytes: packed again, each replaced its damaged self.
    let pr = prune(&remote, Duration::ZERO, false).unwrap();
    assert_eq!((pr.packs_kept, pr.packs_deleted), (3, 0), "{pr:?}");

    // A pack far larger than btm writes: verify refuses to download it and packs again.
    let big = &walk(&dir.join("packs"))[0];
    std::fs::OpenOptions::new()
        .write(true)
        .open(big)
        .unwrap()
        .set_len(btm_remote::pack::max_pack_len() + 1)
        .unwrap();
    let rep = push(
        &log,
        &remote,
        &PushOptions {
            verify: true,
            ..opts("v")
        },
    )
    .unwrap();
    assert_eq!(rep.repaired, 1, "{rep:?}");

    // Keyed: entries are sealed one by one under their payload's name.
    let kdir = tmp.path().join("keyed");
    let keyed = open(&kdir, Some(KEY), false);
    push(&log, &keyed, &opts("v")).unwrap();
    let kout = tmp.path().join("k");
    replay(&keyed, "v", Some(3), true, &kout, &no_sync()).unwrap();
    assert_eq!(tree(&kout), tree(&local));
    // Every payload is raw noise, so entries of one pack are the same length: swap two.
    let pack1 = walk(&kdir.join("packs"))
        .into_iter()
        .find(|p| std::fs::metadata(p).unwrap().len() > 500_000)
        .expect("the first height's pack");
    let orig = std::fs::read(&pack1).unwrap();
    let n = (orig.len() - 8) / 192;
    let mut swapped = orig.clone();
    swapped[8..8 + n].copy_from_slice(&orig[8 + n..8 + 2 * n]);
    swapped[8 + n..8 + 2 * n].copy_from_slice(&orig[8..8 + n]);
    std::fs::write(&pack1, &swapped).unwrap();
    let e = replay(
        &keyed,
        "v",
        Some(3),
        true,
        &tmp.path().join("k2"),
        &no_sync(),
    )
    .unwrap_err();
    assert!(
        format!("{e:#}").contains("not sealed by this volume's remote key"),
        "{e:#}"
    );
    // Entries sealed, under the right names, by someone holding another key.
    let other = RemoteKey::from_secret(&[0x44; 32]);
    let mut forged = b"btm.pak\n".to_vec();
    for _ in 0..192 {
        forged.extend_from_slice(&other.seal("objects/00/00", &vec![0u8; n - 49]));
    }
    std::fs::write(&pack1, &forged).unwrap();
    let e = replay(
        &keyed,
        "v",
        Some(3),
        true,
        &tmp.path().join("k3"),
        &no_sync(),
    )
    .unwrap_err();
    assert!(
        matches!(&e, RemoteError::Log(_) | RemoteError::Damaged(_))
            && format!("{e:#}").contains("not sealed by this volume's remote key"),
        "{e:#}"
    );
    std::fs::write(&pack1, &orig).unwrap();
    replay(
        &keyed,
        "v",
        Some(3),
        true,
        &tmp.path().join("k4"),
        &no_sync(),
    )
    .unwrap();
    // Nothing readable on the keyed store: no 4 KiB block of the tree in any object.
    let blocks: Vec<Vec<u8>> = walk(&local)
        .iter()
        .flat_map(|f| {
            std::fs::read(f)
                .unwrap()
                .chunks_exact(BLOCK as usize)
                .filter(|c| c.iter().any(|&b| b != 0))
                .map(<[u8]>::to_vec)
                .collect::<Vec<_>>()
        })
        .collect();
    assert!(blocks.len() > 100);
    for f in walk(&kdir) {
        let b = std::fs::read(&f).unwrap();
        for blk in &blocks {
            assert!(
                !b.windows(64).any(|w| w == &blk[..64]),
                "{} holds plaintext",
                f.display()
            );
        }
    }
}

/// Prune keeps a pack while a kept record names it and deletes it when none does.
#[test]
fn prune_keeps_the_packs_kept_records_name() {
    let tmp = tempfile::tempdir().unwrap();
    let a = log_with(&tmp.path().join("a"), 1..=3);
    let mut b = Log::open_append(&tmp.path().join("b")).unwrap();
    b.append(record(1)).unwrap();
    b.append(record(5)).unwrap();
    drop(b);
    let b = Log::open_read(&tmp.path().join("b")).unwrap();
    let dir = tmp.path().join("s");
    let remote = open(&dir, None, false);
    push(&a, &remote, &opts("a")).unwrap();
    push(&b, &remote, &opts("b")).unwrap();
    // Identical first heights make identical records and packs: height 1's pack is named by
    // both volumes' chains.
    assert_eq!(walk(&dir.join("packs")).len(), 4);
    let pr = prune(&remote, Duration::ZERO, false).unwrap();
    assert_eq!((pr.packs_kept, pr.packs_deleted), (4, 0), "{pr:?}");
    // Volume b gone (its pointers): its second height's pack goes, the shared one stays.
    for p in walk(&dir.join("volumes/b/heights")) {
        std::fs::remove_file(p).unwrap();
    }
    let pr = prune(&remote, Duration::ZERO, false).unwrap();
    assert_eq!((pr.packs_kept, pr.packs_deleted), (3, 1), "{pr:?}");
    let out = tmp.path().join("out");
    replay(&remote, "a", Some(3), true, &out, &no_sync()).unwrap();
    let local = tmp.path().join("local");
    a.replay(3, &local, &no_sync()).unwrap();
    assert_eq!(tree(&out), tree(&local));
}

/// Stores written in layouts 1 and 2 (one object per payload, as btm wrote before packs) stay
/// in their layout when this btm pushes to them, and restore exactly.
#[test]
fn old_layouts_stay_readable_and_writable() {
    let tmp = tempfile::tempdir().unwrap();
    let logdir = tmp.path().join("log");
    let log = log_with(&logdir, 1..=2);
    for key in [None, Some(KEY)] {
        let dir = tmp.path().join(if key.is_some() { "l2" } else { "l1" });
        push(&log, &open(&dir, key, true), &opts("v")).unwrap();
        let objects = walk(&dir.join("objects")).len();
        assert_eq!(objects, 192 + CHANGED as usize);
        // This btm, as it opens any store: the store keeps its layout. (Another log with the
        // same first heights makes the same records: only the third goes up.)
        let log = log_with(&logdir.with_extension(format!("{}", key.is_some())), 1..=3);
        let remote = open(&dir, key, false);
        let rep = push(&log, &remote, &opts("w")).unwrap();
        assert_eq!(
            (
                rep.packs_uploaded,
                rep.records_present,
                rep.objects_uploaded
            ),
            (0, 2, CHANGED)
        );
        assert!(walk(&dir.join("packs")).is_empty());
        assert_eq!(walk(&dir.join("objects")).len(), objects + CHANGED as usize);
        for (name, h) in [("v", 2u64), ("w", 3)] {
            let local = tmp.path().join(format!("local-{name}{h}"));
            log.replay(h, &local, &no_sync()).unwrap();
            let out = tmp.path().join(format!("out-{name}{h}-{}", key.is_some()));
            replay(&remote, name, Some(h), true, &out, &no_sync()).unwrap();
            assert_eq!(
                tree(&out),
                tree(&local),
                "{name} {h} keyed {}",
                key.is_some()
            );
        }
    }
}

/// A layout-3 store (packs, record objects not compressed, as btm wrote before layout 4) stays
/// in its layout when this btm pushes to it, plaintext or keyed, and restores exactly.
#[test]
fn layout_3_stays_readable_and_writable() {
    let tmp = tempfile::tempdir().unwrap();
    for key in [None, Some(KEY)] {
        let logdir = tmp.path().join(format!("log-{}", key.is_some()));
        let log = log_with(&logdir, 1..=2);
        let dir = tmp.path().join(format!("l3-{}", key.is_some()));
        let old = open(&dir, key, false).with_new_layout(3);
        push(&log, &old, &opts("v")).unwrap();
        let version = |dir: &std::path::Path| {
            let mut v: Vec<Vec<u8>> = (walk(&dir.join("records")).iter())
                .map(|r| std::fs::read(r).unwrap())
                .collect();
            if key.is_none() {
                // Plaintext: the header's version field.
                v.iter_mut().for_each(|b| b.truncate(10));
                v.iter_mut().for_each(|b| drop(b.drain(..8)));
            }
            v
        };
        let before = version(&dir);
        assert_eq!(before.len(), 2);
        if key.is_none() {
            assert!(before.iter().all(|v| v[..] == 2u16.to_le_bytes()));
        }
        // This btm, as it opens any store: the store keeps its layout.
        let log = log_with(&logdir, 3..=3);
        let remote = open(&dir, key, false);
        let rep = push(&log, &remote, &opts("v")).unwrap();
        assert_eq!((rep.records_present, rep.records_uploaded), (2, 1));
        let marker: serde_json::Value =
            serde_json::from_slice(&std::fs::read(dir.join("layout.json")).unwrap()).unwrap();
        assert_eq!(marker["layout"].as_u64(), Some(3));
        if key.is_none() {
            assert!(version(&dir).iter().all(|v| v[..] == 2u16.to_le_bytes()));
        }
        for h in 1..=3u64 {
            let local = tmp.path().join(format!("l3-local{h}-{}", key.is_some()));
            log.replay(h, &local, &no_sync()).unwrap();
            let out = tmp.path().join(format!("l3-out{h}-{}", key.is_some()));
            replay(&remote, "v", Some(h), true, &out, &no_sync()).unwrap();
            assert_eq!(tree(&out), tree(&local), "{h} keyed {}", key.is_some());
        }
    }
}

/// A dry run's bytes: exact in layout 3, within a few bytes a record in layout 4 (its record
/// objects are compressed with pack names a dry run cannot know).
#[test]
fn a_dry_run_predicts_the_bytes() {
    let tmp = tempfile::tempdir().unwrap();
    for layout in [3u32, 4] {
        let log = log_with(&tmp.path().join(format!("log{layout}")), 1..=3);
        let remote =
            open(&tmp.path().join(format!("s{layout}")), None, false).with_new_layout(layout);
        let plan = push_plan(&log, &remote, &opts("v")).unwrap();
        let done = push(&log, &remote, &opts("v")).unwrap();
        let slack = if layout == 3 {
            0
        } else {
            16 * done.records_uploaded
        };
        assert!(
            plan.bytes_uploaded.abs_diff(done.bytes_uploaded) <= slack,
            "layout {layout}: planned {} bytes, pushed {}",
            plan.bytes_uploaded,
            done.bytes_uploaded
        );
    }
}

/// After compaction rewrote records, a push finds the payloads they store in the packs of the
/// records they replaced (no upload of them again), restores stay exact, and prune deletes the
/// replaced records but keeps every pack (the new records name them).
#[test]
fn compaction_reuses_packed_payloads() {
    let tmp = tempfile::tempdir().unwrap();
    let logdir = tmp.path().join("log");
    log_with(&logdir, 1..=5);
    let dir = tmp.path().join("s");
    let remote = open(&dir, None, false);
    push(&Log::open_read(&logdir).unwrap(), &remote, &opts("v")).unwrap();
    let mut log = Log::open_append(&logdir).unwrap();
    log.drop_heights(&[2, 3]).unwrap();
    drop(log);
    let (log, c) = Log::open_append(&logdir).unwrap().compact().unwrap();
    println!("{c:?}");
    drop(log);
    let log = Log::open_read(&logdir).unwrap();
    let rep = push(
        &log,
        &remote,
        &PushOptions {
            allow_removals: true,
            ..opts("v")
        },
    )
    .unwrap();
    assert!(
        rep.records_uploaded >= 1,
        "compaction rewrote records: {rep:?}"
    );
    assert!(rep.objects_present > 0, "{rep:?}");
    assert_eq!(
        (rep.objects_uploaded, rep.packs_uploaded),
        (0, 0),
        "{rep:?}"
    );
    for h in [1u64, 4, 5] {
        let local = tmp.path().join(format!("local{h}"));
        log.replay(h, &local, &no_sync()).unwrap();
        let out = tmp.path().join(format!("out{h}"));
        replay(&remote, "v", Some(h), true, &out, &no_sync()).unwrap();
        assert_eq!(tree(&out), tree(&local), "height {h}");
    }
    let pr = prune(&remote, Duration::ZERO, false).unwrap();
    assert!(pr.records_deleted >= 2, "{pr:?}");
    assert_eq!((pr.packs_kept, pr.packs_deleted), (5, 0), "{pr:?}");
    let out = tmp.path().join("after-prune");
    replay(&remote, "v", Some(5), true, &out, &no_sync()).unwrap();
    assert_eq!(tree(&out), tree(&tmp.path().join("local5")));
}

/// `with_limits`: a push and a restore of about 1 MiB at 256 KiB/s take at least the time the
/// bytes before their last request take at that rate.
#[test]
fn uploads_and_downloads_keep_to_their_limits() {
    let tmp = tempfile::tempdir().unwrap();
    let log = log_with(&tmp.path().join("log"), 1..=3);
    let rate = 256 << 10;
    let dir = tmp.path().join("s");
    let slow = open(&dir, None, false).with_limits(Some(rate), None);
    let t = std::time::Instant::now();
    let rep = push(&log, &slow, &opts("v")).unwrap();
    let secs = t.elapsed().as_secs_f64();
    // Everything but the last pack, record and pointer waited its turn.
    let floor = (rep.bytes_uploaded - 120_000) as f64 / rate as f64;
    assert!(
        secs >= floor,
        "{secs:.2} s for {} bytes",
        rep.bytes_uploaded
    );
    let slow = open(&dir, None, false).with_limits(None, Some(rate));
    let t = std::time::Instant::now();
    let r = replay(&slow, "v", Some(3), true, &tmp.path().join("o"), &no_sync()).unwrap();
    let secs = t.elapsed().as_secs_f64();
    let floor = (r.bytes_downloaded - 120_000) as f64 / rate as f64;
    assert!(
        secs >= floor && floor > 1.5,
        "{secs:.2} s for {} bytes",
        r.bytes_downloaded
    );
    // Unlimited, the same restore is quick.
    let t = std::time::Instant::now();
    replay(
        &open(&dir, None, false),
        "v",
        Some(3),
        true,
        &tmp.path().join("p"),
        &no_sync(),
    )
    .unwrap();
    assert!(t.elapsed().as_secs_f64() < floor, "{:?}", t.elapsed());
}

/// A large payload that a later height cut into pieces is compared piece by piece against a
/// stale tree with its block table, read once (one range read) however many pieces it has.
#[test]
fn a_block_table_is_read_once_per_payload() {
    let tmp = tempfile::tempdir().unwrap();
    let logdir = tmp.path().join("log");
    let mut log = Log::open_append(&logdir).unwrap();
    log.append(btm_log::testing::record(1, 1, noise(7, 1 << 20)))
        .unwrap();
    log.append(CutRecord {
        height: 2,
        time_unix_ms: 2,
        ops: vec![],
        extents: (0..10u64)
            .map(|i| ExtentData {
                id: 1,
                offset: (i * 20 + 3) * BLOCK,
                bytes: ExtentBytes::Data(noise(2 * i + 101, BLOCK as usize)),
            })
            .collect(),
    })
    .unwrap();
    drop(log);
    let log = Log::open_read(&logdir).unwrap();
    let remote = open(&tmp.path().join("s"), None, false);
    push(&log, &remote, &opts("v")).unwrap();
    let out = tmp.path().join("out");
    replay(&remote, "v", Some(2), true, &out, &no_sync()).unwrap();
    // Height 2 again over itself: 11 pieces of the large payload, all the same.
    let r = replay(&remote, "v", Some(2), true, &out, &no_sync()).unwrap();
    assert_eq!(r.objects_downloaded, 0, "{r:?}");
    // Two pointers, two records, one table.
    assert_eq!(r.requests.get, 2 + 2 + 1, "{r:?}");
    let local = tmp.path().join("local");
    log.replay(2, &local, &no_sync()).unwrap();
    assert_eq!(tree(&out), tree(&local));
}
