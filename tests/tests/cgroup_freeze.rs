//! Cuts while a node keeps writing, frozen two ways: the volume (`FIFREEZE`) and the node's
//! cgroup v2 (`run --freeze-cgroup`). The "node" is a shell in a cgroup of its own that appends,
//! rewrites, overwrites in place, creates, renames and removes files without pause. Inside each
//! freeze the test hashes the tree (and, for the cgroup, checks the kernel reports every task of
//! it frozen); every height must replay to exactly that tree, and the node must be running again
//! after each cut. The volume freeze must have expedited RCU grace periods while it froze, and
//! every cut put the setting back. Prints what each way stopped the node for (not asserted: a
//! benchmark's job).
use std::{
    fs,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use btm_agent::{
    cut::{Cutter, Freeze, NodeCgroup},
    log::{Log, ReplayOptions},
    rcu::RCU_EXPEDITED as RCU,
    tracker::{Limits, Tracker},
    treehash::{TreeHash, diff, hash_tree},
    volume::Mount,
};
use btm_tests::{LoopFs, can_run, cgroup2, scratch, skip};

const HEIGHTS: u64 = 12;

/// Appends, small rewrites (truncate + write), in-place overwrites of a larger file, and every
/// 40 rounds a mkdir, a rename and removals: metadata changes at every height, as a node's.
const NODE: &str = r#"
echo $$ > "$1/cgroup.procs" || exit 1
head -c 4194304 /dev/zero > big
i=0
while :; do
  i=$((i+1))
  printf '%s\n' "$i" >> a$((i % 7))
  printf '%08d' "$i" > b$((i % 13))
  if [ $((i % 10)) -eq 0 ]; then
    printf '%0512d' "$i" | dd of=big bs=512 seek=$(( (i * 7919) % 8192 )) conv=notrunc status=none
  fi
  if [ $((i % 40)) -eq 0 ]; then
    mkdir -p d$((i % 5))
    mv b$((i % 13)) d$((i % 5))/m$i 2>/dev/null
    rm -f d$(( (i + 2) % 5 ))/*
  fi
done
"#;

/// A cgroup of the test's own in the v2 hierarchy: its tasks killed and the directory
/// removed on drop.
struct TestCgroup(PathBuf);

impl TestCgroup {
    fn events(&self) -> String {
        fs::read_to_string(self.0.join("cgroup.events")).unwrap()
    }

    fn frozen(&self) -> bool {
        self.events().lines().any(|l| l == "frozen 1")
    }
}

impl Drop for TestCgroup {
    fn drop(&mut self) {
        let _ = fs::write(self.0.join("cgroup.freeze"), "0");
        let _ = fs::write(self.0.join("cgroup.kill"), "1");
        let t = Instant::now();
        while fs::remove_dir(&self.0).is_err() && t.elapsed() < Duration::from_secs(10) {
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

fn start_node(cg: &Path, dir: &Path) -> Child {
    let child = Command::new("sh")
        .args(["-c", NODE, "node"])
        .arg(cg)
        .current_dir(dir)
        .stdin(Stdio::null())
        .spawn()
        .unwrap();
    // Running once it has written a few rounds.
    let t = Instant::now();
    while !dir.join("d0").exists() {
        assert!(
            t.elapsed() < Duration::from_secs(20),
            "the node did not start"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    child
}

fn pct(mut v: Vec<f64>, p: f64) -> f64 {
    v.sort_by(f64::total_cmp);
    v[((v.len() - 1) as f64 * p).round() as usize]
}

/// The RCU setting before any cut of this process. Each test takes it before its first cut,
/// so the first to ask reads it while no cut runs. Read at each test's start, it could be a
/// sibling test's freeze holding it at 1 for a few milliseconds: the test then took 1 for the
/// value its cuts had to leave, and failed though they left nothing changed.
fn rcu_before_any_cut() -> &'static str {
    static BEFORE: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    BEFORE.get_or_init(|| fs::read_to_string(RCU).unwrap_or_default())
}

/// Whether the RCU setting is `want`, or comes back to it within 5 s: a sibling test's freeze
/// holds it at 1 for milliseconds at a time, while a value a cut failed to put back stays.
fn rcu_settles_at(want: &str) -> Result<(), String> {
    let mut now = String::new();
    for _ in 0..50 {
        now = fs::read_to_string(RCU).unwrap_or_default();
        if now == want {
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    Err(now)
}

fn run(fstype: &str, by_cgroup: bool) {
    let what = format!(
        "cuts beside a writing node on {fstype}, freezing the {}",
        if by_cgroup { "node's cgroup" } else { "volume" }
    );
    if !can_run(&what) {
        return;
    }
    let rcu_before = rcu_before_any_cut();
    let Some(root) = cgroup2() else {
        skip(&what, "no cgroup v2 hierarchy is mounted");
        return;
    };
    let fs = LoopFs::new(fstype, 1024).expect("loop fs");
    let work = tempfile::Builder::new()
        .prefix("btm-cgfreeze-")
        .tempdir_in(scratch())
        .unwrap();
    let logdir = work.path().join("log");
    fs::create_dir(&logdir).unwrap();
    let cg = TestCgroup(root.join(format!("btm-test-{}-{fstype}", std::process::id())));
    fs::create_dir(&cg.0).unwrap();
    let mut node = start_node(&cg.0, &fs.mnt);

    let mount = Mount::at(&fs.mnt).unwrap();
    let tracker = Tracker::start(&mount, Limits::for_volume_bytes(1 << 30)).unwrap();
    let mut cutter = Cutter::new(mount, tracker, Log::open_append(&logdir).unwrap()).unwrap();
    if by_cgroup {
        cutter.freeze = Freeze::Cgroup(NodeCgroup::open(&cg.0).unwrap());
    }
    // Inside each freeze: whether the kernel had every task of the node frozen, and the tree.
    let seen: Arc<Mutex<Vec<(bool, TreeHash)>>> = Arc::default();
    let (s, mnt, events) = (seen.clone(), fs.mnt.clone(), cg.0.join("cgroup.events"));
    cutter.while_frozen = Some(Box::new(move || {
        let frozen = fs::read_to_string(&events)
            .unwrap()
            .lines()
            .any(|l| l == "frozen 1");
        s.lock().unwrap().push((frozen, hash_tree(&mnt).unwrap()));
    }));
    // The volume freeze expedites RCU grace periods for the length of FIFREEZE (see
    // `btm_agent::rcu`): a thread watches the kernel's setting during the cuts.
    let rcu = Path::new(RCU);
    let watching = Arc::new(std::sync::atomic::AtomicBool::new(true));
    let watcher = {
        let watching = watching.clone();
        std::thread::spawn(move || {
            let mut seen_on = 0u64;
            while watching.load(std::sync::atomic::Ordering::Relaxed) {
                if fs::read_to_string(rcu).is_ok_and(|v| v.trim() == "1") {
                    seen_on += 1;
                }
                std::thread::sleep(Duration::from_micros(200));
            }
            seen_on
        })
    };
    let mut stall = Vec::new();
    let mut enter = Vec::new();
    for h in 1..=HEIGHTS {
        std::thread::sleep(Duration::from_millis(100));
        let (rep, _) = cutter
            .cut(h)
            .unwrap_or_else(|e| panic!("{what}: cut {h}: {e:#}"));
        assert!(
            !cg.frozen() && node.try_wait().unwrap().is_none(),
            "{what}: the node is not running after cut {h}: {}",
            cg.events()
        );
        if h > 1 {
            stall.push(rep.freeze_ms);
            enter.push(rep.freeze_enter_ms);
        }
    }
    watching.store(false, std::sync::atomic::Ordering::Relaxed);
    let seen_expedited = watcher.join().unwrap();
    drop(cg);
    let _ = node.wait();
    if let Err(now) = rcu_settles_at(rcu_before) {
        panic!("{what}: the cuts left {RCU} changed: {now:?}, {rcu_before:?} before any cut");
    }
    if rcu_before.trim() == "0" && !by_cgroup {
        // Seen set while `FIFREEZE` ran (milliseconds). The epoch flips expedite too, in
        // either freeze, for tens of microseconds: too short for the watcher to be sure to
        // see (the rcu module's own test proves those).
        assert!(
            seen_expedited > 0,
            "{what}: expedited RCU never seen during the cuts"
        );
    }
    let seen = std::mem::take(&mut *seen.lock().unwrap());
    assert_eq!(
        seen.len() as u64,
        HEIGHTS,
        "{what}: the freeze hook ran once a cut"
    );
    if by_cgroup {
        assert!(
            seen.iter().all(|(f, _)| *f),
            "{what}: the kernel did not report the node frozen inside every freeze"
        );
    }
    // The node wrote between every two heights: each one is a different tree.
    let moved = seen.windows(2).filter(|w| w[0].1 != w[1].1).count() as u64;
    assert_eq!(moved, HEIGHTS - 1, "{what}: the node stopped writing");

    let log = Log::open_read(&logdir).unwrap();
    log.verify().unwrap();
    let opts = ReplayOptions {
        progress: false,
        ..Default::default()
    };
    let mut failures = Vec::new();
    for (h, (_, expected)) in (1..=HEIGHTS).zip(&seen) {
        let out = work.path().join(format!("replay-{h}"));
        log.replay(h, &out, &opts).unwrap();
        let d = diff(expected, &hash_tree(&out).unwrap());
        if !d.is_empty() {
            failures.push(format!("height {h}:\n  {}", d.join("\n  ")));
        }
        fs::remove_dir_all(&out).unwrap();
    }
    eprintln!(
        "{what}: {HEIGHTS} heights; node stopped p50 {:.1} ms max {:.1} ms (entering the freeze \
         p50 {:.1} ms max {:.1} ms)",
        pct(stall.clone(), 0.5),
        pct(stall, 1.0),
        pct(enter.clone(), 0.5),
        pct(enter, 1.0),
    );
    assert!(failures.is_empty(), "{what}: {}", failures.join("\n"));
}

#[test]
fn volume_freeze_ext4() {
    run("ext4", false);
}

#[test]
fn cgroup_freeze_ext4() {
    run("ext4", true);
}

#[test]
fn volume_freeze_xfs() {
    run("xfs", false);
}

#[test]
fn cgroup_freeze_xfs() {
    run("xfs", true);
}

/// What is not a cgroup the agent can freeze is refused with a message that says what to give.
#[test]
fn a_path_that_is_not_a_node_cgroup_is_refused() {
    if !can_run("refusing a path that is not a node's cgroup") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let Some(root) = cgroup2() else {
        skip(
            "refusing the root cgroup",
            "no cgroup v2 hierarchy is mounted",
        );
        return;
    };
    for p in [dir.path(), &root] {
        let e = NodeCgroup::open(p).err().map(|e| format!("{e:#}"));
        assert!(
            e.as_deref()
                .is_some_and(|e| e.contains("node's own cgroup")),
            "{}: {e:?}",
            p.display()
        );
    }
}
