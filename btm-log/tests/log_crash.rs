//! Crashes: torn tails at every offset, garbage after the last record, kill -9 during appends,
//! a full disk.

#[path = "log_support.rs"]
mod support;

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Command, Stdio};

use btm_log::{CutRecord, ExtentBytes, Log, LogOptions, ReplayOptions};
use support::{Model, Rng, assert_tree, is_root, skip};

fn opts() -> ReplayOptions {
    ReplayOptions {
        progress: false,
        sync: false,
        ..Default::default()
    }
}

/// A small log of `n` heights; returns the models after each height.
fn small_log(dir: &Path, n: u64) -> Vec<Model> {
    let mut log = Log::open_append(dir).unwrap();
    let mut rng = Rng(99);
    let mut m = Model::new();
    let mut out = Vec::new();
    for h in 1..=n {
        if h < n {
            m.mkdir(format!("d{h}").into_bytes(), 0o755);
            let id = m.new_file(format!("d{h}/f").into_bytes(), 0o644, 0, 0);
            m.set_size(id, 2000);
            m.write(id, 0, ExtentBytes::Data(rng.data(2000)));
        } else {
            // The last record: a write into an existing file and a new file.
            m.write(1, 100, ExtentBytes::Data(rng.bytes(1500)));
            let id = m.new_file(b"last".to_vec(), 0o600, 0, 0);
            m.set_size(id, 700);
            m.write(id, 0, ExtentBytes::Data(rng.bytes(700)));
        }
        log.append(m.cut(h)).unwrap();
        out.push(m.clone());
    }
    out
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        std::fs::copy(e.path(), to.join(e.file_name())).unwrap();
    }
}

fn seg(dir: &Path) -> std::path::PathBuf {
    dir.join("seg-00000001.btm")
}

#[test]
fn torn_tail_at_every_offset() {
    let tmp = tempfile::tempdir().unwrap();
    let base = tmp.path().join("base");
    let models = small_log(&base, 6);
    let full = std::fs::read(seg(&base)).unwrap();
    let l6 = full.len() as u64;
    let l5 = {
        let log = Log::open_read(&base).unwrap();
        l6 - log.heights()[5].stored_bytes
    };
    assert!(l6 - l5 > 2000);

    // Every offset inside the last record: read mode ignores the torn tail.
    let work = tmp.path().join("work");
    copy_dir(&base, &work);
    let f = std::fs::OpenOptions::new()
        .write(true)
        .open(seg(&work))
        .unwrap();
    for cut in (l5..l6).rev() {
        f.set_len(cut).unwrap();
        let log = Log::open_read(&work).unwrap_or_else(|e| panic!("cut at {cut}: {e}"));
        let hs: Vec<u64> = log.heights().iter().map(|h| h.height).collect();
        assert_eq!(hs, vec![1, 2, 3, 4, 5], "cut at {cut}");
        assert_eq!(log.torn_tail().is_some(), cut > l5, "cut at {cut}");
    }
    drop(f);

    // A sample of offsets: append mode cuts the tail off, appends go on, everything replays.
    let mut sample: Vec<u64> = (l5..l6).step_by(173).collect();
    sample.extend([
        l5 + 1,
        l5 + 127,
        l5 + 128,
        l5 + 129,
        l6 - 48,
        l6 - 47,
        l6 - 1,
    ]);
    for cut in sample {
        let dir = tmp.path().join(format!("cut-{cut}"));
        copy_dir(&base, &dir);
        std::fs::OpenOptions::new()
            .write(true)
            .open(seg(&dir))
            .unwrap()
            .set_len(cut)
            .unwrap();
        let mut log = Log::open_append(&dir).unwrap();
        assert_eq!(log.last_height(), Some(5));
        assert_eq!(
            std::fs::metadata(seg(&dir)).unwrap().len(),
            l5,
            "cut at {cut}: tail not cut"
        );
        let mut m = models[4].clone();
        m.mkdir(b"after".to_vec(), 0o700);
        log.append(m.cut(7)).unwrap();
        drop(log);
        let log = Log::open_read(&dir).unwrap();
        assert!(log.torn_tail().is_none());
        log.verify().unwrap();
        for (h, model) in [(5, &models[4]), (7, &m)] {
            let into = dir.join(format!("r{h}"));
            log.replay(h, &into, &opts()).unwrap();
            assert_tree(&into, model, &format!("cut at {cut}, height {h}"));
        }
        support::remove_tree(&dir);
    }
}

