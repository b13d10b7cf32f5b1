//! Btrfs mode: the volume is a subvolume `<parent>/<name>`.
//!
//! Layout: height `H` is the read-only snapshot `<parent>/.btm-snapshots/<name>@<H>`. The
//! snapshot directory sits beside the volume, on the same filesystem (snapshots cannot cross
//! filesystems), outside the volume (so snapshots do not nest into each other and a rollback does
//! not swap them away). Several volumes may share a parent: the `<name>@` prefix keeps them apart.
//! Entries whose name is not `<name>@<canonical decimal>` or that are not subvolumes are ignored.
//!
//! * snapshot: `btrfs subvolume snapshot -r <vol> <snapdir>/<name>@<H>`.
//! * rollback to `H`: `btrfs subvolume snapshot <snapdir>/<name>@<H> <vol>.btm-new` (writable),
//!   then `renameat2(RENAME_EXCHANGE)` swaps `<vol>` and `<vol>.btm-new` in one step, so a crash
//!   leaves either the old or the new tree at `<vol>` (plain `rename` in two steps where the
//!   kernel lacks the flag). The parent directory is fsynced, the old tree (now at
//!   `<vol>.btm-new`) is deleted, and finally the snapshots newer than `H`, so the chain can
//!   re-reach those heights (BTM left them and then failed with "Snapshot N already exists").
//!   A `<vol>.btm-new` or `<vol>.btm-old` subvolume left by an interrupted rollback is deleted
//!   when the next rollback starts.
//! * delete: `btrfs subvolume delete <path>...` (many per call).
//!
//! Limits:
//! * The node must be stopped for a rollback: a process with files open in the volume keeps
//!   using the old tree, which is then deleted.
//! * The volume must not be a mount point (a subvolume mounted with `subvol=`): it cannot be
//!   renamed, and its parent is another filesystem. Mount the top level (or a parent subvolume)
//!   and point `--volume` at the subvolume directory; [`super::SnapshotError::MountPoint`] says so.
//! * Btrfs snapshots are not recursive: subvolumes nested inside the volume are not captured
//!   (they show up as empty directories in snapshots) and they stop the old tree from being
//!   deleted after a rollback. [`SnapshotBackend::preflight`] refuses such a volume.

use std::ffi::OsString;
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{DirBuilderExt, MetadataExt};
use std::path::{Path, PathBuf};

use super::{
    MountEntry, Probe, SnapshotBackend, SnapshotError, check_new_height, os, run, with_suffix,
};

/// The directory beside the volume that holds its snapshots.
pub const SNAPSHOT_DIR: &str = ".btm-snapshots";
/// Suffix of the writable snapshot a rollback builds (and, after the swap, of the old tree).
pub const NEW_SUFFIX: &str = ".btm-new";
/// Suffix of the old tree when the kernel cannot exchange names atomically.
pub const OLD_SUFFIX: &str = ".btm-old";

/// Inode number of every subvolume's root directory (`BTRFS_FIRST_FREE_OBJECTID`).
const SUBVOL_ROOT_INO: u64 = 256;
/// Paths per `btrfs subvolume delete` call.
const DELETE_BATCH: usize = 128;

/// Snapshots of one Btrfs subvolume.
#[derive(Debug)]
pub struct Btrfs {
    volume: PathBuf,
    parent: PathBuf,
    name: OsString,
    snapdir: PathBuf,
}

fn hint(stderr: &str) -> String {
    let s = stderr.to_ascii_lowercase();
    if s.contains("operation not permitted") || s.contains("permission denied") {
        "run btm as root".into()
    } else if s.contains("directory not empty") {
        "the subvolume contains nested subvolumes (`btrfs subvolume list -o <path>`); delete or \
         move them first"
            .into()
    } else if s.contains("cross-device") {
        "the snapshot directory must be on the same btrfs filesystem as the volume".into()
    } else if s.contains("read-only file system") {
        "the filesystem or the destination is read-only: check the mount options and that the \
         destination does not exist"
            .into()
    } else if s.contains("no space") {
        "the filesystem is full: delete old snapshots (lower cap) or grow it".into()
    } else if s.contains("not a btrfs") {
        "the path is not on a btrfs filesystem".into()
    } else {
        String::new()
    }
}

fn btrfs(args: &[OsString]) -> Result<String, SnapshotError> {
    run("btrfs", args, &hint)
}

fn io_err(context: String) -> impl FnOnce(io::Error) -> SnapshotError {
    move |source| SnapshotError::Io { context, source }
}

