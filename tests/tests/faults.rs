//! Faults the main job must survive: kill -9 of the agent during cuts, a full disk under the
//! log, two agents on one volume, heights that do not increase, no agent running.
use std::{
    collections::BTreeMap,
    fs,
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::Duration,
};

use btm_agent::{
    cmd::proto,
    cut::Cutter,
    log::{Log, ReplayOptions},
    tracker::{Limits, Tracker},
    treehash::{TreeHash, diff, hash_tree},
    volume::Mount,
};
use btm_tests::{LoopFs, Rng, Running, agent_bin, can_run, scratch, sh, wait_listening};

fn start_agent(volume: &Path, log: &Path, socket: &Path) -> Running {
    // The agent's log lines go beside its socket, for failure messages.
    let err_path = socket.with_extension("err");
    let child = Command::new(agent_bin())
        .args(["run", "--volume"])
        .arg(volume)
        .arg("--log")
        .arg(log)
        .arg("--socket")
        .arg(socket)
        .stdout(Stdio::null())
        .stderr(fs::File::create(&err_path).unwrap())
        .spawn()
        .unwrap();
    let mut agent = Running::new(child);
    wait_listening(&mut agent, socket, || {
        fs::read_to_string(&err_path).unwrap_or_default()
    });
    agent
}

/// Replays each of `heights` from `log` into a scratch directory under `work` and checks it
/// equals the tree hashed at that height's cut.
fn assert_replays(
    log: &Log,
    heights: impl IntoIterator<Item = u64>,
    expected: &BTreeMap<u64, TreeHash>,
    work: &Path,
    when: &str,
) {
    let opts = ReplayOptions {
        progress: false,
        ..Default::default()
    };
    for h in heights {
        let into = work.join(format!("r{h}"));
        log.replay(h, &into, &opts).unwrap();
        let d = diff(&expected[&h], &hash_tree(&into).unwrap());
        assert!(d.is_empty(), "height {h} {when}:\n{}", d.join("\n"));
        fs::remove_dir_all(&into).unwrap();
    }
}

