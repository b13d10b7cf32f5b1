//! A tree's content as a comparable map: the oracle for "replay to H equals the tree at cut H".
use std::{
    collections::BTreeMap,
    fs,
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
            format!("file {mode:o} {} {}", md.len(), hash_content(&p, md.len())?)
        } else {
            continue;
        };
        out.insert(rel, desc);
    }
    Ok(())
}

/// Hash of a file's content that does not depend on how zeros are stored: non-zero 4 KiB
/// blocks with their offsets, found through SEEK_DATA so holes cost nothing.
fn hash_content(p: &Path, size: u64) -> std::io::Result<String> {
    use crate::cut::capture::{data_ranges, read_full};
    let f = fs::File::open(p)?;
    let mut h = blake3::Hasher::new();
    let mut buf = vec![0u8; 1 << 20];
    for (start, len) in data_ranges(&f, size) {
        let mut pos = start & !4095;
        let end = start + len;
        while pos < end {
            let n = ((end - pos) as usize).min(buf.len());
            let got = read_full(&f, &mut buf[..n], pos)?;
            for (i, block) in buf[..got].chunks(4096).enumerate() {
                if block.iter().any(|&b| b != 0) {
                    h.update(&(pos + i as u64 * 4096).to_le_bytes());
                    h.update(block);
                }
            }
            if got < n {
                break;
            }
            pos += n as u64;
        }
    }
    Ok(h.finalize().to_hex().to_string())
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
