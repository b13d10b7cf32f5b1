//! Native snapshot modes: ZFS datasets and Btrfs subvolumes (`--mode zfs`, `--mode btrfs`).
//!
//! Both backends drive the filesystem's own tools (`zfs`, `btrfs`) through
//! [`std::process::Command`], never through a shell; they are the supported interfaces. Snapshots
//! are named after the block height they capture:
//!
//! * ZFS: the volume is the mountpoint of a dataset `D`; snapshots are `D@<height>`
//!   (see [`zfs`]).
//! * Btrfs: the volume is a subvolume `<parent>/<name>`; snapshots are read-only subvolumes
//!   `<parent>/.btm-snapshots/<name>@<height>` (see [`btrfs`]).
//!
//! Which heights to keep is decided by [`crate::retention::Policy`]: the agent calls
//! [`SnapshotBackend::list`], then `Policy::to_delete`, then [`SnapshotBackend::delete`].
//! Which height a rollback goes to is decided by [`resolve_target`] (BTM's rules).

pub mod btrfs;
pub mod zfs;

use std::ffi::{OsStr, OsString};
use std::fmt::Write as _;
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use crate::log::NoHeight;

pub use btrfs::Btrfs;
pub use zfs::Zfs;

/// A native snapshot backend for one volume.
pub trait SnapshotBackend: Send + Sync + std::fmt::Debug {
    /// `"zfs"` or `"btrfs"`.
    fn name(&self) -> &'static str;

    /// What is snapshotted, for messages: `dataset tank/data`, `subvolume /srv/chain`.
    fn describe(&self) -> String {
        self.name().to_string()
    }

    /// Takes a snapshot for `height`. Fails if one exists for that height, or if `height` is not
    /// above the latest snapshot (roll back first, which removes the newer ones).
    fn snapshot(&self, height: u64) -> Result<(), SnapshotError>;

    /// The heights that have a snapshot, ascending.
    fn list(&self) -> Result<Vec<u64>, SnapshotError>;

    /// Rolls the volume back to `height` (which must exist). Removes snapshots newer than it
    /// afterwards so the chain can re-reach those heights (BTM's btrfs mode forgot this and
    /// failed with "Snapshot N already exists"). The node must be stopped.
    fn rollback(&self, height: u64) -> Result<(), SnapshotError>;

    /// Deletes the snapshots at `heights` (batched where the tool allows). Every height must
    /// exist; nothing is deleted otherwise.
    fn delete(&self, heights: &[u64]) -> Result<(), SnapshotError>;

    /// Checks now what a later [`SnapshotBackend::rollback`] would need, so that setup
    /// problems surface when the agent starts rather than when the user needs the rollback.
    fn preflight(&self) -> Result<(), SnapshotError> {
        Ok(())
    }
}

