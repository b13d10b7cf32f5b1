//! Encrypted offsite copies end to end (issue 18): a remote key made by `remote-key generate`,
//! an agent shipping with `run --remote --remote-key`, what lands on a `file://` store and on a
//! real S3 server (moto) scanned for plaintext, every height restored, and a store used without
//! its key, with another key, or with objects forged through bucket access alone.
mod offsite_support;

use std::collections::{HashMap, HashSet};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use btm_agent::treehash::hash_tree;
use btm_tests::{LoopFs, can_run, scratch};
use offsite_support::{BUCKET, Cli, Moto, cut_heights};

const BLOCK: usize = 4096;

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

/// Every distinct 4 KiB block of the files under `dir` that is not all one byte, by its first
/// 16 bytes.
fn blocks_of(dir: &Path) -> HashMap<[u8; 16], Vec<Vec<u8>>> {
    let mut out: HashMap<[u8; 16], Vec<Vec<u8>>> = HashMap::new();
    for f in walk(dir) {
        let b = std::fs::read(f).unwrap();
        for c in b.chunks_exact(BLOCK) {
            if c.iter().all(|x| *x == c[0]) {
                continue;
            }
            let e = out.entry(c[..16].try_into().unwrap()).or_default();
            if !e.iter().any(|x| x == c) {
                e.push(c.to_vec());
            }
        }
    }
    out
}

/// A sealed object, or a pack (layout 3): its magic, then entries each sealed on its own (the
/// first is checked here; that no plaintext block appears anywhere is checked apart).
fn sealed(b: &[u8]) -> bool {
    b.starts_with(b"btm.enc\n") || (b.starts_with(b"btm.pak\n") && b[8..].starts_with(b"btm.enc\n"))
}

/// How many distinct `blocks` appear, at any offset, in `objects`.
fn blocks_found<'a>(
    objects: impl IntoIterator<Item = &'a [u8]>,
    blocks: &HashMap<[u8; 16], Vec<Vec<u8>>>,
) -> usize {
    let mut found = HashSet::new();
    for b in objects {
        for i in 0..b.len().saturating_sub(BLOCK - 1) {
            let head: &[u8; 16] = b[i..i + 16].try_into().unwrap();
            for c in blocks.get(head).into_iter().flatten() {
                if &b[i..i + BLOCK] == c.as_slice() {
                    found.insert(c.clone());
                }
            }
        }
    }
    found.len()
}

/// The 64-hex-digit parts of object names.
fn hex_names<'a>(names: impl IntoIterator<Item = &'a str>) -> HashSet<String> {
    let mut out = HashSet::new();
    for s in names {
        for part in s.split(['/', '-', '.']) {
            if part.len() == 64 && part.bytes().all(|b| b.is_ascii_hexdigit()) {
                out.insert(part.to_string());
            }
        }
    }
    out
}

fn heights(cli: &Cli, args: &[&str]) -> Vec<u64> {
    let mut a = vec!["list"];
    a.extend_from_slice(args);
    cli.json(&a)
        .as_array()
        .unwrap()
        .iter()
        .map(|x| x["height"].as_u64().unwrap())
        .collect()
}