/// `btm-agent rollback` (through the agent on `socket` when one runs); must succeed.
fn rollback(volume: &Path, log: &Path, socket: &Path, args: &[&str]) {
    let out = Command::new(agent_bin())
        .args(["rollback", "--volume"])
        .arg(volume)
        .arg("--log")
        .arg(log)
        .arg("--socket")
        .arg(socket)
        .args(args)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn mutate(root: &Path, rng: &mut Rng, h: u64) {
    let dir = root.join("data");
    fs::create_dir_all(&dir).unwrap();
    for i in 0..3 {
        let p = dir.join(format!("f{}", rng.below(12)));
        let len = 1 + rng.below(400_000) as usize;
        if i == 0 || !p.exists() {
            fs::write(&p, rng.bytes(len)).unwrap();
        } else {
            use std::os::unix::fs::FileExt;
            let f = fs::OpenOptions::new().write(true).open(&p).unwrap();
            f.write_all_at(&rng.bytes(len.min(50_000)), rng.below(300_000))
                .unwrap();
        }
    }
    fs::write(root.join("height"), h.to_string()).unwrap();
}

#[test]
fn kill_dash_nine_during_cuts() {
    if !can_run("kill -9 during cuts") {
        return;
    }
    let fs_ = LoopFs::new("ext4", 1024).unwrap();
    let work = tempfile::Builder::new()
        .prefix("btm-kill-")
        .tempdir_in(scratch())
        .unwrap();
    let (log, socket) = (work.path().join("log"), work.path().join("agent.sock"));
    let mut rng = Rng(0xdead_beef);
    let mut expected: BTreeMap<u64, TreeHash> = BTreeMap::new();
    let mut acked = Vec::new();
    let mut h = 0;

    // No agent yet: the client says so.
    let err = proto::snapshot(&socket, 1, Duration::from_secs(2))
        .unwrap_err()
        .to_string();
    assert!(err.contains("no btm agent is listening"), "{err}");

    for round in 0..6 {
        let mut agent = start_agent(&fs_.mnt, &log, &socket);
        if round == 0 {
            // A second agent on the same volume is refused with a clear reason.
            let out = Command::new(agent_bin())
                .args(["run", "--volume"])
                .arg(&fs_.mnt)
                .arg("--log")
                .arg(work.path().join("log2"))
                .arg("--socket")
                .arg(work.path().join("other.sock"))
                .output()
                .unwrap();
            let msg = String::from_utf8_lossy(&out.stderr);
            assert!(
                !out.status.success() && msg.contains("another btm agent already tracks"),
                "{msg}"
            );
        }
        for i in 0..4 {
            h += 1;
            mutate(&fs_.mnt, &mut rng, h);
            expected.insert(h, hash_tree(&fs_.mnt).unwrap());
            let rep = proto::snapshot(&socket, h, Duration::from_secs(60)).unwrap();
            // After kill -9 the stat index the last agent wrote keeps the first cut from
            // reading everything (only files whose stat changed are read whole).
            assert!(
                i > 0 || round == 0 || rep["full"] == false,
                "round {round}: the first cut after kill -9 was full: {rep}\n{}",
                fs::read_to_string(socket.with_extension("err")).unwrap_or_default()
            );
            acked.push(h);
        }
        // The same height again is answered as durable without a new cut; a lower one that
        // was never recorded is refused, and nothing is lost by asking.
        let again = proto::snapshot(&socket, h, Duration::from_secs(60)).unwrap();
        assert_eq!(again["already_durable"], true, "{again}");
        let err = proto::snapshot(&socket, 0, Duration::from_secs(60))
            .unwrap_err()
            .to_string();
        assert!(err.contains("not above the last recorded height"), "{err}");

        // The stat index of this start (a thread writes it after the first height) is there
        // before the kill: the next start's first cut relies on it.
        let index = log.join("index.state");
        let t = std::time::Instant::now();
        while !index.exists() && t.elapsed() < Duration::from_secs(30) {
            std::thread::sleep(Duration::from_millis(20));
        }
        assert!(index.exists(), "round {round}: no stat index after 30 s");

        // One more cut, killed at a random instant while it runs.
        h += 1;
        mutate(&fs_.mnt, &mut rng, h);
        expected.insert(h, hash_tree(&fs_.mnt).unwrap());
        let s = socket.clone();
        let req =
            std::thread::spawn(move || proto::snapshot(&s, h, Duration::from_secs(60)).is_ok());
        std::thread::sleep(Duration::from_millis(rng.below(120)));
        agent.child.kill().unwrap();
        agent.child.wait().unwrap();
        if req.join().unwrap() {
            acked.push(h);
        }
        // The volume may be left frozen; the next agent thaws it. Mutating before that would
        // block, so the loop starts the agent first.
    }
    // A last agent thaws the volume; then the log must hold every acknowledged height.
    let mut agent = start_agent(&fs_.mnt, &log, &socket);
    agent.terminate();

    let l = Log::open_read(&log).unwrap();
    l.verify().unwrap();
    let heights: Vec<u64> = l.heights().iter().map(|i| i.height).collect();
    for a in &acked {
        assert!(
            heights.contains(a),
            "acknowledged height {a} missing after kill -9; log has {heights:?}"
        );
    }
    assert_replays(
        &l,
        heights.iter().copied(),
        &expected,
        work.path(),
        "after kill -9",
    );
    eprintln!(
        "kill -9: {} heights acknowledged, {} in the log, all replay exactly",
        acked.len(),
        heights.len()
    );
}

#[test]
fn disk_full_under_the_log() {
    if !can_run("disk full under the log") {
        return;
    }
    let fs_ = LoopFs::new("xfs", 1024).unwrap();
    let work = tempfile::Builder::new()
        .prefix("btm-full-")
        .tempdir_in(scratch())
        .unwrap();
    let logmnt = work.path().join("logfs");
    fs::create_dir(&logmnt).unwrap();
    sh(
        "mount",
        &[
            "-t",
            "tmpfs",
            "-o",
            "size=12m",
            "tmpfs",
            logmnt.to_str().unwrap(),
        ],
    )
    .unwrap();
    struct Umount(PathBuf);
    impl Drop for Umount {
        fn drop(&mut self) {
            // Busy at times in CI, with nothing of this test's open (checked): a sibling test's
            // child may hold an inherited descriptor for a moment. Detached then, so no tmpfs
            // is left behind; it goes once nothing holds it.
            let done = Command::new("umount").arg(&self.0).status();
            if !done.is_ok_and(|s| s.success()) {
                let _ = Command::new("umount").arg("-l").arg(&self.0).status();
            }
        }
    }
    let _guard = Umount(logmnt.clone());
    let logdir = logmnt.join("log");
    fs::create_dir(&logdir).unwrap();

    let mount = Mount::at(&fs_.mnt).unwrap();
    let tracker = Tracker::start(&mount, Limits::for_volume_bytes(1 << 30)).unwrap();
    let mut cutter = Cutter::new(mount, tracker, Log::open_append(&logdir).unwrap()).unwrap();
    let mut rng = Rng(42);
    let mut expected = BTreeMap::new();
    fs::write(fs_.path("small"), rng.bytes(100_000)).unwrap();
    cutter.cut(1).unwrap();
    expected.insert(1, hash_tree(&fs_.mnt).unwrap());

    // 40 MiB of incompressible data cannot fit in 12 MiB: the cut fails, cleanly.
    fs::write(fs_.path("big"), rng.bytes(40 << 20)).unwrap();
    let err = format!("{:#}", cutter.cut(2).unwrap_err());
    assert!(
        err.to_lowercase().contains("space"),
        "disk-full error should say so: {err}"
    );
    assert_eq!(cutter.log().last_height(), Some(1));

    // Make room on the volume side (the node pruned), the next cut works and is exact.
    fs::remove_file(fs_.path("big")).unwrap();
    fs::write(fs_.path("small"), rng.bytes(120_000)).unwrap();
    cutter.cut(3).unwrap();
    expected.insert(3, hash_tree(&fs_.mnt).unwrap());
    drop(cutter);

    let l = Log::open_read(&logdir).unwrap();
    l.verify().unwrap();
    assert_replays(
        &l,
        expected.keys().copied(),
        &expected,
        work.path(),
        "after disk full",
    );
}

#[test]
fn full_maps_degrade_to_whole_file_and_are_counted() {
    if !can_run("map overflow") {
        return;
    }
    let fs_ = LoopFs::new("ext4", 512).unwrap();
    let mount = Mount::at(&fs_.mnt).unwrap();
    // Room for 8 chunks (16 MiB of one file) per epoch.
    let mut tracker = Tracker::start(
        &mount,
        Limits {
            chunks: 8,
            files: 64,
        },
    )
    .unwrap();
    let p = fs_.path("big");
    fs::write(&p, vec![1u8; 64 << 20]).unwrap();
    let frozen = btm_agent::volume::Frozen::freeze(&fs_.mnt).unwrap();
    tracker.take().unwrap();
    frozen.thaw().unwrap();
    // One 4 KiB write in each of 32 different 2 MiB chunks.
    {
        use std::os::unix::fs::FileExt;
        let f = fs::OpenOptions::new().write(true).open(&p).unwrap();
        for c in 0..32u64 {
            f.write_all_at(&[7u8; 4096], c * (2 << 20)).unwrap();
        }
    }
    let set = tracker.take().unwrap();
    let ino = std::os::unix::fs::MetadataExt::ino(&fs::metadata(&p).unwrap());
    let st = tracker.stats().unwrap();
    assert!(st.chunk_overflows > 0, "overflow not counted: {st:?}");
    assert_eq!(st.lost, 0);
    assert_eq!(
        set.files[&ino].tail_from,
        Some(0),
        "a full map must degrade to a whole-file mark"
    );
}

#[test]
fn errors_say_what_to_do() {
    if !can_run("error messages") {
        return;
    }
    let dir = tempfile::tempdir_in(scratch()).unwrap();
    let out = Command::new(agent_bin())
        .args(["track", "--volume"])
        .arg(dir.path())
        .output()
        .unwrap();
    let msg = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && msg.contains("is not a mount point") && msg.contains("findmnt"),
        "{msg}"
    );

    // A filesystem the tracker's tests do not prove is refused, naming the fallback modes.
    let tm = tempfile::tempdir_in(scratch()).unwrap();
    sh(
        "mount",
        &["-t", "tmpfs", "tmpfs", tm.path().to_str().unwrap()],
    )
    .unwrap();
    let out = Command::new(agent_bin())
        .args(["track", "--volume"])
        .arg(tm.path())
        .output()
        .unwrap();
    let _ = Command::new("umount").arg(tm.path()).status();
    let msg = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success()
            && msg.contains("supports ext4, xfs and btrfs")
            && msg.contains("--mode zfs"),
        "{msg}"
    );

    let fs_ = LoopFs::new("ext4", 256).unwrap();
    let out = Command::new("setpriv")
        .args(["--reuid=65534", "--regid=65534", "--clear-groups"])
        .arg(agent_bin())
        .args(["track", "--volume"])
        .arg(&fs_.mnt)
        .output()
        .unwrap();
    let msg = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && msg.contains("needs root") && msg.contains("--mode"),
        "{msg}"
    );
}