#[test]
fn garbage_after_the_last_record() {
    let tmp = tempfile::tempdir().unwrap();
    let base = tmp.path().join("base");
    let models = small_log(&base, 4);
    let full = std::fs::read(seg(&base)).unwrap();
    let last_header = {
        let log = Log::open_read(&base).unwrap();
        let off = full.len() - log.heights()[3].stored_bytes as usize;
        full[off..off + 128].to_vec()
    };
    let mut rng = Rng(5);
    let garbages: Vec<Vec<u8>> = vec![
        vec![0],
        vec![0; 10_000],
        rng.data(100),
        [b"btm.rec\n".as_slice(), &rng.data(300)].concat(),
        last_header.clone(), // a valid header, nothing after it
        [last_header.as_slice(), &rng.data(50_000)].concat(), // ... and noise
    ];
    for (i, g) in garbages.iter().enumerate() {
        let dir = tmp.path().join(format!("g{i}"));
        copy_dir(&base, &dir);
        let mut bytes = full.clone();
        bytes.extend_from_slice(g);
        std::fs::write(seg(&dir), &bytes).unwrap();
        let log = Log::open_read(&dir).unwrap_or_else(|e| panic!("garbage {i}: {e}"));
        assert_eq!(log.last_height(), Some(4), "garbage {i}");
        let torn = log.torn_tail().expect("torn tail reported");
        assert_eq!(torn.bytes, g.len() as u64);
        drop(log);
        let mut log = Log::open_append(&dir).unwrap();
        assert_eq!(
            std::fs::metadata(seg(&dir)).unwrap().len(),
            full.len() as u64
        );
        let mut m = models[3].clone();
        m.remove(b"last");
        log.append(m.cut(5)).unwrap();
        log.verify().unwrap();
        let into = dir.join("r");
        log.replay(5, &into, &opts()).unwrap();
        assert_tree(&into, &m, &format!("garbage {i}"));
    }
}

/// A torn segment header (crash while creating a new segment) is removed by the appender.
#[test]
fn torn_new_segment() {
    let tmp = tempfile::tempdir().unwrap();
    let models = small_log(tmp.path(), 3);
    let seg2 = tmp.path().join("seg-00000002.btm");
    for len in [0usize, 5, 31, 32] {
        let mut hdr = b"btm.seg\n".to_vec();
        hdr.resize(32, 0);
        std::fs::write(&seg2, &hdr[..len]).unwrap();
        let log = Log::open_read(tmp.path()).unwrap();
        assert_eq!(log.last_height(), Some(3));
        assert!(log.torn_tail().is_some());
        drop(log);
        let log = Log::open_append(tmp.path()).unwrap();
        assert_eq!(log.last_height(), Some(3));
        assert!(!seg2.exists());
    }
    let mut log = Log::open_append(tmp.path()).unwrap();
    let mut m = models[2].clone();
    m.mkdir(b"z".to_vec(), 0o755);
    log.append(m.cut(4)).unwrap();
    log.verify().unwrap();
}

/// Child side of `kill9_during_append`: appends deterministic heights and acknowledges each.
#[test]
fn kill9_child() {
    let Some(dir) = std::env::var_os("BTM_LOG_KILL_CHILD") else {
        return;
    };
    let mut log = Log::open_append_with(
        Path::new(&dir),
        LogOptions {
            segment_size: 4 << 20,
            ..Default::default()
        },
    )
    .unwrap();
    let mut rng = Rng(42);
    let mut m = Model::new();
    for h in 1.. {
        kill9_changes(&mut m, &mut rng, h);
        log.append(m.cut(h)).unwrap();
        println!("ack {h}");
    }
}

/// Random changes plus a few MiB of incompressible data, so that appends take long enough for
/// the kill to land inside one.
fn kill9_changes(m: &mut Model, rng: &mut Rng, h: u64) {
    const BIG: u64 = 16 << 20;
    if h == 1 {
        m.mkdir(b"kill9".to_vec(), 0o755);
        let id = m.new_file(b"kill9/big".to_vec(), 0o644, 0, 0);
        m.set_size(id, BIG);
    }
    m.random_changes(rng);
    let big = m.nodes.get(b"kill9/big".as_slice()).and_then(|n| {
        if let support::MNode::File(id) = n {
            Some(*id)
        } else {
            None
        }
    });
    if let Some(id) = big {
        let len = (1 << 20) + rng.below(3 << 20);
        let off = rng.below(BIG - len);
        let d = rng.bytes(len as usize);
        m.write(id, off, ExtentBytes::Data(d));
    }
}

fn model_at(h: u64) -> Model {
    let mut rng = Rng(42);
    let mut m = Model::new();
    for i in 1..=h {
        kill9_changes(&mut m, &mut rng, i);
        let _ = m.cut(i);
    }
    m
}

