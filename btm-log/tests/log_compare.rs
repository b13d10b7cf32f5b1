//! `compare_tree` (`verify --volume`): a tree replayed from a height compares equal, and each
//! kind of difference is found and named, without the compare changing anything.

#[path = "log_support.rs"]
mod support;

use std::os::unix::fs::{FileExt, PermissionsExt};

use btm_log::{CompareOptions, ExtentBytes, Log, PathGlobs, compare_tree};
use support::{Model, Rng, quiet};

fn opts(skip: &[&str]) -> CompareOptions {
    CompareOptions {
        preserve: PathGlobs::new(skip).unwrap(),
        max_listed: 50,
        progress: false,
    }
}

#[test]
fn a_replayed_tree_compares_equal_and_every_difference_is_named() {
    let tmp = tempfile::tempdir().unwrap();
    let logdir = tmp.path().join("log");
    let (uid, gid) = (
        nix::unistd::getuid().as_raw(),
        nix::unistd::getgid().as_raw(),
    );
    let mut log = Log::open_append(&logdir).unwrap();
    let mut rng = Rng(7);
    let mut m = Model::new();
    m.mkdir(b"db".to_vec(), 0o755);
    let a = m.new_file(b"db/a".to_vec(), 0o644, uid, gid);
    m.set_size(a, 128 << 10);
    m.write(a, 0, ExtentBytes::Data(rng.bytes(128 << 10)));
    // 1 MiB with data only at 512 KiB: the rest is a hole that must read as zeros.
    let sparse = m.new_file(b"db/sparse".to_vec(), 0o600, uid, gid);
    m.set_size(sparse, 1 << 20);
    m.write(sparse, 512 << 10, ExtentBytes::Data(rng.bytes(4096)));
    let b = m.new_file(b"db/b".to_vec(), 0o644, uid, gid);
    m.set_size(b, 100);
    m.write(b, 0, ExtentBytes::Data(rng.bytes(100)));
    log.append(m.cut(1)).unwrap();
    drop(log);

    let log = Log::open_read(&logdir).unwrap();
    let vol = tmp.path().join("vol");
    log.replay(1, &vol, &quiet()).unwrap();
    let state = log.state_at(1).unwrap();
    // The differences found with `skip` left out, each as "path: what".
    let compare = |skip: &[&str]| {
        let d = compare_tree(&log, &state, 1, &vol, &opts(skip)).unwrap();
        let listed: Vec<String> = d.listed.iter().map(|(p, w)| format!("{p}: {w}")).collect();
        (d, listed)
    };
    let (d, _) = compare(&[]);
    assert_eq!(d.differences, 0, "{d:?}");
    assert_eq!(d.entries_compared, 4, "{d:?}");
    assert_eq!(d.bytes_compared, (128 << 10) + (1 << 20) + 100, "{d:?}");

    // One of each difference.
    let f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(vol.join("db/a"))
        .unwrap();
    let mut byte = [0u8; 1];
    f.read_exact_at(&mut byte, 70_000).unwrap();
    f.write_all_at(&[byte[0] ^ 1], 70_000).unwrap();
    let f = std::fs::OpenOptions::new()
        .write(true)
        .open(vol.join("db/sparse"))
        .unwrap();
    f.write_all_at(&[9], 100).unwrap();
    std::fs::set_permissions(vol.join("db/b"), std::fs::Permissions::from_mode(0o640)).unwrap();
    std::fs::write(vol.join("db/extra"), b"x").unwrap();
    nix::unistd::mkfifo(&vol.join("db/fifo"), nix::sys::stat::Mode::S_IRWXU).unwrap();
    std::fs::create_dir(vol.join("db/b.d")).unwrap();
    std::fs::rename(vol.join("db/b"), vol.join("db/b.d/b")).unwrap();
    std::fs::rename(vol.join("db/b.d"), vol.join("db/b")).unwrap();

    let (d, listed) = compare(&[]);
    let has = |s: &str| listed.iter().any(|l| l.contains(s));
    assert!(has("db/a: bytes differ at offset 70000"), "{listed:?}");
    assert!(
        has("db/sparse: bytes differ at offset 100 (a hole in the height)"),
        "{listed:?}"
    );
    assert!(has("db/extra: not in the height"), "{listed:?}");
    assert!(
        has("db/b: kind (the height has a regular file here)"),
        "{listed:?}"
    );
    assert_eq!(d.differences, 4, "{listed:?}");
    assert_eq!(d.skipped, 1, "the FIFO is skipped as cuts skip it: {d:?}");

    // The compare wrote nothing: the differences are still there.
    let mut now = [0u8; 1];
    std::fs::File::open(vol.join("db/a"))
        .unwrap()
        .read_exact_at(&mut now, 70_000)
        .unwrap();
    assert_eq!(now[0], byte[0] ^ 1);
    assert!(vol.join("db/extra").exists() && vol.join("db/b/b").exists());

    // Back where it was, but with another mode: only the mode differs. Skipped paths are not
    // compared.
    std::fs::rename(vol.join("db/b/b"), vol.join("db/b.f")).unwrap();
    std::fs::remove_dir(vol.join("db/b")).unwrap();
    std::fs::rename(vol.join("db/b.f"), vol.join("db/b")).unwrap();
    let (d, listed) = compare(&["db/a", "db/sparse", "db/extra"]);
    assert_eq!(listed, vec!["db/b: mode 640, the height has 644"], "{d:?}");

    // A file the height has and the tree lost.
    std::fs::remove_file(vol.join("db/b")).unwrap();
    let (d, listed) = compare(&["db/a", "db/sparse", "db/extra"]);
    assert_eq!(listed, vec!["db/b: missing (the height has it)"], "{d:?}");

    // A lost directory is one difference that counts what was under it.
    std::fs::remove_dir_all(vol.join("db")).unwrap();
    let (d, listed) = compare(&[]);
    assert_eq!(
        listed,
        vec!["db: missing, with the 3 entries under it (the height has them)"],
        "{d:?}"
    );
    assert_eq!(d.differences, 1, "{d:?}");
}