#[test]
fn changes_while_the_agent_was_down_are_not_lost() {
    if !can_run("agent restart") {
        return;
    }
    let fs_ = LoopFs::new("xfs", 1024).unwrap();
    let work = tempfile::Builder::new()
        .prefix("btm-restart-")
        .tempdir_in(scratch())
        .unwrap();
    let (log, socket) = (work.path().join("log"), work.path().join("agent.sock"));
    let mut rng = Rng(9);
    let data = fs_.path("state.db");
    fs::write(&data, rng.bytes(8 << 20)).unwrap();
    fs::write(fs_.path("a"), rng.bytes(300_000)).unwrap();
    fs::write(fs_.path("b"), rng.bytes(200_000)).unwrap();
    let mut expected = BTreeMap::new();

    let mut agent = start_agent(&fs_.mnt, &log, &socket);
    proto::snapshot(&socket, 10, Duration::from_secs(60)).unwrap();
    expected.insert(10, hash_tree(&fs_.mnt).unwrap());
    agent.terminate();

    // While no agent runs: pwrite, a store through a shared mapping, a punched hole, a rename
    // over an existing file.
    {
        use std::os::unix::{fs::FileExt, io::AsRawFd};
        let f = fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(&data)
            .unwrap();
        f.write_all_at(&rng.bytes(5000), 3 << 20).unwrap();
        // SAFETY: shared mapping of our file, unmapped below.
        unsafe {
            let p = libc::mmap(
                std::ptr::null_mut(),
                8 << 20,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED,
                f.as_raw_fd(),
                0,
            ) as *mut u8;
            assert_ne!(p as *mut libc::c_void, libc::MAP_FAILED);
            *p.add(6 << 20) ^= 0xff;
            libc::munmap(p as *mut _, 8 << 20);
            libc::fallocate(
                f.as_raw_fd(),
                libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE,
                1 << 20,
                65536,
            );
        }
        fs::rename(fs_.path("b"), fs_.path("a")).unwrap();
    }

    let mut agent = start_agent(&fs_.mnt, &log, &socket);
    proto::snapshot(&socket, 11, Duration::from_secs(60)).unwrap();
    expected.insert(11, hash_tree(&fs_.mnt).unwrap());
    agent.terminate();

    let l = Log::open_read(&log).unwrap();
    assert_replays(
        &l,
        expected.keys().copied(),
        &expected,
        work.path(),
        "after a restart",
    );
    // The resync read everything but stored little: unchanged pieces deduplicate.
    let infos = l.heights();
    assert!(
        infos[1].stored_bytes < infos[0].stored_bytes / 2,
        "resync stored too much: {infos:?}"
    );
}