/// Is `p` the root directory of a subvolume (not following a final symlink)?
fn is_subvolume(p: &Path) -> io::Result<bool> {
    let md = std::fs::symlink_metadata(p)?;
    Ok(md.is_dir() && md.ino() == SUBVOL_ROOT_INO)
}

fn exists(p: &Path) -> bool {
    std::fs::symlink_metadata(p).is_ok()
}

fn mount_point_error(vol: &Path, m: &MountEntry) -> SnapshotError {
    SnapshotError::MountPoint {
        volume: vol.to_path_buf(),
        fstype: m.fstype.clone(),
        subvol: m.root.clone(),
        device: m.source.clone(),
    }
}

pub(super) fn probe(vol: &Path, mount: &MountEntry) -> Result<Probe, SnapshotError> {
    if !is_subvolume(vol).map_err(io_err(format!("cannot stat {}", vol.display())))? {
        return Ok(Probe::NotNative {
            reason: format!(
                "{} is a plain directory on btrfs, not a subvolume; to use btrfs snapshots, \
                 stop the node and make it one: `btrfs subvolume create {v}.new && cp -a \
                 --reflink=always {v}/. {v}.new/ && mv {v} {v}.orig && mv {v}.new {v}`",
                vol.display(),
                v = vol.display()
            ),
        });
    }
    if mount.mount_point == vol {
        return Err(mount_point_error(vol, mount));
    }
    Ok(Probe::Found(Box::new(Btrfs::at(vol.to_path_buf())?)))
}

impl Btrfs {
    /// The subvolume at `volume`. Errors if it is not a subvolume on btrfs, or is a mount point.
    pub fn open(volume: &Path) -> Result<Self, SnapshotError> {
        let vol = super::canonical_dir(volume)?;
        let mounts = super::read_mountinfo()?;
        let Some(m) = super::containing_mount(&mounts, &vol).filter(|m| m.fstype == "btrfs") else {
            return Err(SnapshotError::Volume(format!(
                "{} is not on a btrfs filesystem",
                vol.display()
            )));
        };
        match probe(&vol, m)? {
            Probe::Found(_) => Self::at(vol),
            Probe::NotNative { reason } => Err(SnapshotError::Volume(reason)),
        }
    }

    /// The backend for a canonical volume path (no checks beyond its shape).
    fn at(volume: PathBuf) -> Result<Self, SnapshotError> {
        let (Some(parent), Some(name)) = (volume.parent(), volume.file_name()) else {
            return Err(SnapshotError::Volume(format!(
                "{} has no parent directory to keep snapshots in",
                volume.display()
            )));
        };
        Ok(Btrfs {
            snapdir: parent.join(SNAPSHOT_DIR),
            parent: parent.to_path_buf(),
            name: name.to_os_string(),
            volume,
        })
    }

    /// The live subvolume.
    pub fn volume(&self) -> &Path {
        &self.volume
    }

    /// Where the snapshots live (`<parent>/.btm-snapshots`).
    pub fn snapshot_dir(&self) -> &Path {
        &self.snapdir
    }

    /// The snapshot subvolume for `height` (`<parent>/.btm-snapshots/<name>@<height>`).
    pub fn snapshot_path(&self, height: u64) -> PathBuf {
        let mut n = self.name.clone();
        n.push(format!("@{height}"));
        self.snapdir.join(n)
    }

    fn no_such(&self, height: u64, available: Vec<u64>) -> SnapshotError {
        SnapshotError::NoSuchHeight {
            target: self.describe(),
            height,
            available,
        }
    }

    fn check_not_mount_point(&self) -> Result<(), SnapshotError> {
        let mounts = super::read_mountinfo()?;
        if let Some(m) = super::containing_mount(&mounts, &self.volume)
            && m.mount_point == self.volume
        {
            return Err(mount_point_error(&self.volume, m));
        }
        Ok(())
    }

    /// The snapshot directory, when it exists, must be the agent's own: a real directory owned
    /// by the agent's user and writable by no one else. Otherwise another user could plant or
    /// swap snapshots in it, which a rollback would then copy onto the volume.
    fn check_snapdir(&self) -> Result<(), SnapshotError> {
        use std::os::unix::fs::MetadataExt;
        let md = match std::fs::symlink_metadata(&self.snapdir) {
            Ok(md) => md,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
            Err(e) => return Err(io_err(format!("cannot stat {}", self.snapdir.display()))(e)),
        };
        let me = nix::unistd::geteuid().as_raw();
        if md.file_type().is_dir() && md.uid() == me && md.mode() & 0o022 == 0 {
            return Ok(());
        }
        Err(SnapshotError::Volume(format!(
            "{} is not the agent's own directory (owner uid {}, mode {:o}{}): another user could \
             plant or swap snapshots there that a rollback would copy onto the volume; remove \
             it, or `chown {me} {}` and `chmod go-w` it",
            self.snapdir.display(),
            md.uid(),
            md.mode() & 0o7777,
            if md.file_type().is_symlink() {
                ", a symlink"
            } else {
                ""
            },
            self.snapdir.display()
        )))
    }

