//! How phase 2 stops the node's writes: `FIFREEZE` on the volume (the default), or the cgroup v2
//! freezer on the node's cgroup (`run --freeze-cgroup`).
//!
//! Why a second way: the node's writers block from the moment `FIFREEZE` starts. Most of
//! `FIFREEZE` was RCU grace periods, one before each of the superblock's freeze levels; the
//! agent now expedites them (`volume::Frozen::freeze`), which took `FIFREEZE` from 28 to 1.4–2 ms
//! at p50 in cut_e2e on ext4 and xfs. What is left is the filesystem's own quiescing (ext4
//! flushes its journal, xfs covers its log), with the node's writers blocked. Freezing the
//! node's cgroup stops its tasks where they enter or leave the kernel, without touching the
//! filesystem; a syncfs then cleans and write-protects every page they dirtied, as `FIFREEZE`
//! would, so their next store is seen again (entering the freeze beside a writing node: 0.6 ms
//! at p50, against 2.5–3.3 ms for the expedited `FIFREEZE`).
//!
//! What the cgroup freezer does not stop: processes outside the cgroup (their writes are
//! tracked; a height may hold a write of theirs half done, as a crash would), and asynchronous
//! writes the node left in flight (AIO, io_uring), which `FIFREEZE` would wait for. A node that
//! writes that way must use the volume freeze.

use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

use crate::volume::{Frozen, ThawGuard};

/// How long the node's cgroup may take to report frozen (a task stuck in the kernel, in D
/// state, keeps it from freezing) before the cut gives up on this height.
const CGROUP_FREEZE_TIMEOUT: Duration = Duration::from_secs(2);

/// Rounds of [`presync`] at most, and the time under which a round ends it (what was left
/// dirty was little).
const PRESYNC_ROUNDS: u32 = 3;
const PRESYNC_QUICK: Duration = Duration::from_millis(2);

/// What phase 2 freezes.
pub enum Freeze {
    /// `FIFREEZE` the volume's filesystem.
    Volume,
    /// Freeze the node's cgroup, then syncfs the volume.
    Cgroup(NodeCgroup),
    /// Nothing: the caller pauses the node itself.
    Off,
}

/// A cgroup v2 directory whose tasks are the node (`cgroup.freeze` and `cgroup.events`).
pub struct NodeCgroup {
    dir: PathBuf,
    freeze: File,
}

impl NodeCgroup {
    /// Opens the cgroup at `dir` for freezing; refuses what is not a non-root cgroup v2.
    pub fn open(dir: &Path) -> Result<NodeCgroup> {
        let file = dir.join("cgroup.freeze");
        let freeze = OpenOptions::new()
            .write(true)
            .open(&file)
            .with_context(|| {
                format!(
                    "{} is not a cgroup v2 the agent can freeze (no writable cgroup.freeze; the \
                 root cgroup has none): give the node's own cgroup, e.g. \
                 /sys/fs/cgroup/system.slice/node.service",
                    dir.display()
                )
            })?;
        let cg = NodeCgroup {
            dir: dir.to_path_buf(),
            freeze,
        };
        if cg.frozen()? {
            bail!(
                "the cgroup {} is frozen already (by whom?): thaw it with `echo 0 > {}` first",
                dir.display(),
                file.display()
            );
        }
        Ok(cg)
    }

    /// Another handle on the same cgroup (what a freeze holds while the cut goes on).
    fn try_clone(&self) -> Result<NodeCgroup> {
        Ok(NodeCgroup {
            dir: self.dir.clone(),
            freeze: self.freeze.try_clone()?,
        })
    }

    pub fn path(&self) -> &Path {
        &self.dir
    }

    /// Whether every task of the cgroup is frozen (`frozen 1` in `cgroup.events`).
    pub fn frozen(&self) -> Result<bool> {
        let p = self.dir.join("cgroup.events");
        let s = fs::read_to_string(&p).with_context(|| format!("reading {}", p.display()))?;
        Ok(s.lines().any(|l| l.trim() == "frozen 1"))
    }

    fn set(&self, frozen: bool) -> Result<()> {
        (&self.freeze)
            .write_all(if frozen { b"1" } else { b"0" })
            .with_context(|| format!("writing {}/cgroup.freeze", self.dir.display()))
    }
}

/// What phase 2 holds frozen; [`Held::release`] thaws it (and so does dropping it).
pub(super) enum Held {
    Volume(Frozen),
    Cgroup(CgroupFrozen),
    Nothing,
}

/// A frozen cgroup, thawed on drop so that no error path leaves the node stopped.
pub(super) struct CgroupFrozen {
    cg: NodeCgroup,
    thawed: bool,
}

impl CgroupFrozen {
    fn thaw(&mut self) -> Result<()> {
        if std::mem::replace(&mut self.thawed, true) {
            return Ok(());
        }
        let r = self.cg.set(false);
        ThawGuard::tell(false);
        r
    }
}

impl Drop for CgroupFrozen {
    fn drop(&mut self) {
        if let Err(e) = self.thaw() {
            tracing::error!(
                "thawing the node's cgroup failed: {e:#}; run `echo 0 > {}/cgroup.freeze`",
                self.cg.dir.display()
            );
        }
    }
}

impl Freeze {
    /// Stops the node's writes and leaves every page of the volume clean.
    pub(super) fn hold(&self, root: &Path) -> Result<Held> {
        match self {
            Freeze::Volume => Ok(Held::Volume(Frozen::freeze(root)?)),
            Freeze::Off => Ok(Held::Nothing),
            Freeze::Cgroup(cg) => {
                let mut held = CgroupFrozen {
                    cg: cg.try_clone()?,
                    thawed: false,
                };
                ThawGuard::tell(true);
                cg.set(true)?;
                let t = Instant::now();
                while !cg.frozen()? {
                    if t.elapsed() > CGROUP_FREEZE_TIMEOUT {
                        held.thaw()?;
                        bail!(
                            "the node's cgroup {} did not freeze within {:?} (a task of it is \
                             stuck in the kernel); this height is not cut, the next one will be",
                            cg.dir.display(),
                            CGROUP_FREEZE_TIMEOUT
                        );
                    }
                    std::thread::sleep(Duration::from_micros(100));
                }
                // What the node dirtied since phase 1's syncfs: written back and write-protected,
                // so its next store after the thaw is an event again.
                syncfs(root)?;
                Ok(Held::Cgroup(held))
            }
        }
    }
}

impl Held {
    pub(super) fn release(self) -> Result<()> {
        match self {
            Held::Volume(f) => f.thaw(),
            Held::Cgroup(mut c) => c.thaw(),
            Held::Nothing => Ok(()),
        }
    }
}

/// Writes back what phase 1 left dirty while the node still runs, so that the freeze has
/// little left to write while the node waits. Each round writes what the node dirtied during
/// the one before; an extra write-back only means more events, never fewer. Returns ms.
pub(super) fn presync(root: &Path) -> Result<f64> {
    let t = Instant::now();
    for _ in 0..PRESYNC_ROUNDS {
        let round = Instant::now();
        syncfs(root)?;
        if round.elapsed() < PRESYNC_QUICK {
            break;
        }
    }
    Ok(t.elapsed().as_secs_f64() * 1000.0)
}

pub fn syncfs(root: &Path) -> Result<()> {
    let f = File::open(root)?;
    nix::unistd::syncfs(&f).with_context(|| format!("syncfs {}", root.display()))?;
    Ok(())
}