#[test]
fn rollback_drops_newer_heights_and_they_can_be_cut_again() {
    if !can_run("rollback then re-cut") {
        return;
    }
    let fs_ = LoopFs::new("ext4", 512).unwrap();
    let work = tempfile::Builder::new()
        .prefix("btm-recut-")
        .tempdir_in(scratch())
        .unwrap();
    let (log, socket) = (work.path().join("log"), work.path().join("agent.sock"));
    let mut rng = Rng(11);
    let mut expected = BTreeMap::new();
    let mut agent = start_agent(&fs_.mnt, &log, &socket);
    for h in 1..=6 {
        mutate(&fs_.mnt, &mut rng, h);
        proto::snapshot(&socket, h, Duration::from_secs(60)).unwrap();
        expected.insert(h, hash_tree(&fs_.mnt).unwrap());
    }
    // Through the running agent, as BTM's -r/-R do.
    rollback(&fs_.mnt, &log, &socket, &["--to", "3", "--exact"]);
    assert!(
        diff(&expected[&3], &hash_tree(&fs_.mnt).unwrap()).is_empty(),
        "volume not at height 3"
    );
    // The chain re-reaches 4..6 with other contents; those heights are cut again.
    for h in 4..=6 {
        mutate(&fs_.mnt, &mut rng, h + 100);
        proto::snapshot(&socket, h, Duration::from_secs(60)).unwrap();
        expected.insert(h, hash_tree(&fs_.mnt).unwrap());
    }
    // SIGTERM stops the agent even when its socket path is gone (the wake-up does not go
    // through the path).
    fs::remove_file(&socket).unwrap();
    agent.terminate();

    // Offline, without an agent: back to 5, which leaves 1..5.
    rollback(&fs_.mnt, &log, &socket, &["--to", "5"]);

    let l = Log::open_read(&log).unwrap();
    l.verify().unwrap();
    let hs: Vec<u64> = l.heights().iter().map(|i| i.height).collect();
    assert_eq!(hs, vec![1, 2, 3, 4, 5]);
    assert_replays(&l, hs, &expected, work.path(), "after rollbacks");
}

