//! Real node sizes: a baseline of more data than the agent may hold in memory, a restart that
//! stores what changed, not the volume again, and a compaction that folds the baseline away.
//!
//! The agent runs inside a memory cgroup whose limit is below the size of the data (cgroup v2
//! or v1, whichever the host has): holding a height in memory, as the agent did before, gets
//! it killed there. Its peak resident set (VmHWM) must stay a fraction of the data.
use std::{
    ffi::OsStr,
    fs,
    os::unix::fs::FileExt,
    path::{Path, PathBuf},
};

use btm_agent::log::Log;
use btm_tests::{
    LoopFs, Rng, Running, assert_replay_equals, can_run, skip, snapshot_via, start_agent_via,
    workdir,
};

const MIB: u64 = 1 << 20;
/// The data on the volume, and the agent's memory limit (well below it).
const DATA: u64 = 1024 * MIB;
const LIMIT: u64 = 320 * MIB;
/// The limit while the agent starts: the kernel's verifier charges its transient state for
/// loading the tracker's programs to the loader's cgroup (about 65 MiB on 6.18), which is
/// the kernel's cost of starting, not the agent's memory under load.
const LOAD_LIMIT: u64 = 2048 * MIB;

/// A memory cgroup for one test, removed when dropped.
struct MemCage {
    dir: PathBuf,
    v2: bool,
}

impl MemCage {
    fn new(limit: u64) -> Result<MemCage, String> {
        let name = format!("btm-test-{}", std::process::id());
        let v2_root = Path::new("/sys/fs/cgroup");
        let v2 = fs::read_to_string(v2_root.join("cgroup.controllers"))
            .is_ok_and(|c| c.split_whitespace().any(|x| x == "memory"));
        let dir = if v2 {
            // The memory controller must be enabled for children of the root.
            let _ = fs::write(v2_root.join("cgroup.subtree_control"), "+memory");
            v2_root.join(&name)
        } else {
            let v1 = v2_root.join("memory");
            if !v1.join("memory.limit_in_bytes").exists() {
                return Err("no memory cgroup controller (v2 or v1) on this host".into());
            }
            v1.join(&name)
        };
        fs::create_dir_all(&dir).map_err(|e| format!("creating {}: {e}", dir.display()))?;
        let cage = MemCage { dir, v2 };
        let set = |file: &str, v: String| {
            fs::write(cage.dir.join(file), v).map_err(|e| format!("setting {file}: {e}"))
        };
        if v2 {
            let _ = set("memory.swap.max", "0".into());
        }
        cage.set_limit(limit)?;
        Ok(cage)
    }

    /// The file holding the limit (cgroup v2 or v1).
    fn limit_file(&self) -> &'static str {
        if self.v2 {
            "memory.max"
        } else {
            "memory.limit_in_bytes"
        }
    }

    fn set_limit(&self, limit: u64) -> Result<(), String> {
        let file = self.limit_file();
        fs::write(self.dir.join(file), limit.to_string())
            .map_err(|e| format!("setting {file}: {e}"))
    }

    fn procs(&self) -> PathBuf {
        self.dir.join("cgroup.procs")
    }

    /// The limit the kernel enforces.
    fn limit(&self) -> u64 {
        fs::read_to_string(self.dir.join(self.limit_file()))
            .unwrap()
            .trim()
            .parse()
            .unwrap()
    }

    /// Processes the kernel's OOM killer killed in the cgroup.
    fn oom_kills(&self) -> u64 {
        let f = if self.v2 {
            "memory.events"
        } else {
            "memory.oom_control"
        };
        fs::read_to_string(self.dir.join(f))
            .unwrap_or_default()
            .lines()
            .find_map(|l| l.strip_prefix("oom_kill ")?.trim().parse().ok())
            .unwrap_or(0)
    }
}

impl Drop for MemCage {
    fn drop(&mut self) {
        for _ in 0..50 {
            if fs::remove_dir(&self.dir).is_ok() {
                return;
            }
            std::thread::sleep(std::time::Duration::from_millis(100));
        }
    }
}

/// `btm-agent run` inside `cage`: a shell moves itself into the cgroup, then execs the agent
/// (the child's pid is the agent's). The cage holds [`LIMIT`] from when the agent listens
/// (its programs are loaded) on.
fn start_caged(cage: &MemCage, vol: &Path, log: &Path, sock: &Path, extra: &[&str]) -> Running {
    cage.set_limit(LOAD_LIMIT).unwrap();
    let running = start_caged_at_load(cage, vol, log, sock, extra);
    cage.set_limit(LIMIT).unwrap();
    running
}

fn start_caged_at_load(
    cage: &MemCage,
    vol: &Path,
    log: &Path,
    sock: &Path,
    extra: &[&str],
) -> Running {
    let procs = cage.procs();
    let wrapper: [&OsStr; 4] = [
        "sh".as_ref(),
        "-c".as_ref(),
        "echo 0 > \"$0\" && exec \"$@\"".as_ref(),
        procs.as_os_str(),
    ];
    start_agent_via(&wrapper, vol, log, sock, extra, &[])
}