    /// Deletes a subvolume left at `p` by an interrupted rollback.
    fn remove_leftover(&self, p: &Path) -> Result<(), SnapshotError> {
        if !exists(p) {
            return Ok(());
        }
        if !is_subvolume(p).map_err(io_err(format!("cannot stat {}", p.display())))? {
            return Err(SnapshotError::Volume(format!(
                "{} exists and is not a subvolume btm left behind; move it away and retry",
                p.display()
            )));
        }
        tracing::warn!(path = %p.display(), "deleting subvolume left by an interrupted rollback");
        btrfs(&[os("subvolume"), os("delete"), os(p)]).map(drop)
    }

    fn sync_parent(&self) -> Result<(), SnapshotError> {
        let ctx = || format!("cannot fsync {}", self.parent.display());
        let dir = std::fs::File::open(&self.parent).map_err(io_err(ctx()))?;
        dir.sync_all().map_err(io_err(ctx()))
    }

    /// Puts the tree at `new` in place of the volume. Returns where the old tree went.
    fn swap_in(&self, new: &Path) -> Result<PathBuf, SnapshotError> {
        use nix::errno::Errno;
        use nix::fcntl::{AT_FDCWD, RenameFlags, renameat2};
        match renameat2(
            AT_FDCWD,
            &self.volume,
            AT_FDCWD,
            new,
            RenameFlags::RENAME_EXCHANGE,
        ) {
            Ok(()) => return Ok(new.to_path_buf()),
            Err(Errno::EINVAL | Errno::ENOSYS | Errno::EOPNOTSUPP) => {
                tracing::debug!("RENAME_EXCHANGE unsupported; renaming in two steps");
            }
            Err(e) => {
                return Err(SnapshotError::Io {
                    context: format!(
                        "cannot swap {} and {} (the volume is unchanged; {} holds the rolled-back \
                         tree)",
                        self.volume.display(),
                        new.display(),
                        new.display()
                    ),
                    source: e.into(),
                });
            }
        }
        let old = with_suffix(&self.volume, OLD_SUFFIX);
        std::fs::rename(&self.volume, &old).map_err(io_err(format!(
            "cannot move {} to {} (the volume is unchanged)",
            self.volume.display(),
            old.display()
        )))?;
        if let Err(e) = std::fs::rename(new, &self.volume) {
            // Put the old tree back rather than leave no volume at all.
            let back = std::fs::rename(&old, &self.volume);
            return Err(SnapshotError::Io {
                context: format!(
                    "cannot move {} to {} ({})",
                    new.display(),
                    self.volume.display(),
                    match back {
                        Ok(()) => "the volume is unchanged".to_string(),
                        Err(b) => format!(
                            "and moving the old tree back failed too ({b}): it is at {}; \
                             rename it to {} by hand",
                            old.display(),
                            self.volume.display()
                        ),
                    }
                ),
                source: e,
            });
        }
        Ok(old)
    }

    fn delete_paths(&self, paths: &[PathBuf]) -> Result<(), SnapshotError> {
        for batch in paths.chunks(DELETE_BATCH) {
            let mut args = vec![os("subvolume"), os("delete")];
            args.extend(batch.iter().map(os));
            btrfs(&args)?;
        }
        Ok(())
    }
}

