//! A freeze outlives the process that made it: an agent killed between FIFREEZE and FITHAW
//! must not leave the node's volume frozen, nor the node's cgroup (`--freeze-cgroup`). The
//! agent's thaw guard thaws either.
use std::{
    fs,
    process::{Command, Stdio},
    sync::mpsc,
    time::Duration,
};

use btm_agent::volume::Frozen;
use btm_tests::{LoopFs, agent_bin, can_run, cgroup2, skip, start_agent_env, workdir};

/// Writes a file on `dir` in a thread; the receiver gets a message once the write returned.
fn write_in_background(dir: &std::path::Path) -> mpsc::Receiver<()> {
    let (tx, rx) = mpsc::channel();
    let p = dir.join("node-write");
    std::thread::spawn(move || {
        fs::write(&p, b"the node goes on").unwrap();
        let _ = tx.send(());
    });
    rx
}

/// Asks the agent on `sock` for height 1, in the background.
fn ask_for_height_1(sock: &std::path::Path) -> std::process::Child {
    Command::new(agent_bin())
        .args(["snapshot", "--height", "1", "--socket"])
        .arg(sock)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap()
}

#[test]
fn an_agent_killed_while_the_volume_is_frozen_leaves_it_thawed() {
    if !can_run("thaw guard") {
        return;
    }
    let vol = LoopFs::new("ext4", 256).unwrap();
    let work = workdir("btm-guard-");
    let (log, sock) = (work.path().join("log"), work.path().join("agent.sock"));
    // Stay frozen long enough to be killed there.
    let mut agent = start_agent_env(
        &vol.mnt,
        &log,
        &sock,
        &[],
        &[("BTM_TEST_HOLD_FROZEN_MS", "8000")],
    );
    fs::write(vol.path("block-1"), vec![7u8; 100_000]).unwrap();
    let mut cut = ask_for_height_1(&sock);
    // Wait until the volume is frozen: a write blocks (the agent holds the freeze 8 s).
    let mut frozen = false;
    let mut wrote = write_in_background(&vol.mnt);
    let t0 = std::time::Instant::now();
    while t0.elapsed() < Duration::from_secs(6) {
        if wrote.recv_timeout(Duration::from_millis(300)).is_err() {
            frozen = true;
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
        wrote = write_in_background(&vol.mnt);
    }
    agent.child.kill().unwrap();
    agent.child.wait().unwrap();
    let _ = cut.wait();
    let thawed = wrote.recv_timeout(Duration::from_secs(5)).is_ok();
    if !thawed {
        // Leave the machine usable whatever happened.
        let _ = Frozen::thaw_leftover(&vol.mnt);
    }
    assert!(
        frozen,
        "the volume was not frozen when the agent was killed: nothing was tested"
    );
    assert!(
        thawed,
        "the volume stayed frozen after the agent was killed inside a cut"
    );
}

#[test]
fn an_agent_killed_while_the_nodes_cgroup_is_frozen_leaves_it_thawed() {
    let what = "thaw guard for the node's cgroup";
    if !can_run(what) {
        return;
    }
    let Some(root) = cgroup2() else {
        skip(what, "no cgroup v2 hierarchy is mounted");
        return;
    };
    let vol = LoopFs::new("ext4", 256).unwrap();
    let work = workdir("btm-guard-cg-");
    let (log, sock) = (work.path().join("log"), work.path().join("agent.sock"));
    let cg = root.join(format!("btm-guard-{}", std::process::id()));
    fs::create_dir(&cg).unwrap();
    // The "node": a process in the cgroup that the freeze stops.
    let mut node = Command::new("sh")
        .args([
            "-c",
            "echo $$ > \"$1/cgroup.procs\" && exec sleep 120",
            "node",
        ])
        .arg(&cg)
        .spawn()
        .unwrap();
    let events = cg.join("cgroup.events");
    let frozen_now = || fs::read_to_string(&events).unwrap().contains("frozen 1");
    let populated = || fs::read_to_string(&events).unwrap().contains("populated 1");
    let t0 = std::time::Instant::now();
    while !populated() && t0.elapsed() < Duration::from_secs(5) {
        std::thread::sleep(Duration::from_millis(20));
    }
    let was_populated = populated();
    let mut agent = start_agent_env(
        &vol.mnt,
        &log,
        &sock,
        &["--freeze-cgroup", cg.to_str().unwrap()],
        &[("BTM_TEST_HOLD_FROZEN_MS", "8000")],
    );
    let mut cut = ask_for_height_1(&sock);
    let t0 = std::time::Instant::now();
    while !frozen_now() && t0.elapsed() < Duration::from_secs(6) {
        std::thread::sleep(Duration::from_millis(20));
    }
    let frozen = frozen_now();
    agent.child.kill().unwrap();
    agent.child.wait().unwrap();
    let _ = cut.wait();
    let t0 = std::time::Instant::now();
    while frozen_now() && t0.elapsed() < Duration::from_secs(5) {
        std::thread::sleep(Duration::from_millis(20));
    }
    let thawed = !frozen_now();
    // Leave the machine clean whatever happened.
    let _ = fs::write(cg.join("cgroup.freeze"), "0");
    let _ = node.kill();
    let _ = node.wait();
    let _ = fs::remove_dir(&cg);
    assert!(
        was_populated,
        "the node was not in its cgroup: nothing was tested"
    );
    assert!(
        frozen,
        "the node's cgroup was not frozen when the agent was killed: nothing was tested"
    );
    assert!(
        thawed,
        "the node's cgroup stayed frozen after the agent was killed inside a cut"
    );
}
