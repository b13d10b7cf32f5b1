//! A tree's content as a comparable map: the oracle for "replay to H equals the tree at cut H".
use std::{
    collections::BTreeMap,
    fs,
    io::Read,
    os::unix::{ffi::OsStrExt, fs::MetadataExt},
    path::Path,
};

/// Path -> description (kind, mode, size, blake3 of content or symlink target).
pub type TreeHash = BTreeMap<Vec<u8>, String>;

pub fn hash_tree(root: &Path) -> std::io::Result<TreeHash> {
    let mut out = BTreeMap::new();
    walk(root, root, &mut out)?;
    Ok(out)
}

fn walk(root: &Path, dir: &Path, out: &mut TreeHash) -> std::io::Result<()> {
    for e in fs::read_dir(dir)? {
        let e = e?;
        let p = e.path();
        let md = fs::symlink_metadata(&p)?;
        let rel = p
            .strip_prefix(root)
            .unwrap()
            .as_os_str()
            .as_bytes()
            .to_vec();
        let mode = md.mode() & 0o7777;
        let desc = if md.is_dir() {
            walk(root, &p, out)?;
            format!("dir {mode:o}")
        } else if md.file_type().is_symlink() {
            format!("link {}", fs::read_link(&p)?.display())
        } else if md.is_file() {
            let mut h = blake3::Hasher::new();
            let mut f = fs::File::open(&p)?;
            let mut buf = vec![0u8; 1 << 20];
            loop {
                let n = f.read(&mut buf)?;
                if n == 0 {
                    break;
                }
                h.update(&buf[..n]);
            }
            format!("file {mode:o} {} {}", md.len(), h.finalize().to_hex())
        } else {
            continue;
        };
        out.insert(rel, desc);
    }
    Ok(())
}

/// Human-readable differences between two tree hashes (empty when equal).
pub fn diff(a: &TreeHash, b: &TreeHash) -> Vec<String> {
    let mut d = Vec::new();
    for (k, v) in a {
        match b.get(k) {
            None => d.push(format!(
                "only in first: {} ({v})",
                String::from_utf8_lossy(k)
            )),
            Some(w) if w != v => d.push(format!("{}: {v} != {w}", String::from_utf8_lossy(k))),
            _ => {}
        }
    }
    for (k, w) in b {
        if !a.contains_key(k) {
            d.push(format!(
                "only in second: {} ({w})",
                String::from_utf8_lossy(k)
            ));
        }
    }
    d
}