/// What went wrong, with what to do about it.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SnapshotError {
    /// A tool ran and failed.
    #[error(
        "`{cmdline}` failed ({status}){}{}",
        fmt_stderr(stderr),
        fmt_hint(hint)
    )]
    Command {
        /// The command line, quoted for a shell.
        cmdline: String,
        /// How it ended (`exit status: 1`).
        status: String,
        /// Its standard error, trimmed.
        stderr: String,
        /// What to do about it (may be empty).
        hint: String,
    },
    /// A tool could not be started at all.
    #[error("cannot run `{cmdline}`: {source}{}", fmt_hint(hint))]
    Spawn {
        /// The command line, quoted for a shell.
        cmdline: String,
        /// Why.
        #[source]
        source: io::Error,
        /// What to do about it.
        hint: String,
    },
    /// The requested height has no snapshot.
    #[error(
        "{target} has no snapshot at height {height}; available: {}",
        fmt_heights(available)
    )]
    NoSuchHeight {
        /// `dataset tank/data`, `subvolume /srv/chain`.
        target: String,
        /// The height asked for.
        height: u64,
        /// The heights that do exist.
        available: Vec<u64>,
    },
    /// A snapshot for the height exists already.
    #[error(
        "{target} already has a snapshot at height {height}; to take it again, roll back to a \
         lower height (which removes the newer snapshots) or delete height {height} first"
    )]
    AlreadyExists {
        /// `dataset tank/data`, `subvolume /srv/chain`.
        target: String,
        /// The height asked for.
        height: u64,
    },
    /// The height is not above the latest snapshot.
    #[error(
        "{target} cannot take a snapshot at height {height}: the latest snapshot is at height \
         {latest}; heights must increase. If the chain went back, roll back to a height below \
         {height} first (that removes the newer snapshots)"
    )]
    NotAbove {
        /// `dataset tank/data`, `subvolume /srv/chain`.
        target: String,
        /// The height asked for.
        height: u64,
        /// The latest existing snapshot.
        latest: u64,
    },
    /// No snapshot satisfies a rollback request.
    #[error("{target}: {reason}")]
    NoTarget {
        /// `dataset tank/data`, `subvolume /srv/chain`.
        target: String,
        /// Why (with the available heights).
        reason: String,
    },
    /// A Btrfs volume that is itself a mount point.
    #[error(
        "{volume} is a mount point ({fstype} subvolume `{subvol}` mounted there), so btm cannot \
         keep snapshots beside it or swap it on rollback; mount the filesystem's top level (or a \
         parent subvolume) somewhere, e.g. `mount -o subvolid=5 {device} /mnt/top`, and point \
         --volume at the subvolume directory inside it (e.g. /mnt/top{subvol})"
    )]
    MountPoint {
        /// The volume.
        volume: PathBuf,
        /// The filesystem type.
        fstype: String,
        /// The subvolume mounted there (mountinfo's root field).
        subvol: String,
        /// The device mounted there.
        device: String,
    },
    /// The volume is not usable as it is.
    #[error("{0}")]
    Volume(String),
    /// A file-system call failed.
    #[error("{context}: {source}")]
    Io {
        /// What was being done.
        context: String,
        /// Why it failed.
        #[source]
        source: io::Error,
    },
}

fn fmt_heights(h: &[u64]) -> String {
    if h.is_empty() {
        return "none".into();
    }
    // Long lists: the first and last few are what a reader needs.
    let show = |s: &[u64]| s.iter().map(u64::to_string).collect::<Vec<_>>().join(", ");
    if h.len() <= 20 {
        show(h)
    } else {
        format!(
            "{}, ... ({} more) ..., {}",
            show(&h[..8]),
            h.len() - 16,
            show(&h[h.len() - 8..])
        )
    }
}

fn fmt_stderr(s: &str) -> String {
    if s.is_empty() {
        String::new()
    } else {
        format!(": {s}")
    }
}

fn fmt_hint(s: &str) -> String {
    if s.is_empty() {
        String::new()
    } else {
        format!("; {s}")
    }
}

/// Picks the rollback height from the available ones, with BTM's rules:
/// no target: the latest; `exact`: the target itself or an error; otherwise the newest height
/// at or below the target; below every height: an error.
/// A snapshot may be taken at `height` only when none exists there and it is above the
/// newest (`have` ascending), like a chain's heights.
pub(crate) fn check_new_height(
    target: &str,
    have: &[u64],
    height: u64,
) -> Result<(), SnapshotError> {
    if have.binary_search(&height).is_ok() {
        return Err(SnapshotError::AlreadyExists {
            target: target.to_string(),
            height,
        });
    }
    match have.last() {
        Some(&latest) if latest > height => Err(SnapshotError::NotAbove {
            target: target.to_string(),
            height,
            latest,
        }),
        _ => Ok(()),
    }
}

/// BTM's rollback target among the native snapshots' heights (rules: [`crate::log::pick_height`]).
pub fn resolve_target(
    target_desc: &str,
    available: &[u64],
    target: Option<u64>,
    exact: bool,
) -> Result<u64, SnapshotError> {
    let mut avail = available.to_vec();
    avail.sort_unstable();
    avail.dedup();
    let t = target.unwrap_or_default();
    crate::log::pick_height(&avail, target, exact).map_err(|e| match e {
        NoHeight::Empty => SnapshotError::NoTarget {
            target: target_desc.into(),
            reason: "there are no snapshots to roll back to".into(),
        },
        NoHeight::NotRecorded { .. } => SnapshotError::NoSuchHeight {
            target: target_desc.into(),
            height: t,
            available: avail.clone(),
        },
        NoHeight::AllAbove { .. } => SnapshotError::NoTarget {
            target: target_desc.into(),
            reason: format!(
                "no snapshot at or below height {t}; available: {}",
                fmt_heights(&avail)
            ),
        },
    })
}

