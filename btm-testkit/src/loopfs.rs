//! A filesystem on a sparse image file, loop-mounted: what the end-to-end tests, the
//! benchmarks and the demo run on. One implementation, so that teardown (a volume left frozen,
//! a mount still busy) is handled the same way everywhere.
use std::ffi::OsStr;
use std::io;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

/// A loop device holding `fstype`, mounted at `mnt`; unmounted, detached and its image
/// removed when dropped.
pub struct LoopFs {
    pub img: PathBuf,
    pub mnt: PathBuf,
    pub dev: String,
    pub fstype: String,
    /// Every mount of the device, the first one last to go.
    mounts: Vec<PathBuf>,
}

fn run(program: &str, args: &[&OsStr]) -> io::Result<String> {
    let out = Command::new(program).args(args).output()?;
    if !out.status.success() {
        return Err(io::Error::other(format!(
            "{program} {args:?}: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        )));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

impl LoopFs {
    /// Creates a `bytes`-byte sparse image at `img` (replacing one left by an earlier run),
    /// makes `fstype` (ext4, xfs or btrfs) on it and mounts it at `mnt` (created if needed).
    pub fn create(img: &Path, mnt: &Path, fstype: &str, bytes: u64) -> io::Result<LoopFs> {
        let mkfs: &[&str] = match fstype {
            "ext4" => &["mkfs.ext4", "-q", "-F"],
            "xfs" => &["mkfs.xfs", "-q", "-f"],
            "btrfs" => &["mkfs.btrfs", "-q", "-f"],
            other => {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidInput,
                    format!("unsupported filesystem {other}"),
                ));
            }
        };
        let _ = Command::new("umount").arg("-d").arg(mnt).output();
        let _ = std::fs::remove_file(img);
        std::fs::create_dir_all(mnt)?;
        std::fs::File::create(img)?.set_len(bytes)?;
        let mut args: Vec<&OsStr> = mkfs[1..].iter().map(OsStr::new).collect();
        args.push(img.as_os_str());
        run(mkfs[0], &args)?;
        let dev = run(
            "losetup",
            &["--find".as_ref(), "--show".as_ref(), img.as_os_str()],
        )?
        .trim()
        .to_string();
        let mut fs = LoopFs {
            img: img.to_path_buf(),
            mnt: mnt.to_path_buf(),
            dev,
            fstype: fstype.to_string(),
            mounts: Vec::new(),
        };
        fs.mount_at(&[], mnt)?;
        Ok(fs)
    }

    /// Mounts the device (again) at `at` with extra `mount` arguments (`-o subvol=x`).
    pub fn mount_at(&mut self, opts: &[&str], at: &Path) -> io::Result<()> {
        let mut args: Vec<&OsStr> = opts.iter().map(OsStr::new).collect();
        args.push(self.dev.as_ref());
        args.push(at.as_os_str());
        run("mount", &args)?;
        self.mounts.push(at.to_path_buf());
        Ok(())
    }

    /// `mnt/rel`.
    pub fn path(&self, rel: &str) -> PathBuf {
        self.mnt.join(rel)
    }
}

impl Drop for LoopFs {
    fn drop(&mut self) {
        for m in self.mounts.drain(..).rev() {
            // An agent stopped cleanly leaves its tracker running for the next start, pinned
            // under the filesystem's device: nothing will start on this one again.
            if let Some(dev) = mount_dev(&m) {
                let _ = std::fs::remove_dir_all(format!("/sys/fs/bpf/btm/{dev}"));
            }
            // A test or agent killed inside a cut may have left it frozen.
            let _ = Command::new("fsfreeze").arg("-u").arg(&m).output();
            let unmounted = (0..20).any(|i| {
                if i > 0 {
                    std::thread::sleep(Duration::from_millis(200));
                }
                Command::new("umount")
                    .arg(&m)
                    .status()
                    .is_ok_and(|s| s.success())
            });
            if !unmounted {
                eprintln!("cleanup: {} stays busy; unmounting lazily", m.display());
                let _ = Command::new("umount").arg("-l").arg(&m).status();
            }
        }
        let _ = Command::new("losetup").args(["-d", &self.dev]).output();
        let _ = std::fs::remove_file(&self.img);
    }
}

/// The device of the filesystem mounted at `mnt` as `/proc/self/mountinfo` names it
/// (`MAJ_MIN`; on btrfs not the `st_dev` of its root, which is the subvolume's).
fn mount_dev(mnt: &std::path::Path) -> Option<String> {
    let info = std::fs::read_to_string("/proc/self/mountinfo").ok()?;
    let want = mnt.to_str()?;
    info.lines().rev().find_map(|l| {
        let f: Vec<&str> = l.split(' ').collect();
        (f.get(4) == Some(&want)).then(|| f.get(2).map(|d| d.replace(':', "_")))?
    })
}
