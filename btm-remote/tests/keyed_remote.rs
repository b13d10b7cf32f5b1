//! A keyed store through `file://` (issue 18): what is on the store is ciphertext under names
//! that say nothing of the content, every height restores exactly with the key, the store is
//! refused without it or with another, objects forged with bucket access alone are refused
//! with a message saying so, and plaintext and keyed stores never mix.

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::time::Duration;

use btm_log::testing::noise;
use btm_log::{CutRecord, Log, NsOp, ReplayOptions};
use btm_remote::{
    PushOptions, Remote, RemoteError, RemoteKey, list_heights, list_volumes, prune, push, replay,
};

const BLOCK: usize = 4096;

fn no_sync() -> ReplayOptions {
    ReplayOptions {
        progress: false,
        sync: false,
        ..Default::default()
    }
}

/// Height h writes file `f<h % 3 + 1>` (new content) and, at height 4, removes `f1`.
fn record(h: u64) -> CutRecord {
    let mut r = btm_log::testing::record(h, h % 3 + 1, noise(h, 200_000 + h as usize * 1000));
    if h == 4 {
        r.ops.push(NsOp::Remove {
            path: b"f1".to_vec(),
        });
    }
    r
}

fn opts(name: &str) -> PushOptions {
    PushOptions {
        name: name.into(),
        ..Default::default()
    }
}

/// Layout 2 (and layout 1 for the plaintext twin): one sealed object per payload, as btm wrote
/// before packs; tests/packs.rs covers keyed packs (layout 3).
fn open(store: &Path, key: Option<[u8; 32]>) -> Remote {
    Remote::open(&format!("file://{}", store.display()))
        .unwrap()
        .with_key(key.map(|k| RemoteKey::from_secret(&k)))
        .with_legacy_layout(true)
}

fn walk(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).unwrap().flatten() {
        if e.file_type().unwrap().is_dir() {
            out.extend(walk(&e.path()));
        } else {
            out.push(e.path());
        }
    }
    out.sort();
    out
}

/// Every distinct 4 KiB block of the files under `dir`, by its first 16 bytes.
fn blocks_of(dir: &Path, into: &mut HashMap<[u8; 16], Vec<Vec<u8>>>) {
    for f in walk(dir) {
        let b = std::fs::read(f).unwrap();
        for c in b.chunks_exact(BLOCK) {
            let e = into.entry(c[..16].try_into().unwrap()).or_default();
            if !e.iter().any(|x| x == c) {
                e.push(c.to_vec());
            }
        }
    }
}

/// How many of `blocks` appear, at any offset, in any file under `store`.
fn blocks_found(store: &Path, blocks: &HashMap<[u8; 16], Vec<Vec<u8>>>) -> usize {
    let mut found = HashSet::new();
    for f in walk(store) {
        let b = std::fs::read(f).unwrap();
        for i in 0..b.len().saturating_sub(BLOCK - 1) {
            let head: &[u8; 16] = b[i..i + 16].try_into().unwrap();
            if let Some(cands) = blocks.get(head) {
                for c in cands {
                    if &b[i..i + BLOCK] == c.as_slice() {
                        found.insert(c.clone());
                    }
                }
            }
        }
    }
    found.len()
}

/// Every 64-hex-digit name in the paths under `store`.
fn hex_names(store: &Path) -> HashSet<String> {
    let mut out = HashSet::new();
    for f in walk(store) {
        let s = f
            .strip_prefix(store)
            .unwrap()
            .to_string_lossy()
            .into_owned();
        for part in s.split(['/', '-', '.']) {
            if part.len() == 64 && part.bytes().all(|b| b.is_ascii_hexdigit()) {
                out.insert(part.to_string());
            }
        }
    }
    out
}

const KEY: [u8; 32] = [0x5a; 32];