/// What [`probe`] found at a volume.
#[derive(Debug)]
pub enum Probe {
    /// A volume with native snapshots.
    Found(Box<dyn SnapshotBackend>),
    /// No native snapshots here, and why (a sentence for the user).
    NotNative {
        /// Why not, and what would make it work.
        reason: String,
    },
}

/// The native snapshot backend for `volume`: a ZFS dataset mounted at `volume`, or a Btrfs
/// subvolume at `volume`; `None` for anything else (see [`probe`] for the reason).
/// Errors: the volume is missing, the tools fail, or it is a Btrfs subvolume mounted on its own
/// (see [`SnapshotError::MountPoint`]).
pub fn detect(volume: &Path) -> Result<Option<Box<dyn SnapshotBackend>>, SnapshotError> {
    match probe(volume)? {
        Probe::Found(b) => Ok(Some(b)),
        Probe::NotNative { reason } => {
            tracing::debug!(volume = %volume.display(), "no native snapshots: {reason}");
            Ok(None)
        }
    }
}

/// Like [`detect`], but says why a volume has no native snapshots.
pub fn probe(volume: &Path) -> Result<Probe, SnapshotError> {
    let vol = canonical_dir(volume)?;
    let mounts = read_mountinfo()?;
    let Some(mount) = containing_mount(&mounts, &vol) else {
        return Ok(Probe::NotNative {
            reason: format!("{} is not on any mounted filesystem", vol.display()),
        });
    };
    match mount.fstype.as_str() {
        "zfs" | "fuse.zfs" => zfs::probe(&vol, mount),
        "btrfs" => btrfs::probe(&vol, mount),
        other => Ok(Probe::NotNative {
            reason: format!(
                "{} is on a {other} filesystem, which has no native snapshots btm can use \
                 (zfs or btrfs)",
                vol.display()
            ),
        }),
    }
}

/// The volume as an absolute path without symlinks; it must be a directory. A relative
/// name that is no directory but a ZFS dataset (`zroot/data`, as BTM takes it) stands for the
/// dataset's mountpoint.
pub fn canonical_dir(volume: &Path) -> Result<PathBuf, SnapshotError> {
    let vol = match std::fs::canonicalize(volume) {
        Ok(v) => v,
        Err(e) if e.kind() == io::ErrorKind::NotFound && zfs::may_be_dataset(volume) => {
            zfs::dataset_mountpoint(volume)?
        }
        Err(e) => {
            return Err(SnapshotError::Io {
                context: format!("cannot resolve volume {}", volume.display()),
                source: e,
            });
        }
    };
    if !vol.is_dir() {
        return Err(SnapshotError::Volume(format!(
            "volume {} is not a directory",
            vol.display()
        )));
    }
    Ok(vol)
}

#[cfg(test)]
use crate::volume::parse_mountinfo;
/// One line of `/proc/self/mountinfo` (the volume module's parser serves every mode).
pub(crate) use crate::volume::{Mount as MountEntry, containing_mount};

pub(crate) fn read_mountinfo() -> Result<Vec<MountEntry>, SnapshotError> {
    crate::volume::read_mountinfo().map_err(|e| SnapshotError::Io {
        context: "cannot read /proc/self/mountinfo".into(),
        source: e,
    })
}

/// `<base><suffix>` as a sibling name (`/a/vol` + `.btm-new` = `/a/vol.btm-new`).
pub(crate) fn with_suffix(base: &Path, suffix: &str) -> PathBuf {
    let mut s = base.as_os_str().to_os_string();
    s.push(suffix);
    PathBuf::from(s)
}

/// Parses a canonical decimal height (`"120"`, not `"0120"` or `"+1"`).
pub(crate) fn parse_height(s: &[u8]) -> Option<u64> {
    if s.is_empty() || (s.len() > 1 && s[0] == b'0') || !s.iter().all(u8::is_ascii_digit) {
        return None;
    }
    std::str::from_utf8(s).ok()?.parse().ok()
}

