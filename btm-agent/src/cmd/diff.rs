//! `btm-agent diff --from A --to B`: what changed between two heights, from the log's metadata
//! alone (no payload is read): paths added, removed and changed, and bytes.
//!
//! A file's bytes "differ" where the two heights point at different stored data (another
//! payload, another place in it, a hole against data, or beyond one side's end). Data rewritten
//! with the same content usually deduplicates to the same payload, so this is close to the bytes
//! that really differ, and never below them.
use std::collections::BTreeSet;
use std::path::PathBuf;

use anyhow::Result;
use serde::Serialize;

use super::report;
use super::size::human;
use crate::log::{FileState, Log, Node, TreeState, display_path};

#[derive(clap::Args, Debug)]
pub struct DiffArgs {
    /// The log (or `log` in the configuration file).
    #[arg(long, env = "BTM_LOG_DIR")]
    pub log: PathBuf,
    /// The earlier height (recorded exactly).
    #[arg(long)]
    pub from: u64,
    /// The later height (recorded exactly).
    #[arg(long)]
    pub to: u64,
    /// Print one JSON object (`"v": 1`); errors too.
    #[arg(long)]
    pub json: bool,
}

#[derive(Serialize, Debug, PartialEq, Eq)]
struct Change {
    path: String,
    /// `file`, `dir` or `symlink` (at `to` for a change of kind).
    kind: &'static str,
    /// Added: its size; removed: its size then; changed: the bytes that differ.
    bytes: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    size_from: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    size_to: Option<u64>,
    /// Mode, owner or group changed (or a symlink's target, or the kind).
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    meta: bool,
}

#[derive(Serialize, Debug, Default)]
struct Summary {
    added: usize,
    removed: usize,
    changed: usize,
    bytes_added: u64,
    bytes_removed: u64,
    bytes_changed: u64,
}

pub fn run(a: DiffArgs) -> Result<()> {
    let log = Log::open_read(&a.log)?;
    let from = log.resolve(Some(a.from), true)?;
    let to = log.resolve(Some(a.to), true)?;
    let (sa, sb) = (log.state_at(from)?, log.state_at(to)?);
    let (added, removed, changed) = diff(&sa, &sb);
    let summary = Summary {
        added: added.len(),
        removed: removed.len(),
        changed: changed.len(),
        bytes_added: added.iter().map(|c| c.bytes).sum(),
        bytes_removed: removed.iter().map(|c| c.bytes).sum(),
        bytes_changed: changed.iter().map(|c| c.bytes).sum(),
    };
    if a.json {
        return report::print_json(serde_json::json!({
            "from": from, "to": to, "added": added, "removed": removed, "changed": changed,
            "summary": summary,
        }));
    }
    for c in &added {
        println!("A  {}  ({})", c.path, human(c.bytes));
    }
    for c in &removed {
        println!("D  {}  ({})", c.path, human(c.bytes));
    }
    for c in &changed {
        let size = match (c.size_from, c.size_to) {
            (Some(x), Some(y)) if x != y => format!("; size {} -> {}", human(x), human(y)),
            _ => String::new(),
        };
        let meta = if c.meta { "; metadata" } else { "" };
        println!("M  {}  ({} differ{size}{meta})", c.path, human(c.bytes));
    }
    println!(
        "{from} -> {to}: {} added ({}), {} removed ({}), {} changed ({} differ); from the log's \
         metadata, no data read",
        summary.added,
        human(summary.bytes_added),
        summary.removed,
        human(summary.bytes_removed),
        summary.changed,
        human(summary.bytes_changed)
    );
    Ok(())
}

type Changes = (Vec<Change>, Vec<Change>, Vec<Change>);

/// Paths added, removed and changed from `a` to `b`, each in path order.
fn diff(a: &TreeState, b: &TreeState) -> Changes {
    let (mut added, mut removed, mut changed) = (Vec::new(), Vec::new(), Vec::new());
    let paths: BTreeSet<&[u8]> = a.nodes.keys().chain(b.nodes.keys()).collect();
    for p in paths {
        let path = display_path(p);
        match (a.nodes.get(p), b.nodes.get(p)) {
            (None, Some(n)) => added.push(Change {
                path,
                kind: kind(n),
                bytes: size(b, n).unwrap_or(0),
                size_from: None,
                size_to: None,
                meta: false,
            }),
            (Some(n), None) => removed.push(Change {
                path,
                kind: kind(n),
                bytes: size(a, n).unwrap_or(0),
                size_from: None,
                size_to: None,
                meta: false,
            }),
            (Some(x), Some(y)) => {
                let fa = file(a, x);
                let fb = file(b, y);
                let bytes = if fa.is_some() || fb.is_some() {
                    differing_bytes(fa, fb)
                } else {
                    0
                };
                let meta = match (x, y) {
                    (Node::File(_), Node::File(_)) => {
                        let (fa, fb) = (fa.expect("a live file"), fb.expect("a live file"));
                        (fa.mode, fa.uid, fa.gid) != (fb.mode, fb.uid, fb.gid)
                    }
                    _ => x != y,
                };
                if bytes > 0 || meta {
                    changed.push(Change {
                        path,
                        kind: kind(y),
                        bytes,
                        size_from: size(a, x),
                        size_to: size(b, y),
                        meta,
                    });
                }
            }
            (None, None) => unreachable!("a path from one of the two states"),
        }
    }
    (added, removed, changed)
}

