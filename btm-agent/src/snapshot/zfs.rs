//! ZFS mode: the volume is the mountpoint of a dataset `D`; height `H` is the snapshot `D@H`.
//!
//! * snapshot: `zfs snapshot D@H` (atomic for the dataset).
//! * list: `zfs list -H -o name -t snapshot -d 1 D`; snapshots whose name after `@` is not a
//!   canonical decimal number are not ours and are ignored (never deleted).
//! * rollback: `zfs rollback -r D@H`, which also destroys the newer snapshots (ZFS can only roll
//!   back to the latest snapshot; that includes newer snapshots btm did not make).
//! * delete: `zfs destroy D@h1,h2,...` (OpenZFS' comma form, one transaction per batch). zfs-fuse
//!   0.7 (pool version 23) rejects that form with "invalid dataset name" and takes one snapshot
//!   per call; when a batch fails we destroy its members one by one, and remember for later
//!   calls that the comma form does not work.
//!
//! Works with OpenZFS (`zfs` file-system type) and zfs-fuse (`fuse.zfs`; its daemon must run).

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU8, Ordering};

use super::{MountEntry, Probe, SnapshotBackend, SnapshotError, check_new_height, os, run};

const COMMA_UNKNOWN: u8 = 0;
const COMMA_YES: u8 = 1;
const COMMA_NO: u8 = 2;
/// Snapshots per `zfs destroy` call in the comma form.
const DESTROY_BATCH: usize = 64;

/// Snapshots of one ZFS dataset.
#[derive(Debug)]
pub struct Zfs {
    dataset: String,
    mountpoint: PathBuf,
    comma: AtomicU8,
}

/// Advice for a failed `zfs` command, from its stderr.
fn hint(stderr: &str) -> String {
    let s = stderr.to_ascii_lowercase();
    if s.contains("failed to initialize zfs library")
        || s.contains("zfs-fuse daemon")
        || s.contains("connect:")
    {
        "ZFS is not reachable: with zfs-fuse, start its daemon (`zfs-fuse`); with OpenZFS, load \
         the module (`modprobe zfs`)"
            .into()
    } else if s.contains("permission denied") || s.contains("insufficient privileges") {
        "run btm as root, or delegate the permissions with `zfs allow`".into()
    } else if s.contains("busy") {
        "something still uses the dataset: stop the node (and anything with files open on it) \
         and retry"
            .into()
    } else if s.contains("clone") {
        "a snapshot involved has clones: destroy them or `zfs promote` them first".into()
    } else if s.contains("hold") {
        "a snapshot involved has a user hold: release it with `zfs release`".into()
    } else if s.contains("does not exist") {
        "the dataset or snapshot is gone; check `zfs list -t all`".into()
    } else {
        String::new()
    }
}

fn zfs(args: &[OsString]) -> Result<String, SnapshotError> {
    run("zfs", args, &hint)
}

/// Finds the dataset mounted at `vol` (canonical). `Ok(None)` when there is none.
fn dataset_at(vol: &Path, mount: Option<&MountEntry>) -> Result<Option<String>, SnapshotError> {
    let out = zfs(&[
        os("list"),
        os("-H"),
        os("-o"),
        os("name,mountpoint"),
        os("-t"),
        os("filesystem"),
    ])?;
    for line in out.lines() {
        let Some((name, mp)) = line.split_once('\t') else {
            continue;
        };
        if !mp.starts_with('/') {
            continue; // legacy, none, -
        }
        let mp = std::fs::canonicalize(mp).unwrap_or_else(|_| PathBuf::from(mp));
        if mp == vol {
            return Ok(Some(name.to_string()));
        }
    }
    // mountpoint=legacy datasets mounted by hand: mountinfo names the dataset.
    if let Some(m) = mount
        && m.mount_point == vol
        && zfs(&[os("list"), os("-H"), os("-o"), os("name"), os(&m.source)]).is_ok()
    {
        return Ok(Some(m.source.clone()));
    }
    Ok(None)
}