#[test]
fn keyed_store_is_ciphertext_restores_exactly_and_refuses_forgeries() {
    let tmp = tempfile::tempdir().unwrap();
    let logdir = tmp.path().join("log");
    let mut log = Log::open_append(&logdir).unwrap();
    for h in 1..=5 {
        log.append(record(h)).unwrap();
    }
    drop(log);
    let log = Log::open_read(&logdir).unwrap();
    let keyed_dir = tmp.path().join("keyed");
    let plain_dir = tmp.path().join("plain");
    let keyed = open(&keyed_dir, Some(KEY));
    let plain = open(&plain_dir, None);
    let rep = push(&log, &keyed, &opts("v")).unwrap();
    assert_eq!((rep.records_uploaded, rep.pointers_written), (5, 5));
    push(&log, &plain, &opts("v")).unwrap();
    // What a key costs on the store: 49 bytes per object (magic, version, nonce, tag), 64 more
    // per pointer (its signature), and the marker.
    let size = |d: &Path| -> (u64, u64) {
        let fs = walk(d);
        let n = fs.len() as u64;
        (n, fs.iter().map(|f| f.metadata().unwrap().len()).sum())
    };
    let marker = std::fs::metadata(keyed_dir.join("layout.json"))
        .unwrap()
        .len();
    let ((kn, kb), (pn, pb)) = (size(&keyed_dir), size(&plain_dir));
    assert_eq!(
        kn,
        pn + 1,
        "the keyed store has the marker besides the same objects"
    );
    assert_eq!(
        kb,
        pb + 49 * pn + 64 * 5 + marker,
        "{kb} vs {pb}, {pn} objects"
    );

    // (b) Every height restores exactly, into empty and stale directories.
    let mut blocks = HashMap::new();
    let stale = tmp.path().join("stale");
    for h in 1..=5u64 {
        let local = tmp.path().join(format!("local{h}"));
        log.replay(h, &local, &no_sync()).unwrap();
        blocks_of(&local, &mut blocks);
        let fresh = tmp.path().join(format!("r{h}"));
        let r = replay(&keyed, "v", Some(h), true, &fresh, &no_sync()).unwrap();
        assert_eq!(r.records, h as usize);
        let want = btm_testkit::tree_digest(&local);
        assert_eq!(btm_testkit::tree_digest(&fresh), want, "height {h}");
        replay(&keyed, "v", Some(h), true, &stale, &no_sync()).unwrap();
        assert_eq!(btm_testkit::tree_digest(&stale), want, "stale, height {h}");
    }
    // A second push finds everything there (names are stable under one key: dedup works).
    let again = push(&log, &keyed, &opts("v")).unwrap();
    assert_eq!(
        (again.records_uploaded, again.objects_uploaded),
        (0, 0),
        "{again:?}"
    );
    let other = push(&log, &keyed, &opts("w")).unwrap();
    assert_eq!(
        other.objects_uploaded, 0,
        "same key, other volume: {other:?}"
    );

    // (a) No 4 KiB block of the data is on the keyed store; the same scan finds them all on
    // the plaintext one (so the scan works).
    let n = blocks.values().map(Vec::len).sum::<usize>();
    assert!(n > 100, "{n} blocks");
    assert_eq!(blocks_found(&keyed_dir, &blocks), 0);
    assert!(blocks_found(&plain_dir, &blocks) > n * 9 / 10);
    // No name on the keyed store is one the plaintext layout uses (content blake3s).
    let plain_names = hex_names(&plain_dir);
    let keyed_names = hex_names(&keyed_dir);
    assert!(plain_names.len() >= 10 && keyed_names.len() >= 10);
    assert!(plain_names.is_disjoint(&keyed_names));
    // Every object but the layout marker is sealed.
    for f in walk(&keyed_dir) {
        if f.ends_with("layout.json") {
            continue;
        }
        let b = std::fs::read(&f).unwrap();
        assert!(b.starts_with(b"btm.enc\n"), "{} is not sealed", f.display());
    }

    // (c) Without the key, or with another: refused, saying why.
    let e = list_heights(&open(&keyed_dir, None), "v", None).unwrap_err();
    assert!(
        matches!(&e, RemoteError::KeyMismatch(m) if m.contains("this remote is encrypted") && m.contains("--remote-key")),
        "{e:?}"
    );
    let e = replay(
        &open(&keyed_dir, None),
        "v",
        None,
        false,
        &tmp.path().join("x"),
        &no_sync(),
    )
    .unwrap_err();
    assert!(e.to_string().contains("encrypted"), "{e}");
    let e = push(&log, &open(&keyed_dir, None), &opts("v")).unwrap_err();
    assert!(e.to_string().contains("encrypted"), "{e}");
    let e = list_volumes(&open(&keyed_dir, Some([1; 32]))).unwrap_err();
    assert!(
        matches!(&e, RemoteError::KeyMismatch(m) if m.contains("wrong remote key")),
        "{e:?}"
    );
    // (e) A key given to a plaintext store is refused too; without it, it works as before.
    let e = list_heights(&open(&plain_dir, Some(KEY)), "v", None).unwrap_err();
    assert!(
        matches!(&e, RemoteError::KeyMismatch(m) if m.contains("plaintext")),
        "{e:?}"
    );
    let e = push(&log, &open(&plain_dir, Some(KEY)), &opts("v")).unwrap_err();
    assert!(e.to_string().contains("plaintext"), "{e}");
    let p5 = tmp.path().join("p5");
    replay(&plain, "v", Some(5), true, &p5, &no_sync()).unwrap();
    assert_eq!(
        btm_testkit::tree_digest(&p5),
        btm_testkit::tree_digest(&tmp.path().join("local5"))
    );

    // (d) Forgeries written with bucket access alone.
    let heights = keyed_dir.join("volumes/v/heights");
    let ptrs = walk(&heights);
    // A plaintext pointer (the old layout's JSON) naming a plaintext record copied over.
    let plain_ptr = walk(&plain_dir.join("volumes/v/heights"))
        .into_iter()
        .next()
        .unwrap();
    let forged = heights.join(plain_ptr.file_name().unwrap());
    std::fs::copy(&plain_ptr, &forged).unwrap();
    for rec in walk(&plain_dir.join("records")) {
        let to = keyed_dir.join(rec.strip_prefix(&plain_dir).unwrap());
        std::fs::create_dir_all(to.parent().unwrap()).unwrap();
        std::fs::copy(&rec, &to).unwrap();
    }
    let e = list_heights(&keyed, "v", None).unwrap_err();
    assert!(
        matches!(&e, RemoteError::Damaged(m) if m.contains("not sealed by this volume's remote key")),
        "{e:?}"
    );
    let e = replay(&keyed, "v", None, false, &tmp.path().join("y"), &no_sync()).unwrap_err();
    assert!(
        e.to_string()
            .contains("not sealed by this volume's remote key"),
        "{e}"
    );
    std::fs::remove_file(&forged).unwrap();
    // A genuine pointer moved to another height's name no longer opens.
    let moved = heights.join(format!(
        "{:020}-{}",
        99,
        ptrs[1]
            .file_name()
            .unwrap()
            .to_string_lossy()
            .split_once('-')
            .unwrap()
            .1
    ));
    std::fs::copy(&ptrs[1], &moved).unwrap();
    let e = list_heights(&keyed, "v", None).unwrap_err();
    assert!(e.to_string().contains("does not authenticate"), "{e}");
    std::fs::remove_file(&moved).unwrap();
    // A pointer sealed with another key (someone else's btm on the same bucket).
    let stranger = open(&tmp.path().join("stranger"), Some([7; 32]));
    push(&log, &stranger, &opts("v")).unwrap();
    let theirs = walk(&tmp.path().join("stranger/volumes/v/heights"));
    // (At a height of its own: two pointers of one height name one tree, and only one is read.)
    let planted = heights.join(format!(
        "{:020}-{}",
        98,
        theirs[0]
            .file_name()
            .unwrap()
            .to_string_lossy()
            .split_once('-')
            .unwrap()
            .1
    ));
    std::fs::copy(&theirs[0], &planted).unwrap();
    let e = list_heights(&keyed, "v", None).unwrap_err();
    assert!(
        matches!(&e, RemoteError::Damaged(m) if m.contains("does not authenticate") && m.contains("not sealed by this volume's remote key")),
        "{e:?}"
    );
    std::fs::remove_file(&planted).unwrap();
    // A record object replaced by a forged one: the restore through it is refused.
    let h1_ptr = &ptrs[0];
    let rec_hex = h1_ptr
        .file_name()
        .unwrap()
        .to_string_lossy()
        .split_once('-')
        .unwrap()
        .1
        .trim_end_matches(".sealed")
        .to_string();
    let rec_file = keyed_dir.join(format!("records/{}/{rec_hex}", &rec_hex[..2]));
    let genuine = std::fs::read(&rec_file).unwrap();
    let mut altered = genuine.clone();
    let last = altered.len() - 1;
    altered[last] ^= 1;
    std::fs::write(&rec_file, &altered).unwrap();
    let e = replay(
        &keyed,
        "v",
        Some(1),
        true,
        &tmp.path().join("z"),
        &no_sync(),
    )
    .unwrap_err();
    assert!(
        matches!(&e, RemoteError::Damaged(m) if m.contains("does not authenticate")),
        "{e:?}"
    );
    std::fs::write(&rec_file, &genuine).unwrap();
    // A payload object replaced: the restore names it.
    let obj = walk(&keyed_dir.join("objects")).into_iter().next().unwrap();
    let genuine = std::fs::read(&obj).unwrap();
    std::fs::write(&obj, b"btm.obj\n forged payload").unwrap();
    let mut failed = None;
    for h in 1..=5 {
        if let Err(e) = replay(
            &keyed,
            "v",
            Some(h),
            true,
            &tmp.path().join(format!("d{h}")),
            &no_sync(),
        ) {
            failed = Some(format!("{e:#}"));
        }
    }
    let e = failed.expect("no restore read the forged object");
    assert!(e.contains("not sealed by this volume's remote key"), "{e}");

    // push --verify opens and checks every object, and replaces one that does not open.
    std::fs::write(&obj, b"btm.enc\n\x01 damaged or forged").unwrap();
    let rep = push(
        &log,
        &keyed,
        &PushOptions {
            verify: true,
            ..opts("v")
        },
    )
    .unwrap();
    assert_eq!(rep.repaired, 1, "{rep:?}");
    assert_eq!(std::fs::read(&obj).unwrap().len(), genuine.len());

    // Prune with the key reads every chain and keeps what they reach (the copied plaintext
    // records are unreached and go).
    let rep = prune(&keyed, Duration::ZERO, false).unwrap();
    assert_eq!(rep.objects_deleted, 0, "{rep:?}");
    assert_eq!(rep.records_deleted, 5, "{rep:?}");
    let e = prune(&open(&keyed_dir, None), Duration::ZERO, true).unwrap_err();
    assert!(e.to_string().contains("encrypted"), "{e}");
    for h in 1..=5u64 {
        let out = tmp.path().join(format!("after{h}"));
        replay(&keyed, "v", Some(h), true, &out, &no_sync()).unwrap();
        assert_eq!(
            btm_testkit::tree_digest(&out),
            btm_testkit::tree_digest(&tmp.path().join(format!("local{h}")))
        );
    }
}