/// Peak resident set of a process, in bytes (VmHWM).
fn vm_hwm(pid: u32) -> u64 {
    fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap()
        .lines()
        .find_map(|l| {
            let kb = l.strip_prefix("VmHWM:")?.trim().strip_suffix("kB")?.trim();
            kb.parse::<u64>().ok()
        })
        .unwrap()
        * 1024
}

#[test]
fn a_baseline_larger_than_the_agents_memory_and_a_restart_that_stores_only_changes() {
    if !can_run("bounded memory") {
        return;
    }
    let cage = match MemCage::new(LIMIT) {
        Ok(c) => c,
        Err(why) => {
            skip("bounded memory", &why);
            return;
        }
    };
    assert!(
        cage.limit() < DATA,
        "the cgroup must hold less than the data ({} < {DATA})",
        cage.limit()
    );
    let vol = LoopFs::new("ext4", (DATA / MIB) * 2).unwrap();
    let work = workdir("btm-bounded-");
    let (log, sock) = (work.path().join("log"), work.path().join("agent.sock"));
    // A chain-like volume: one large state file and many small ones.
    let mut rng = Rng(0xb0bd_ed00);
    let state = vol.path("state.db");
    let f = fs::File::create(&state).unwrap();
    let big = DATA * 3 / 4;
    for off in (0..big).step_by(8 * MIB as usize) {
        f.write_all_at(&rng.bytes(8 * MIB as usize), off).unwrap();
    }
    drop(f);
    let small = (DATA - big) / MIB;
    for i in 0..small {
        let d = vol.path(&format!("blocks/{:03}", i / 64));
        fs::create_dir_all(&d).unwrap();
        fs::write(d.join(format!("{i:05}.blk")), rng.bytes(MIB as usize)).unwrap();
    }

    let mut agent = start_caged(&cage, &vol.mnt, &log, &sock, &[]);
    snapshot_via(&sock, 1);
    let hwm = vm_hwm(agent.pid());
    assert_eq!(
        cage.oom_kills(),
        0,
        "the agent was OOM-killed in its cgroup"
    );
    assert!(
        hwm < DATA / 3,
        "the agent's peak RSS was {} MiB for {} MiB of data: a height is held in memory",
        hwm / MIB,
        DATA / MIB
    );
    eprintln!(
        "baseline of {} MiB: agent VmHWM {} MiB (cgroup limit {} MiB)",
        DATA / MIB,
        hwm / MIB,
        LIMIT / MIB
    );
    assert!(agent.terminate().success());
    assert_replay_equals(&log, 1, &vol.mnt, work.path());

    // While the agent is down, 1 % of the state file changes in scattered 4 KiB writes.
    let f = fs::OpenOptions::new().write(true).open(&state).unwrap();
    let changed = big / 100;
    for _ in 0..changed / 4096 {
        let at = rng.below(big / 4096) * 4096;
        f.write_all_at(&rng.bytes(4096), at).unwrap();
    }
    drop(f);
    let agent = start_caged(&cage, &vol.mnt, &log, &sock, &[]);
    snapshot_via(&sock, 2);
    drop(agent);
    let stored = Log::open_read(&log).unwrap().heights()[1].stored_bytes;
    eprintln!(
        "after a restart with {} MiB changed: height 2 stored {} KiB",
        changed / MIB,
        stored / 1024
    );
    // Only what differs is stored (random data does not compress; metadata rows add a little).
    assert!(
        stored < changed * 2,
        "height 2 stored {stored} bytes for {changed} bytes changed while the agent was down"
    );
    assert_replay_equals(&log, 2, &vol.mnt, work.path());

    // Retention down to one height: the baseline is folded into height 2 by a compaction in
    // the same cgroup. Height 2 borrows most of its bytes from the baseline in pieces cut by
    // the scattered writes, so the compaction writes about the whole state file anew: holding
    // those pieces in memory at once (as it did) gets the agent killed here.
    let mut agent = start_caged(
        &cage,
        &vol.mnt,
        &log,
        &sock,
        &[
            "--cap",
            "1",
            "--compact-min-bytes",
            "0",
            "--compact-rate",
            "0",
        ],
    );
    btm_tests::wait_compaction_idle(&sock);
    let hwm = vm_hwm(agent.pid());
    assert_eq!(
        cage.oom_kills(),
        0,
        "the agent was OOM-killed while compacting"
    );
    assert!(agent.terminate().success());
    let log_r = Log::open_read(&log).unwrap();
    let v = log_r.verify().unwrap();
    assert_eq!(v.records, 1, "the baseline was not folded into height 2");
    drop(log_r);
    let text = fs::read_to_string(log.with_extension("agent.log")).unwrap();
    let line = text
        .lines()
        .find(|l| l.contains("compacted the log"))
        .unwrap();
    eprintln!("compaction: agent VmHWM {} MiB; {line}", hwm / MIB);
    assert!(
        hwm < DATA / 3,
        "the agent's peak RSS was {} MiB while compacting {} MiB of data",
        hwm / MIB,
        DATA / MIB
    );
    assert_replay_equals(&log, 2, &vol.mnt, work.path());
}
