//! What btm's tests share, written once (they had drifted apart in four copies): the rule for
//! when a test may skip, tool lookup, a seeded generator, a tree digest, scratch space, loop
//! filesystems ([`LoopFs`], also used by the benchmarks and the demo), ZFS test pools ([`zfs`]). It
//! depends on no btm crate, so the log's, the remote's, the agent's and the end-to-end tests
//! all use it.
mod loopfs;
mod watchdog;
pub mod zfs;

pub use loopfs::LoopFs;
pub use watchdog::{Watchdog, watchdog, watchdog_then};

use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

/// Whether skipping is forbidden: `BTM_REQUIRE_KERNEL` set to anything but empty or `0` (CI
/// sets 1), so that a test that cannot run fails instead of passing silently.
pub fn skips_forbidden() -> bool {
    std::env::var("BTM_REQUIRE_KERNEL").is_ok_and(|v| !v.is_empty() && v != "0")
}

/// Prints why `what` cannot run here and returns false, or panics when skipping is forbidden
/// ([`skips_forbidden`]).
pub fn skip(what: &str, reason: &str) -> bool {
    if skips_forbidden() {
        panic!("{what}: cannot run: {reason} (BTM_REQUIRE_KERNEL forbids skipping)");
    }
    eprintln!("SKIP {what}: {reason}");
    false
}

pub fn is_root() -> bool {
    nix::unistd::geteuid().is_root()
}

/// Is `tool` an executable in PATH (or the sbin directories, which a non-login PATH may lack)?
pub fn have_tool(tool: &str) -> bool {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(["/sbin", "/usr/sbin", "/usr/local/sbin"].map(PathBuf::from))
        .any(|d| {
            std::fs::metadata(d.join(tool)).is_ok_and(|m| m.is_file() && m.mode() & 0o111 != 0)
        })
}

/// Where test images and work directories live: `BTM_TEST_SCRATCH` (CI puts it on the real
/// disk, since images are sparse and large), else the temporary directory.
pub fn scratch() -> PathBuf {
    let p = std::env::var_os("BTM_TEST_SCRATCH")
        .map(PathBuf::from)
        .unwrap_or_else(std::env::temp_dir);
    std::fs::create_dir_all(&p).ok();
    p
}

/// splitmix64: small, seeded, reproducible test data without a rand dependency. (The log's
/// golden fixture was written with it: keep the sequence.)
pub struct Rng(pub u64);

impl Rng {
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    pub fn below(&mut self, n: u64) -> u64 {
        if n == 0 { 0 } else { self.next_u64() % n }
    }

    pub fn chance(&mut self, percent: u64) -> bool {
        self.below(100) < percent
    }

    pub fn pick<'a, T>(&mut self, v: &'a [T]) -> &'a T {
        &v[self.below(v.len() as u64) as usize]
    }

    /// Bytes that do not compress.
    pub fn bytes(&mut self, n: usize) -> Vec<u8> {
        let mut v = Vec::with_capacity(n + 8);
        while v.len() < n {
            v.extend_from_slice(&self.next_u64().to_le_bytes());
        }
        v.truncate(n);
        v
    }

    /// Bytes that compress somewhat (runs) or not at all (noise), half and half.
    pub fn data(&mut self, n: usize) -> Vec<u8> {
        let mut v = Vec::with_capacity(n);
        if self.chance(50) {
            while v.len() < n {
                let b = self.next_u64() as u8;
                let run = 1 + self.below(64) as usize;
                v.extend(std::iter::repeat_n(b, run.min(n - v.len())));
            }
        } else {
            while v.len() < n {
                v.extend_from_slice(&self.next_u64().to_le_bytes()[..8.min(n - v.len())]);
            }
        }
        v
    }
}

/// A digest of a whole tree (names, modes, file contents, symlink targets) for comparing two
/// directories; holes and written zeros compare equal, as they read the same.
pub fn tree_digest(dir: &Path) -> String {
    fn walk(dir: &Path, h: &mut blake3::Hasher) {
        let mut ents: Vec<_> = std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap())
            .collect();
        ents.sort_by_key(|e| e.file_name());
        for e in ents {
            let md = std::fs::symlink_metadata(e.path()).unwrap();
            h.update(e.file_name().as_bytes());
            h.update(&md.mode().to_le_bytes());
            if md.is_dir() {
                walk(&e.path(), h);
            } else if md.is_file() {
                h.update(&std::fs::read(e.path()).unwrap());
            } else {
                h.update(std::fs::read_link(e.path()).unwrap().as_os_str().as_bytes());
            }
        }
    }
    let mut h = blake3::Hasher::new();
    walk(dir, &mut h);
    h.finalize().to_hex().to_string()
}

/// `rm -rf` that also works without root on read-only directories.
pub fn remove_tree(dir: &Path) {
    fn open_up(p: &Path) {
        let _ = std::fs::set_permissions(p, std::fs::Permissions::from_mode(0o700));
        if let Ok(rd) = std::fs::read_dir(p) {
            for e in rd.flatten() {
                if e.file_type().is_ok_and(|t| t.is_dir()) {
                    open_up(&e.path());
                }
            }
        }
    }
    open_up(dir);
    std::fs::remove_dir_all(dir).unwrap();
}

/// A `kB` field of this process's `/proc/self/status` (`"VmRSS:"`, `"VmHWM:"`), 0 if absent:
/// what the memory examples report.
pub fn self_status_kib(key: &str) -> u64 {
    let s = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    s.lines()
        .find_map(|l| {
            l.strip_prefix(key)?
                .trim()
                .strip_suffix("kB")?
                .trim()
                .parse()
                .ok()
        })
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The golden fixture's data depends on this exact sequence.
    #[test]
    fn the_generator_is_splitmix64() {
        let mut r = Rng(0);
        assert_eq!(r.next_u64(), 0xe220_a839_7b1d_cdaf);
        assert_eq!(r.next_u64(), 0x6e78_9e6a_a1b9_65f4);
    }
}