/// Whether `volume` could be a dataset name: relative, and not `./x` or `../x`.
pub(super) fn may_be_dataset(volume: &Path) -> bool {
    let s = volume.to_string_lossy();
    !s.is_empty() && !s.starts_with(['/', '.']) && !s.ends_with('/')
}

/// The mountpoint of dataset `name` (`zfs list -H -o mountpoint NAME`), canonical. The error
/// says the name is neither a directory nor a mounted dataset, and what to give instead.
pub(super) fn dataset_mountpoint(name: &Path) -> Result<PathBuf, SnapshotError> {
    let n = name.to_string_lossy();
    let neither = |why: String| {
        SnapshotError::Volume(format!(
            "volume {n}: there is no such directory, and {why}; give the volume's mount point \
             (an absolute path) or the name of a mounted dataset (`zfs list -o name,mountpoint` \
             lists them)"
        ))
    };
    let out = zfs(&[os("list"), os("-H"), os("-o"), os("mountpoint"), os(name)])
        .map_err(|e| neither(format!("it is not a ZFS dataset either ({e})")))?;
    let mp = out.trim();
    if !mp.starts_with('/') {
        return Err(neither(format!(
            "ZFS dataset {n} has mountpoint={mp}: mount it (`zfs set mountpoint=/path {n}` or \
             mount it by hand) and give that path"
        )));
    }
    std::fs::canonicalize(mp).map_err(|e| {
        neither(format!(
            "ZFS dataset {n} should be mounted at {mp}, which cannot be resolved ({e}): `zfs \
             mount {n}`"
        ))
    })
}

pub(super) fn probe(vol: &Path, mount: &MountEntry) -> Result<Probe, SnapshotError> {
    match dataset_at(vol, Some(mount))? {
        Some(dataset) => Ok(Probe::Found(Box::new(Zfs::with_dataset(
            dataset,
            vol.to_path_buf(),
        )))),
        None => Ok(Probe::NotNative {
            reason: format!(
                "{} is a directory inside ZFS dataset {} (mounted at {}), not a dataset's \
                 mountpoint; give it its own dataset (`zfs create -o mountpoint={} {}/<name>`, \
                 with the node stopped and its data moved in) or point --volume at {}",
                vol.display(),
                mount.source,
                mount.mount_point.display(),
                vol.display(),
                mount.source,
                mount.mount_point.display(),
            ),
        }),
    }
}

impl Zfs {
    /// The dataset mounted at `volume`.
    pub fn open(volume: &Path) -> Result<Self, SnapshotError> {
        let vol = super::canonical_dir(volume)?;
        let mounts = super::read_mountinfo()?;
        let mount = super::containing_mount(&mounts, &vol);
        match dataset_at(&vol, mount)? {
            Some(d) => Ok(Self::with_dataset(d, vol)),
            None => Err(SnapshotError::Volume(format!(
                "no ZFS dataset is mounted at {}; `zfs list -o name,mountpoint` shows the \
                 datasets and where they are mounted",
                vol.display()
            ))),
        }
    }

    /// A backend for a known dataset and mountpoint (no checks).
    pub fn with_dataset(dataset: String, mountpoint: PathBuf) -> Self {
        Zfs {
            dataset,
            mountpoint,
            comma: AtomicU8::new(COMMA_UNKNOWN),
        }
    }

    /// The dataset (`tank/data`).
    pub fn dataset(&self) -> &str {
        &self.dataset
    }

    /// Where it is mounted.
    pub fn mountpoint(&self) -> &Path {
        &self.mountpoint
    }

    fn snap(&self, h: u64) -> OsString {
        os(format!("{}@{h}", self.dataset))
    }

    fn no_such(&self, height: u64, available: Vec<u64>) -> SnapshotError {
        SnapshotError::NoSuchHeight {
            target: self.describe(),
            height,
            available,
        }
    }

    fn destroy_one(&self, h: u64) -> Result<(), SnapshotError> {
        zfs(&[os("destroy"), self.snap(h)]).map(drop)
    }
}

