//! Walking the tracked tree: the namespace as the log sees it, plus inode identities.
use std::{
    collections::BTreeMap,
    fs,
    os::unix::{ffi::OsStrExt, fs::MetadataExt},
    path::Path,
};

use crate::log::RelPath;

/// A file's identity across cuts: inode number plus birth time, so a reused inode number is
/// never mistaken for the file that had it before.
pub type Identity = (u64, i128);

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Kind {
    Dir,
    File { ident: Identity, size: u64 },
    Symlink { target: Vec<u8> },
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ScanEntry {
    pub kind: Kind,
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
}

/// The tree under a root, by relative path (parents sort before their children).
#[derive(Clone, Debug, Default)]
pub struct Scan {
    pub entries: BTreeMap<RelPath, ScanEntry>,
    /// Sockets, FIFOs and device nodes are not data: skipped, counted.
    pub skipped_special: u64,
}

impl Scan {
    pub fn walk(root: &Path) -> std::io::Result<Scan> {
        let mut scan = Scan::default();
        let root_dev = fs::symlink_metadata(root)?.dev();
        let mut stack: Vec<(std::path::PathBuf, RelPath)> = vec![(root.to_path_buf(), Vec::new())];
        while let Some((dir, rel)) = stack.pop() {
            for e in fs::read_dir(&dir)? {
                let e = e?;
                let name = e.file_name();
                let mut path = rel.clone();
                if !path.is_empty() {
                    path.push(b'/');
                }
                path.extend_from_slice(name.as_bytes());
                let md = match fs::symlink_metadata(e.path()) {
                    Ok(m) => m,
                    // Deleted between readdir and stat (only possible while unfrozen).
                    Err(err) if err.kind() == std::io::ErrorKind::NotFound => continue,
                    Err(err) => return Err(err),
                };
                let ft = md.file_type();
                let kind = if ft.is_dir() {
                    if md.dev() != root_dev {
                        continue; // another filesystem mounted inside the volume
                    }
                    stack.push((e.path(), path.clone()));
                    Kind::Dir
                } else if ft.is_file() {
                    Kind::File {
                        ident: identity(&md),
                        size: md.len(),
                    }
                } else if ft.is_symlink() {
                    let target = fs::read_link(e.path())?;
                    Kind::Symlink {
                        target: target.as_os_str().as_bytes().to_vec(),
                    }
                } else {
                    scan.skipped_special += 1;
                    continue;
                };
                scan.entries.insert(
                    path,
                    ScanEntry {
                        kind,
                        mode: md.mode() & 0o7777,
                        uid: md.uid(),
                        gid: md.gid(),
                    },
                );
            }
        }
        Ok(scan)
    }

    /// Identity -> (first path, size) of every regular file.
    pub fn files(&self) -> BTreeMap<Identity, (&RelPath, u64)> {
        let mut out = BTreeMap::new();
        for (p, e) in &self.entries {
            if let Kind::File { ident, size } = e.kind {
                out.entry(ident).or_insert((p, size));
            }
        }
        out
    }
}

pub fn identity(md: &fs::Metadata) -> Identity {
    let btime = md
        .created()
        .ok()
        .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
        .map(|d| d.as_nanos() as i128)
        .unwrap_or(0);
    (md.ino(), btime)
}