fn kind(n: &Node) -> &'static str {
    match n {
        Node::Dir { .. } => "dir",
        Node::File(_) => "file",
        Node::Symlink { .. } => "symlink",
    }
}

fn file<'a>(s: &'a TreeState, n: &Node) -> Option<&'a FileState> {
    match n {
        Node::File(id) => s.file(*id),
        _ => None,
    }
}

fn size(s: &TreeState, n: &Node) -> Option<u64> {
    file(s, n).map(|f| f.size)
}

/// What a byte of a file is, as far as metadata tells: past the end, a hole, or a byte of a
/// payload (its hash and the offset in its raw bytes).
#[derive(PartialEq, Eq)]
enum Byte {
    Beyond,
    Hole,
    Data([u8; 32], u64),
}

fn byte_at(f: Option<&FileState>, x: u64) -> Byte {
    let Some(f) = f.filter(|f| x < f.size) else {
        return Byte::Beyond;
    };
    match f.pieces.range(..=x).next_back() {
        Some((&start, p)) if x < start + p.len => Byte::Data(p.payload.hash, p.skip + x - start),
        _ => Byte::Hole,
    }
}

/// Bytes of `[0, max size)` where the two versions point at different data.
fn differing_bytes(a: Option<&FileState>, b: Option<&FileState>) -> u64 {
    let mut cuts: BTreeSet<u64> = BTreeSet::from([0]);
    for f in [a, b].into_iter().flatten() {
        cuts.insert(f.size);
        for (&start, p) in &f.pieces {
            cuts.insert(start);
            cuts.insert(start + p.len);
        }
    }
    let cuts: Vec<u64> = cuts.into_iter().collect();
    cuts.windows(2)
        .filter(|w| byte_at(a, w[0]) != byte_at(b, w[0]))
        .map(|w| w[1] - w[0])
        .sum()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::log::{Codec, PayloadRef, Piece};

    fn file(size: u64, pieces: &[(u64, u64, u8, u64)]) -> FileState {
        FileState {
            mode: 0o644,
            uid: 0,
            gid: 0,
            size,
            nlink: 1,
            pieces: pieces
                .iter()
                .map(|&(start, len, h, skip)| {
                    let payload = PayloadRef {
                        seg: 1,
                        offset: 0,
                        stored_len: 0,
                        raw_len: 1 << 20,
                        codec: Codec::Raw,
                        hash: [h; 32],
                    };
                    (start, Piece { len, skip, payload })
                })
                .collect(),
        }
    }

    #[test]
    fn differing_bytes_follow_the_pieces() {
        let a = file(8192, &[(0, 8192, 1, 0)]);
        assert_eq!(differing_bytes(Some(&a), Some(&a)), 0);
        // The second 4 KiB now come from another payload.
        let b = file(8192, &[(0, 4096, 1, 0), (4096, 4096, 2, 0)]);
        assert_eq!(differing_bytes(Some(&a), Some(&b)), 4096);
        // Same payload, split in two pieces at the same offsets: nothing differs.
        let c = file(8192, &[(0, 4096, 1, 0), (4096, 4096, 1, 4096)]);
        assert_eq!(differing_bytes(Some(&a), Some(&c)), 0);
        // Same payload shifted by 1 byte: everything differs.
        let d = file(8192, &[(0, 8192, 1, 1)]);
        assert_eq!(differing_bytes(Some(&a), Some(&d)), 8192);
        // Grown by a hole of 4 KiB, and a file against none.
        let e = file(12288, &[(0, 8192, 1, 0)]);
        assert_eq!(differing_bytes(Some(&a), Some(&e)), 4096);
        assert_eq!(differing_bytes(None, Some(&e)), 12288);
        // Data punched into a hole.
        let f = file(8192, &[(0, 4096, 1, 0)]);
        assert_eq!(differing_bytes(Some(&a), Some(&f)), 4096);
    }
}