impl SnapshotBackend for Btrfs {
    fn name(&self) -> &'static str {
        "btrfs"
    }

    fn describe(&self) -> String {
        format!("subvolume {}", self.volume.display())
    }

    fn snapshot(&self, height: u64) -> Result<(), SnapshotError> {
        check_new_height(&self.describe(), &self.list()?, height)?;
        let dest = self.snapshot_path(height);
        // `btrfs subvolume snapshot` puts the snapshot INSIDE an existing destination directory.
        if exists(&dest) {
            return Err(SnapshotError::Volume(format!(
                "{} exists but is not a snapshot btm recognises; move it away",
                dest.display()
            )));
        }
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&self.snapdir)
            .map_err(io_err(format!("cannot create {}", self.snapdir.display())))?;
        self.check_snapdir()?;
        btrfs(&[
            os("subvolume"),
            os("snapshot"),
            os("-r"),
            os(&self.volume),
            os(&dest),
        ])?;
        Ok(())
    }

    fn list(&self) -> Result<Vec<u64>, SnapshotError> {
        let rd = match std::fs::read_dir(&self.snapdir) {
            Ok(rd) => rd,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(io_err(format!("cannot list {}", self.snapdir.display()))(e)),
        };
        let mut prefix = self.name.as_bytes().to_vec();
        prefix.push(b'@');
        let mut hs = Vec::new();
        for entry in rd {
            let entry = entry.map_err(io_err(format!("cannot list {}", self.snapdir.display())))?;
            let fname = entry.file_name();
            let Some(h) = fname
                .as_bytes()
                .strip_prefix(prefix.as_slice())
                .and_then(super::parse_height)
            else {
                continue;
            };
            match is_subvolume(&entry.path()) {
                Ok(true) => hs.push(h),
                Ok(false) => {
                    tracing::warn!(path = %entry.path().display(), "not a subvolume; ignored")
                }
                Err(e) if e.kind() == io::ErrorKind::NotFound => {} // deleted meanwhile
                Err(e) => {
                    return Err(io_err(format!("cannot stat {}", entry.path().display()))(e));
                }
            }
        }
        hs.sort_unstable();
        Ok(hs)
    }

    fn rollback(&self, height: u64) -> Result<(), SnapshotError> {
        let have = self.list()?;
        if have.binary_search(&height).is_err() {
            return Err(self.no_such(height, have));
        }
        self.check_not_mount_point()?;
        let new = with_suffix(&self.volume, NEW_SUFFIX);
        self.remove_leftover(&new)?;
        self.remove_leftover(&with_suffix(&self.volume, OLD_SUFFIX))?;

        btrfs(&[
            os("subvolume"),
            os("snapshot"),
            os(self.snapshot_path(height)),
            os(&new),
        ])?;
        if !is_subvolume(&new).map_err(io_err(format!("cannot stat {}", new.display())))? {
            return Err(SnapshotError::Volume(format!(
                "btrfs did not create the subvolume {} (something else created that path \
                 meanwhile?); the volume is unchanged",
                new.display()
            )));
        }
        let old = self.swap_in(&new)?;
        self.sync_parent()?;
        // The volume is now at `height`. Failing to free the old tree is not a failed rollback.
        if let Err(e) = btrfs(&[os("subvolume"), os("delete"), os(&old)]) {
            tracing::warn!(
                "rolled back, but the old tree at {} could not be deleted (the next rollback \
                 retries): {e}",
                old.display()
            );
        }
        let newer: Vec<u64> = self.list()?.into_iter().filter(|&h| h > height).collect();
        self.delete(&newer)
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
        let paths: Vec<PathBuf> = hs.iter().map(|&h| self.snapshot_path(h)).collect();
        self.delete_paths(&paths)
    }

    fn preflight(&self) -> Result<(), SnapshotError> {
        self.check_not_mount_point()?;
        self.check_snapdir()?;
        if !is_subvolume(&self.volume)
            .map_err(io_err(format!("cannot stat {}", self.volume.display())))?
        {
            return Err(SnapshotError::Volume(format!(
                "{} is no longer a subvolume",
                self.volume.display()
            )));
        }
        // Nested subvolumes are not in any snapshot, and would vanish from the volume (and
        // block the clean-up) on rollback.
        let nested = btrfs(&[os("subvolume"), os("list"), os("-o"), os(&self.volume)])?;
        let nested: Vec<&str> = nested
            .lines()
            .filter_map(|l| l.split_once(" path ").map(|(_, p)| p.trim()))
            .collect();
        if !nested.is_empty() {
            return Err(SnapshotError::Volume(format!(
                "{} contains nested subvolumes ({}, paths from the filesystem's top level); \
                 btrfs snapshots do not include them and a rollback would leave them behind: \
                 move their data into plain directories, or use the ebpf mode",
                self.volume.display(),
                nested.join(", ")
            )));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layout() {
        let b = Btrfs::at(PathBuf::from("/srv/chain")).unwrap();
        assert_eq!(b.snapshot_dir(), Path::new("/srv/.btm-snapshots"));
        assert_eq!(
            b.snapshot_path(120),
            PathBuf::from("/srv/.btm-snapshots/chain@120")
        );
        assert_eq!(b.describe(), "subvolume /srv/chain");
        assert!(Btrfs::at(PathBuf::from("/")).is_err());
        assert_eq!(
            with_suffix(Path::new("/srv/chain"), NEW_SUFFIX),
            PathBuf::from("/srv/chain.btm-new")
        );
    }

    #[test]
    fn hints() {
        assert!(hint("ERROR: Could not destroy subvolume: Directory not empty").contains("nested"));
        assert_eq!(hint("???"), "");
    }
}