impl SnapshotBackend for Zfs {
    fn name(&self) -> &'static str {
        "zfs"
    }

    fn describe(&self) -> String {
        format!("dataset {}", self.dataset)
    }

    fn snapshot(&self, height: u64) -> Result<(), SnapshotError> {
        check_new_height(&self.describe(), &self.list()?, height)?;
        zfs(&[os("snapshot"), self.snap(height)]).map(drop)
    }

    fn list(&self) -> Result<Vec<u64>, SnapshotError> {
        let out = zfs(&[
            os("list"),
            os("-H"),
            os("-o"),
            os("name"),
            os("-t"),
            os("snapshot"),
            os("-d"),
            os("1"),
            os(&self.dataset),
        ])?;
        let prefix = format!("{}@", self.dataset);
        let mut hs: Vec<u64> = out
            .lines()
            .filter_map(|l| l.strip_prefix(&prefix))
            .filter_map(|s| super::parse_height(s.as_bytes()))
            .collect();
        hs.sort_unstable();
        hs.dedup();
        Ok(hs)
    }

    fn rollback(&self, height: u64) -> Result<(), SnapshotError> {
        let have = self.list()?;
        if have.binary_search(&height).is_err() {
            return Err(self.no_such(height, have));
        }
        zfs(&[os("rollback"), os("-r"), self.snap(height)])?;
        // `-r` destroyed the newer snapshots; make sure (e.g. if one was created meanwhile).
        let newer: Vec<u64> = self.list()?.into_iter().filter(|&h| h > height).collect();
        if !newer.is_empty() {
            tracing::warn!(
                ?newer,
                "snapshots newer than the rollback target remained; deleting"
            );
            self.delete(&newer)?;
        }
        Ok(())
    }

    fn delete(&self, heights: &[u64]) -> Result<(), SnapshotError> {
        let mut hs = heights.to_vec();
        hs.sort_unstable();
        hs.dedup();
        if hs.is_empty() {
            return Ok(());
        }
        let have = self.list()?;
        if let Some(&missing) = hs.iter().find(|h| have.binary_search(h).is_err()) {
            return Err(self.no_such(missing, have));
        }
        for batch in hs.chunks(DESTROY_BATCH) {
            if batch.len() == 1 || self.comma.load(Ordering::Relaxed) == COMMA_NO {
                for &h in batch {
                    self.destroy_one(h)?;
                }
                continue;
            }
            let list: Vec<String> = batch.iter().map(u64::to_string).collect();
            let arg = os(format!("{}@{}", self.dataset, list.join(",")));
            match zfs(&[os("destroy"), arg]) {
                Ok(_) => self.comma.store(COMMA_YES, Ordering::Relaxed),
                Err(e) => {
                    // Old ZFS (zfs-fuse) has no comma form; a batch may also fail as a whole
                    // because of one member. Go one by one: that works, or names the culprit.
                    tracing::debug!("batched destroy failed, destroying one by one: {e}");
                    let left = self.list()?;
                    for &h in batch.iter().filter(|h| left.binary_search(h).is_ok()) {
                        self.destroy_one(h)?;
                    }
                    if self.comma.load(Ordering::Relaxed) == COMMA_UNKNOWN
                        && let SnapshotError::Command { stderr, .. } = &e
                        && stderr.contains("invalid dataset name")
                    {
                        self.comma.store(COMMA_NO, Ordering::Relaxed);
                    }
                }
            }
        }
        Ok(())
    }

    fn preflight(&self) -> Result<(), SnapshotError> {
        let out = zfs(&[
            os("get"),
            os("-H"),
            os("-o"),
            os("value"),
            os("mounted"),
            os(&self.dataset),
        ])?;
        if out.trim() != "yes" {
            return Err(SnapshotError::Volume(format!(
                "dataset {} is not mounted (expected at {}); `zfs mount {}`",
                self.dataset,
                self.mountpoint.display(),
                self.dataset
            )));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hints() {
        assert!(hint("connect: No such file or directory\nPlease make sure that the zfs-fuse daemon is running.").contains("zfs-fuse"));
        assert!(hint("cannot destroy 'a@1': dataset is busy").contains("stop the node"));
        assert_eq!(hint("something else"), "");
    }
}