#[test]
fn an_unprivileged_node_hands_heights_over_through_its_group() {
    if !can_run("external mode") {
        return;
    }
    use std::os::unix::fs::PermissionsExt;
    let fs_ = LoopFs::new("ext4", 256).unwrap();
    let work = tempfile::Builder::new()
        .prefix("btm-ext-")
        .tempdir_in(scratch())
        .unwrap();
    // The node (uid/gid 65534) must reach the socket's directory.
    fs::set_permissions(work.path(), fs::Permissions::from_mode(0o755)).unwrap();
    let (log, socket) = (work.path().join("log"), work.path().join("agent.sock"));
    let err_path = socket.with_extension("err");
    let child = Command::new(agent_bin())
        .args(["run", "--volume"])
        .arg(&fs_.mnt)
        .arg("--log")
        .arg(&log)
        .arg("--socket")
        .arg(&socket)
        .args(["--socket-group", "65534", "--socket-mode", "660"])
        .stdout(Stdio::null())
        .stderr(fs::File::create(&err_path).unwrap())
        .spawn()
        .unwrap();
    let mut agent = Running::new(child);
    wait_listening(&mut agent, &socket, || {
        fs::read_to_string(&err_path).unwrap_or_default()
    });
    let md = fs::metadata(&socket).unwrap();
    assert_eq!(
        (
            std::os::unix::fs::MetadataExt::gid(&md),
            md.permissions().mode() & 0o777
        ),
        (65534, 0o660)
    );

    let as_user = |uid: &str, gid: &str, args: &[&str]| {
        Command::new("setpriv")
            .args([
                &format!("--reuid={uid}"),
                &format!("--regid={gid}"),
                "--clear-groups",
            ])
            .arg(agent_bin())
            .args(args)
            .arg("--socket")
            .arg(&socket)
            .output()
            .unwrap()
    };
    let as_node = |uid: &str, gid: &str, h: &str| as_user(uid, gid, &["snapshot", "--height", h]);
    for h in ["7", "9"] {
        let out = as_node("65534", "65534", h);
        assert!(
            out.status.success(),
            "node in the socket's group: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let out = as_node("65533", "65533", "10");
    let msg = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && msg.contains("ermission denied"),
        "outsider: {msg}"
    );
    // Nor a height so far above the last that every real one after it would be refused.
    let out = as_node("65534", "65534", "18446744073709551615");
    let msg = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && msg.contains("refused: it is more than"),
        "absurd height: {msg}"
    );
    // The node may hand over heights, but not roll back (which would erase height 9).
    let (mnt, logs) = (fs_.mnt.to_str().unwrap(), log.to_str().unwrap());
    let roll = [
        "rollback", "--volume", mnt, "--log", logs, "--to", "7", "--exact",
    ];
    let out = as_user("65534", "65534", &roll);
    let msg = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && msg.contains("only root may roll back"),
        "node asking for a rollback: {msg}"
    );
    agent.terminate();
    assert_eq!(btm_tests::log_heights(&log), vec![7, 9]);
}