#[test]
fn kill9_during_append() {
    let tmp = tempfile::tempdir().unwrap();
    let exe = std::env::current_exe().unwrap();
    let mut rng = Rng(1);
    let mut torn = 0;
    for round in 0..8 {
        let dir = tmp.path().join(format!("round{round}"));
        let mut child = Command::new(&exe)
            .args(["kill9_child", "--exact", "--nocapture", "--test-threads=1"])
            .env("BTM_LOG_KILL_CHILD", &dir)
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let want = 2 + rng.below(8);
        let mut acked = 0;
        let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
        while acked < want {
            let Some(line) = lines.next() else { break };
            if let Some(h) = line.unwrap().strip_prefix("ack ") {
                acked = h.parse().unwrap();
            }
        }
        std::thread::sleep(std::time::Duration::from_micros(rng.below(60_000)));
        child.kill().unwrap(); // SIGKILL
        child.wait().unwrap();
        // Later acks may have been printed before the kill landed.
        for line in lines.map_while(Result::ok) {
            if let Some(h) = line.strip_prefix("ack ") {
                acked = h.parse().unwrap();
            }
        }
        assert!(acked >= 1, "round {round}: the child acknowledged nothing");
        let log = Log::open_append(&dir).unwrap();
        let last = log.last_height().unwrap();
        assert!(
            last >= acked,
            "round {round}: acknowledged {acked}, log ends at {last}"
        );
        assert!(
            last <= acked + 1,
            "round {round}: log ends at {last}, acknowledged {acked}"
        );
        log.verify().unwrap();
        for h in [acked, last] {
            let into = dir.join(format!("r{h}"));
            log.replay(h, &into, &opts()).unwrap();
            assert_tree(&into, &model_at(h), &format!("round {round} height {h}"));
        }
        eprintln!(
            "round {round}: acked {acked}, log at {last}, torn: {:?}",
            log.torn_tail()
        );
        torn += log.torn_tail().is_some() as u32;
    }
    eprintln!("{torn} of 8 kills left a torn tail");
}

/// A full disk: appends fail cleanly, leave the log as it was, and later appends work.
#[test]
fn full_disk_leaves_the_log_intact() {
    if !is_root() {
        skip(
            "full_disk_leaves_the_log_intact needs root to mount a small tmpfs (the failing-writer unit test covers the logic)",
        );
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let mnt = tmp.path().join("mnt");
    std::fs::create_dir(&mnt).unwrap();
    if let Err(e) = nix::mount::mount(
        Some("tmpfs"),
        &mnt,
        Some("tmpfs"),
        nix::mount::MsFlags::empty(),
        Some("size=2m"),
    ) {
        skip(&format!("cannot mount tmpfs: {e}"));
        return;
    }
    struct Unmount<'a>(&'a Path);
    impl Drop for Unmount<'_> {
        fn drop(&mut self) {
            let _ = nix::mount::umount(self.0);
        }
    }
    let _guard = Unmount(&mnt);
    let dir = mnt.join("log");
    let mut log = Log::open_append_with(
        &dir,
        LogOptions {
            segment_size: 300 << 10,
            chunk_size: 64 << 10,
            ..Default::default()
        },
    )
    .unwrap();
    let mut rng = Rng(3);
    let mut m = Model::new();
    let id = m.new_file(b"f".to_vec(), 0o644, 0, 0);
    m.set_size(id, 1 << 20);
    let mut h = 0;
    let mut failures = 0;
    let mut size = 250_000usize;
    let mut good = m.clone();
    while size > 1000 {
        h += 1;
        let before: Vec<(std::path::PathBuf, u64)> = std::fs::read_dir(&dir)
            .unwrap()
            .map(|e| {
                let e = e.unwrap();
                (e.path(), e.metadata().unwrap().len())
            })
            .collect();
        let heights = log.heights();
        let mut noise = Vec::with_capacity(size);
        while noise.len() < size {
            noise.extend_from_slice(&rng.next_u64().to_le_bytes());
        }
        let off = rng.below((1 << 20) - size as u64);
        let mut trial = good.clone();
        trial.write(id, off, ExtentBytes::Data(noise));
        match log.append(trial.cut(h)) {
            Ok(_) => good = trial,
            Err(e) => {
                assert!(e.is_io_kind(std::io::ErrorKind::StorageFull), "{e}");
                failures += 1;
                size /= 2;
                let mut after: Vec<(std::path::PathBuf, u64)> = std::fs::read_dir(&dir)
                    .unwrap()
                    .map(|e| {
                        let e = e.unwrap();
                        (e.path(), e.metadata().unwrap().len())
                    })
                    .collect();
                let mut b = before.clone();
                b.sort();
                after.sort();
                assert_eq!(after, b, "a failed append changed the log files");
                assert_eq!(log.heights(), heights);
                let r = Log::open_read(&dir).unwrap();
                assert_eq!(r.heights(), heights);
                assert!(r.torn_tail().is_none());
            }
        }
    }
    assert!(failures >= 2, "the disk never filled up");
    // Free space and go on.
    let n = log.heights().len();
    assert!(n >= 2);
    let small = CutRecord {
        height: h + 1,
        ..Default::default()
    };
    log.append(small).unwrap();
    log.verify().unwrap();
    let into = tmp.path().join("r");
    log.replay(log.last_height().unwrap(), &into, &opts())
        .unwrap();
    assert_tree(&into, &good, "after the disk filled up");
}