#[test]
fn keyed_offsite_copy_is_ciphertext_restores_and_refuses_forgeries() {
    if !can_run("offsite") {
        return;
    }
    let fs = LoopFs::new("ext4", 256).unwrap();
    let work = tempfile::Builder::new()
        .prefix("btm-offsite-keyed-")
        .tempdir_in(scratch())
        .unwrap();
    let cli = Cli { env: vec![] };
    let key = work.path().join("remote.key");
    let key_s = key.to_str().unwrap();

    // (f) The key file: mode 0600, never overwritten, refused once others may read it.
    let out = cli
        .run(&["remote-key", "generate", "--out", key_s])
        .unwrap();
    assert!(out.contains("public key"), "{out}");
    let mode = std::fs::metadata(&key).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600);
    let e = cli
        .run(&["remote-key", "generate", "--out", key_s])
        .unwrap_err();
    assert!(e.contains("not overwriting"), "{e}");
    let wrong = work.path().join("wrong.key");
    cli.run(&["remote-key", "generate", "--out", wrong.to_str().unwrap()])
        .unwrap();

    // `run --remote --remote-key` ships every height, sealed.
    let store = work.path().join("store");
    let remote = format!("file://{}", store.display());
    let log = work.path().join("log");
    let log_s = log.to_str().unwrap();
    let n = 10u64;
    let (states, _, mut agent) = cut_heights(
        &fs.mnt,
        &log,
        &work.path().join("s.sock"),
        n,
        &["--remote", &remote, "--remote-key", key_s],
    );
    let keyed = ["--remote", remote.as_str(), "--remote-key", key_s];
    let t0 = Instant::now();
    while cli
        .run(&[&["list", "--json"][..], &keyed[..]].concat())
        .ok()
        .and_then(|o| serde_json::from_str::<serde_json::Value>(&o).ok())
        .and_then(|v| v.as_array().map(Vec::len))
        != Some(n as usize)
    {
        assert!(
            t0.elapsed() < Duration::from_secs(60),
            "the agent did not ship {n} heights"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    assert_eq!(agent.terminate().code(), Some(0));
    assert_eq!(heights(&cli, &keyed), (1..=n).collect::<Vec<_>>());

    // (b) Every height restores exactly, with the key from the environment too.
    let env_cli = Cli {
        env: vec![("BTM_REMOTE_KEY_FILE", key_s.to_string())],
    };
    for h in 1..=n {
        let into = work.path().join(format!("r{h}"));
        env_cli.replay(&remote, h, &into).unwrap();
        assert_eq!(
            hash_tree(&into).unwrap(),
            states[h as usize - 1].1,
            "height {h}"
        );
    }

    // (a) No 4 KiB block of the volume's files is in any object; the same log pushed without
    // a key shows the scan finds them, and shares no object name with the keyed store.
    let blocks = blocks_of(&fs.mnt);
    let total = blocks.values().map(Vec::len).sum::<usize>();
    assert!(total > 300, "{total} blocks");
    let bodies: Vec<Vec<u8>> = walk(&store)
        .iter()
        .map(|f| std::fs::read(f).unwrap())
        .collect();
    assert_eq!(blocks_found(bodies.iter().map(Vec::as_slice), &blocks), 0);
    for (f, b) in walk(&store).iter().zip(&bodies) {
        assert!(
            f.ends_with("layout.json") || sealed(b),
            "{} is not sealed",
            f.display()
        );
    }
    let plain = work.path().join("plain");
    let plain_remote = format!("file://{}", plain.display());
    cli.json(&["push", "--log", log_s, "--remote", &plain_remote]);
    let plain_bodies: Vec<Vec<u8>> = walk(&plain)
        .iter()
        .map(|f| std::fs::read(f).unwrap())
        .collect();
    assert!(blocks_found(plain_bodies.iter().map(Vec::as_slice), &blocks) > total * 9 / 10);
    let rel = |root: &Path| -> Vec<String> {
        walk(root)
            .iter()
            .map(|f| f.strip_prefix(root).unwrap().to_string_lossy().into_owned())
            .collect()
    };
    let (keyed_names, plain_names) = (rel(&store), rel(&plain));
    let (k, p) = (
        hex_names(keyed_names.iter().map(String::as_str)),
        hex_names(plain_names.iter().map(String::as_str)),
    );
    // Records, packs and pointers (payloads are inside packs).
    assert!(k.len() > 10 && p.len() > 10, "{} {}", k.len(), p.len());
    assert!(k.is_disjoint(&p));

    // (c) Without the key, or with another: refused, saying what to do.
    let e = cli.run(&["list", "--remote", &remote]).unwrap_err();
    assert!(
        e.contains("this remote is encrypted") && e.contains("--remote-key"),
        "{e}"
    );
    let e = cli
        .replay(&remote, n, &work.path().join("nokey"))
        .unwrap_err();
    assert!(e.contains("this remote is encrypted"), "{e}");
    let e = cli
        .run(&[
            "list",
            "--remote",
            &remote,
            "--remote-key",
            wrong.to_str().unwrap(),
        ])
        .unwrap_err();
    assert!(e.contains("wrong remote key"), "{e}");
    // A key readable by others is refused before anything is read.
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o644)).unwrap();
    let e = cli.run(&[&["list"][..], &keyed[..]].concat()).unwrap_err();
    assert!(e.contains("chmod 600"), "{e}");
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o600)).unwrap();
    // (e) The plaintext store: restores without a key as before, and refuses one.
    let into = work.path().join("plain-r");
    cli.replay(&plain_remote, n, &into).unwrap();
    assert_eq!(hash_tree(&into).unwrap(), states[n as usize - 1].1);
    let e = cli
        .run(&["list", "--remote", &plain_remote, "--remote-key", key_s])
        .unwrap_err();
    assert!(e.contains("plaintext offsite copy"), "{e}");

    // (d) A pointer and record forged with plain file access (bucket credentials, no key): a
    // new height whose record is a plaintext record object.
    let vol = std::fs::read_dir(store.join("volumes"))
        .unwrap()
        .next()
        .unwrap()
        .unwrap()
        .path();
    let plain_vol = std::fs::read_dir(plain.join("volumes"))
        .unwrap()
        .next()
        .unwrap()
        .unwrap()
        .path();
    for rec in walk(&plain.join("records")) {
        let to = store.join(rec.strip_prefix(&plain).unwrap());
        std::fs::create_dir_all(to.parent().unwrap()).unwrap();
        std::fs::copy(&rec, to).unwrap();
    }
    let newest = walk(&plain_vol.join("heights")).pop().unwrap();
    let forged_name = newest.file_name().unwrap().to_string_lossy().replacen(
        &format!("{n:020}"),
        &format!("{:020}", n + 1),
        1,
    );
    let forged = vol.join("heights").join(&forged_name);
    let body = std::fs::read_to_string(&newest).unwrap().replace(
        &format!("\"height\": {n}"),
        &format!("\"height\": {}", n + 1),
    );
    std::fs::write(&forged, body).unwrap();
    let e = cli.run(&[&["list"][..], &keyed[..]].concat()).unwrap_err();
    assert!(
        e.contains("not sealed by this volume's remote key") && e.contains(&forged_name),
        "{e}"
    );
    let e = env_cli
        .replay(&remote, n + 1, &work.path().join("forged"))
        .unwrap_err();
    assert!(e.contains("not sealed by this volume's remote key"), "{e}");
    // The same bytes sealed with another key (another btm on the same bucket) fail too.
    let other = work.path().join("other");
    cli.json(&[
        "push",
        "--log",
        log_s,
        "--remote",
        &format!("file://{}", other.display()),
        "--remote-key",
        wrong.to_str().unwrap(),
    ]);
    std::fs::remove_file(&forged).unwrap();
    let theirs = walk(&other.join("volumes"))
        .into_iter()
        .rfind(|f| f.to_string_lossy().ends_with(".sealed"))
        .unwrap();
    // At a height of its own (of two pointers for one height only one is read).
    let planted = vol
        .join("heights")
        .join(theirs.file_name().unwrap().to_string_lossy().replacen(
            &format!("{n:020}"),
            &format!("{:020}", n + 1),
            1,
        ));
    std::fs::copy(&theirs, &planted).unwrap();
    let e = cli.run(&[&["list"][..], &keyed[..]].concat()).unwrap_err();
    assert!(
        e.contains("does not authenticate") && e.contains("not sealed by this volume's remote key"),
        "{e}"
    );
    std::fs::remove_file(&planted).unwrap();
    assert_eq!(heights(&cli, &keyed), (1..=n).collect::<Vec<_>>());

    // Prune with the key keeps every height (the copied plaintext records go).
    let rep = cli.json(&[&["prune", "--grace", "0"][..], &keyed[..]].concat());
    assert_eq!(rep["objects_deleted"], 0, "{rep}");
    let into = work.path().join("after-prune");
    env_cli.replay(&remote, n, &into).unwrap();
    assert_eq!(hash_tree(&into).unwrap(), states[n as usize - 1].1);
}