/// Objects big enough that a plaintext store reads their block tables by range; a keyed store
/// downloads them whole, and restores the same.
#[test]
fn keyed_store_restores_large_objects_whole() {
    let tmp = tempfile::tempdir().unwrap();
    let logdir = tmp.path().join("log");
    let mut log = Log::open_append(&logdir).unwrap();
    log.append(btm_log::testing::record(1, 1, noise(1, 3 << 20)))
        .unwrap();
    let mut data = noise(1, 3 << 20);
    data[5000] ^= 0xff;
    log.append(btm_log::testing::record(2, 1, data)).unwrap();
    drop(log);
    let log = Log::open_read(&logdir).unwrap();
    let keyed = open(&tmp.path().join("k"), Some(KEY));
    push(&log, &keyed, &opts("v")).unwrap();
    let out = tmp.path().join("out");
    for h in [1u64, 2, 1] {
        let local = tmp.path().join(format!("l{h}"));
        if !local.exists() {
            log.replay(h, &local, &no_sync()).unwrap();
        }
        replay(&keyed, "v", Some(h), true, &out, &no_sync()).unwrap();
        assert_eq!(
            btm_testkit::tree_digest(&out),
            btm_testkit::tree_digest(&local)
        );
    }
}

/// The marker is anyone's to write: whatever it says is refused with a sentence, never a panic.
#[test]
fn odd_markers_are_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("s");
    std::fs::create_dir_all(&dir).unwrap();
    let marker = |layout: u32, public_key: &str| {
        serde_json::json!({
            "layout": layout, "sealing": "xchacha20poly1305", "names": "blake3-keyed",
            "signatures": "ed25519", "public_key": public_key, "created_unix_ms": 1
        })
        .to_string()
    };
    std::fs::write(
        dir.join("layout.json"),
        marker(2, &format!("a{}", "é".repeat(40))),
    )
    .unwrap();
    let e = list_volumes(&open(&dir, None)).unwrap_err();
    assert!(e.to_string().contains("this remote is encrypted"), "{e}");
    let e = list_volumes(&open(&dir, Some(KEY))).unwrap_err();
    assert!(e.to_string().contains("wrong remote key"), "{e}");
    std::fs::write(dir.join("layout.json"), marker(5, "ab")).unwrap();
    let e = list_volumes(&open(&dir, Some(KEY))).unwrap_err();
    assert!(
        matches!(&e, RemoteError::Refused(m) if m.contains("use a newer btm")),
        "{e:?}"
    );
    std::fs::write(dir.join("layout.json"), b"\xff not json").unwrap();
    let e = list_volumes(&open(&dir, None)).unwrap_err();
    assert!(
        matches!(&e, RemoteError::Damaged(m) if m.contains("not a btm layout marker")),
        "{e:?}"
    );
}