/// A command line as a shell would need it, for messages.
pub(crate) fn cmdline(program: &str, args: &[OsString]) -> String {
    let mut s = String::from(program);
    for a in args {
        s.push(' ');
        let b = a.as_bytes();
        let plain = !b.is_empty()
            && b.iter()
                .all(|c| c.is_ascii_alphanumeric() || b"@%+=:,./_-".contains(c));
        if plain {
            s.push_str(&a.to_string_lossy());
        } else {
            let _ = write!(s, "'{}'", a.to_string_lossy().replace('\'', r"'\''"));
        }
    }
    s
}

/// How long a zfs/btrfs command may take (`BTM_CMD_TIMEOUT` seconds, default 300): a hung
/// tool (a zfs-fuse daemon that stopped answering) must fail the request, not the agent.
fn cmd_timeout() -> std::time::Duration {
    let secs = std::env::var("BTM_CMD_TIMEOUT")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(300);
    std::time::Duration::from_secs(secs)
}

/// Runs `program args` (no shell, `LC_ALL=C`) and returns its standard output. `hint` turns the
/// tool's stderr into advice for the user (empty for none). Killed after [`cmd_timeout`].
pub(crate) fn run(
    program: &str,
    args: &[OsString],
    hint: &dyn Fn(&str) -> String,
) -> Result<String, SnapshotError> {
    run_timeout(program, args, hint, cmd_timeout())
}

fn run_timeout(
    program: &str,
    args: &[OsString],
    hint: &dyn Fn(&str) -> String,
    timeout: std::time::Duration,
) -> Result<String, SnapshotError> {
    use std::io::Read;
    let line = cmdline(program, args);
    tracing::debug!(cmd = %line, "running");
    let spawn_err = |e: io::Error| SnapshotError::Spawn {
        hint: if e.kind() == io::ErrorKind::NotFound {
            format!("`{program}` is not installed or not in PATH")
        } else {
            String::new()
        },
        cmdline: line.clone(),
        source: e,
    };
    let mut child = Command::new(program)
        .args(args)
        .env("LC_ALL", "C")
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .map_err(spawn_err)?;
    let drain = |mut r: Box<dyn Read + Send>| {
        std::thread::spawn(move || {
            let mut v = Vec::new();
            let _ = r.read_to_end(&mut v);
            v
        })
    };
    let out = drain(Box::new(child.stdout.take().expect("piped")));
    let err = drain(Box::new(child.stderr.take().expect("piped")));
    let deadline = std::time::Instant::now() + timeout;
    let status = loop {
        if let Some(st) = child.try_wait().map_err(spawn_err)? {
            break Some(st);
        }
        if std::time::Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    };
    let stdout = out.join().unwrap_or_default();
    let stderr = String::from_utf8_lossy(&err.join().unwrap_or_default())
        .trim()
        .to_string();
    let Some(status) = status else {
        return Err(SnapshotError::Command {
            hint: format!(
                "`{program}` did not answer within {}s and was killed; check the tool (for zfs-fuse: \
                 is the zfs-fuse daemon alive? restart it) or raise BTM_CMD_TIMEOUT",
                timeout.as_secs()
            ),
            cmdline: line,
            status: "timed out".into(),
            stderr,
        });
    };
    if !status.success() {
        return Err(SnapshotError::Command {
            hint: hint(&stderr),
            cmdline: line,
            status: status.to_string(),
            stderr,
        });
    }
    Ok(String::from_utf8_lossy(&stdout).into_owned())
}