#[test]
fn s3_keyed_push_is_ciphertext_and_restores() {
    if !can_run("offsite") {
        return;
    }
    let Some(moto) = Moto::start() else { return };
    let cli = Cli::s3(format!("http://127.0.0.1:{}", moto.port));
    let fs = LoopFs::new("ext4", 256).unwrap();
    let work = tempfile::Builder::new()
        .prefix("btm-offsite-keyed-s3-")
        .tempdir_in(scratch())
        .unwrap();
    let log = work.path().join("log");
    let (states, _, agent) = cut_heights(&fs.mnt, &log, &work.path().join("s.sock"), 8, &[]);
    drop(agent);
    let key = work.path().join("k");
    cli.run(&["remote-key", "generate", "--out", key.to_str().unwrap()])
        .unwrap();
    let remote = format!("s3://{BUCKET}/keyed");
    let keyed = [
        "--remote",
        remote.as_str(),
        "--remote-key",
        key.to_str().unwrap(),
    ];
    let rep = cli.json(&[&["push", "--log", log.to_str().unwrap()][..], &keyed[..]].concat());
    assert_eq!(rep["newest_height"], 8, "{rep}");
    assert_eq!(heights(&cli, &keyed), (1..=8).collect::<Vec<_>>());
    for h in [1u64, 8] {
        let into = work.path().join(format!("s3-{h}"));
        cli.run(
            &[
                &[
                    "replay",
                    "--to",
                    &h.to_string(),
                    "--exact",
                    "--into",
                    into.to_str().unwrap(),
                ][..],
                &keyed[..],
            ]
            .concat(),
        )
        .unwrap();
        assert_eq!(hash_tree(&into).unwrap(), states[h as usize - 1].1);
    }
    // What the server holds, read with its own client: sealed bodies, no plaintext block.
    let dump = work.path().join("dump");
    std::fs::create_dir_all(&dump).unwrap();
    moto.boto(&format!(
        "import os\n\
         for o in s3.list_objects_v2(Bucket='{BUCKET}', Prefix='keyed/')['Contents']:\n\
         \x20   b = s3.get_object(Bucket='{BUCKET}', Key=o['Key'])['Body'].read()\n\
         \x20   p = os.path.join('{}', o['Key'])\n\
         \x20   os.makedirs(os.path.dirname(p), exist_ok=True)\n\
         \x20   open(p, 'wb').write(b)",
        dump.display()
    ));
    let files = walk(&dump);
    assert!(files.len() > 10, "{files:?}");
    let bodies: Vec<Vec<u8>> = files.iter().map(|f| std::fs::read(f).unwrap()).collect();
    for (f, b) in files.iter().zip(&bodies) {
        assert!(f.ends_with("layout.json") || sealed(b), "{}", f.display());
    }
    assert_eq!(
        blocks_found(bodies.iter().map(Vec::as_slice), &blocks_of(&fs.mnt)),
        0
    );
    let e = cli.run(&["list", "--remote", &remote]).unwrap_err();
    assert!(e.contains("this remote is encrypted"), "{e}");
}