#[test]
fn only_processes_mapping_the_volume_count_as_mappers() {
    if !can_run("mapper attribution") {
        return;
    }
    use std::io::{BufRead, BufReader, Write};
    let fs_ = LoopFs::new("ext4", 256).unwrap();
    let f = fs_.path("db");
    fs::write(&f, vec![0u8; 1 << 20]).unwrap();
    // Maps the file shared, forks a child that waits, reports both pids, waits for a line.
    const MAPPER: &str = r#"
import mmap, os, sys
fd = os.open(sys.argv[1], os.O_RDWR)
m = mmap.mmap(fd, 1 << 20)
r, w = os.pipe()
child = os.fork()
if child == 0:
    os.read(r, 1)
    os._exit(0)
print(os.getpid(), child, flush=True)
sys.stdin.readline()
os.write(w, b"x")
os.waitpid(child, 0)
"#;
    let spawn = || {
        let mut c = Command::new("python3")
            .args(["-c", MAPPER])
            .arg(&f)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        let mut line = String::new();
        BufReader::new(c.stdout.as_mut().unwrap())
            .read_line(&mut line)
            .unwrap();
        let pids: Vec<u32> = line
            .split_whitespace()
            .map(|p| p.parse().unwrap())
            .collect();
        (c, pids)
    };
    // Mapped before the tracker loads: found by the /proc seed (its child too: it inherited
    // the mapping).
    let (mut before, pids_before) = spawn();
    let mount = Mount::at(&fs_.mnt).unwrap();
    let tracker = Tracker::start(&mount, Limits::for_volume_bytes(256 << 20)).unwrap();
    // Mapped after: found by the mmap probe; its child by the fork probe.
    let (mut after, pids_after) = spawn();
    let bystander = Command::new("sleep").arg("30").spawn().unwrap();
    let _guard = Running::new(bystander);
    for pid in pids_before.iter().chain(&pids_after) {
        assert!(
            tracker.is_mapper(*pid),
            "process {pid} maps the volume but is not known"
        );
    }
    assert!(
        !tracker.is_mapper(_guard.pid()),
        "a process that maps nothing counted as a mapper"
    );
    assert!(
        !tracker.is_mapper(std::process::id()),
        "the test process maps nothing of the volume"
    );
    for c in [&mut before, &mut after] {
        c.stdin.as_mut().unwrap().write_all(b"\n").unwrap();
        c.wait().unwrap();
    }
}