pub(crate) fn os(s: impl AsRef<OsStr>) -> OsString {
    s.as_ref().to_os_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_hung_command_is_killed_and_reported() {
        let t0 = std::time::Instant::now();
        let e = run_timeout(
            "sleep",
            &[os("30")],
            &|_| String::new(),
            std::time::Duration::from_secs(1),
        )
        .unwrap_err()
        .to_string();
        assert!(
            t0.elapsed() < std::time::Duration::from_secs(10),
            "not killed in time"
        );
        assert!(
            e.contains("timed out") && e.contains("did not answer within 1s"),
            "{e}"
        );
        assert_eq!(
            run_timeout(
                "echo",
                &[os("hi")],
                &|_| String::new(),
                std::time::Duration::from_secs(5)
            )
            .unwrap(),
            "hi\n"
        );
    }

    #[test]
    fn mountinfo_parsing() {
        let raw = b"44 27 0:40 / /zfs-kstat rw,nosuid - fuse kstat rw\n\
45 27 0:41 / /tmp/zx/mnt rw,relatime - fuse.zfs btmexp1 rw,user_id=0\n\
48 27 0:43 /vol /srv/my\\040chain rw,relatime shared:7 master:1 - btrfs /dev/loop0 rw,subvol=/vol\n\
garbage line\n";
        let m = parse_mountinfo(raw);
        assert_eq!(m.len(), 3);
        assert_eq!(m[1].fstype, "fuse.zfs");
        assert_eq!(m[1].source, "btmexp1");
        assert_eq!(m[2].mount_point, PathBuf::from("/srv/my chain"));
        assert_eq!(m[2].root, "/vol");
        assert_eq!(m[2].source, "/dev/loop0");
        assert_eq!(m[2].fstype, "btrfs");
    }

    #[test]
    fn containing_mount_prefers_longest_and_last() {
        let e = |mp: &str, src: &str| MountEntry {
            root: "/".into(),
            mount_point: mp.into(),
            fstype: "x".into(),
            source: src.into(),
            major: 0,
            minor: 0,
        };
        let m = vec![
            e("/", "root"),
            e("/srv", "a"),
            e("/srv", "b"),
            e("/srvx", "c"),
        ];
        assert_eq!(
            containing_mount(&m, Path::new("/srv/x")).unwrap().source,
            "b"
        );
        assert_eq!(containing_mount(&m, Path::new("/srv")).unwrap().source, "b");
        assert_eq!(
            containing_mount(&m, Path::new("/srvy")).unwrap().source,
            "root"
        );
        assert_eq!(
            containing_mount(&m, Path::new("/srvx/q")).unwrap().source,
            "c"
        );
    }

    #[test]
    fn heights_parse_canonically() {
        assert_eq!(parse_height(b"0"), Some(0));
        assert_eq!(parse_height(b"120"), Some(120));
        assert_eq!(parse_height(b"18446744073709551615"), Some(u64::MAX));
        assert_eq!(parse_height(b"18446744073709551616"), None);
        assert_eq!(parse_height(b"0120"), None);
        assert_eq!(parse_height(b""), None);
        assert_eq!(parse_height(b"+1"), None);
        assert_eq!(parse_height(b"12a"), None);
    }

    #[test]
    fn resolve_follows_btm() {
        let a = [100, 110, 130];
        assert_eq!(resolve_target("t", &a, None, false).unwrap(), 130);
        assert_eq!(resolve_target("t", &a, Some(110), true).unwrap(), 110);
        assert_eq!(resolve_target("t", &a, Some(125), false).unwrap(), 110);
        assert_eq!(resolve_target("t", &a, Some(1000), false).unwrap(), 130);
        let e = resolve_target("dataset tank/data", &a, Some(120), true).unwrap_err();
        assert_eq!(
            e.to_string(),
            "dataset tank/data has no snapshot at height 120; available: 100, 110, 130"
        );
        let e = resolve_target("t", &a, Some(99), false).unwrap_err();
        assert!(
            e.to_string().contains("no snapshot at or below height 99"),
            "{e}"
        );
        assert!(resolve_target("t", &[], None, false).is_err());
    }

    #[test]
    fn messages() {
        let args = [os("snapshot"), os("tank/my data@10"), os("it's")];
        assert_eq!(
            cmdline("zfs", &args),
            r"zfs snapshot 'tank/my data@10' 'it'\''s'"
        );
        let long: Vec<u64> = (1..=30).collect();
        let s = fmt_heights(&long);
        assert!(
            s.starts_with("1, 2,") && s.ends_with("29, 30") && s.contains("14 more"),
            "{s}"
        );
        let e = run("/nonexistent/btm-tool", &[os("x")], &|_| String::new()).unwrap_err();
        assert!(e.to_string().contains("not installed"), "{e}");
        let e = run("false", &[], &|_| "do this".into()).unwrap_err();
        assert_eq!(e.to_string(), "`false` failed (exit status: 1); do this");
    }
}
