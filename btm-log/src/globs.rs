//! Path globs: what a replay must leave alone (`--preserve`, such as a validator's signing
//! state, which must never move backwards) and what an offsite copy must not hold (`--exclude`,
//! such as its keys). Matched against paths relative to the volume (or target) root with
//! `globset`: `*` and `?` stay within one component, `**` crosses them, and a match on a
//! directory covers everything under it.
use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

use std::collections::{HashMap, HashSet};

use globset::{GlobBuilder, GlobSet, GlobSetBuilder};

use crate::{Entry, FileId, Log, LogError, MetaExtent, NsOp};

/// A set of path globs, with the patterns as given (they are reported and recorded).
#[derive(Clone, Debug, Default)]
pub struct PathGlobs {
    patterns: Vec<String>,
    set: GlobSet,
}

impl PathGlobs {
    /// Compiles `patterns` (a leading `/` or `./` is dropped: paths are relative to the root).
    /// The error names the pattern.
    pub fn new<S: AsRef<str>>(patterns: &[S]) -> Result<PathGlobs, String> {
        let mut b = GlobSetBuilder::new();
        let mut kept = Vec::new();
        for p in patterns {
            let p = p.as_ref();
            let rel = p.trim_start_matches("./").trim_start_matches('/');
            if rel.is_empty() {
                return Err(format!("glob {p:?} names the whole volume"));
            }
            let g = GlobBuilder::new(rel)
                .literal_separator(true)
                .build()
                .map_err(|e| format!("glob {p:?}: {e}"))?;
            b.add(g);
            kept.push(p.to_string());
        }
        let set = b.build().map_err(|e| e.to_string())?;
        Ok(PathGlobs {
            patterns: kept,
            set,
        })
    }

    pub fn is_empty(&self) -> bool {
        self.patterns.is_empty()
    }

    /// The patterns as given.
    pub fn patterns(&self) -> &[String] {
        &self.patterns
    }

    /// Whether `path` (relative, `/`-separated) or one of its parent directories matches.
    pub fn matches(&self, path: &[u8]) -> bool {
        if self.patterns.is_empty() {
            return false;
        }
        let m = |p: &[u8]| self.set.is_match(Path::new(OsStr::from_bytes(p)));
        path.iter()
            .enumerate()
            .filter(|(_, b)| **b == b'/')
            .any(|(i, _)| m(&path[..i]))
            || m(path)
    }
}

impl Log {
    /// Payloads (by blake3) that only files at paths matching `globs` hold: what an offsite
    /// copy leaves out for `--exclude`. From metadata alone. A file ever put at a path that
    /// does not match (a hard link, a rename out of the globs) keeps all its payloads, and a
    /// payload another file also holds is not among them: their heights need them.
    pub fn payloads_only_of(&self, globs: &PathGlobs) -> Result<HashSet<[u8; 32]>, LogError> {
        if globs.is_empty() {
            return Ok(HashSet::new());
        }
        let mut included: HashSet<FileId> = HashSet::new();
        let mut holders: HashMap<[u8; 32], Vec<FileId>> = HashMap::new();
        for r in &self.records {
            let meta = self.read_meta(r)?;
            for op in &meta.ops {
                if let NsOp::Put {
                    path,
                    entry: Entry::File { id, .. },
                } = op
                    && !globs.matches(path)
                {
                    included.insert(*id);
                }
            }
            for x in &meta.extents {
                if let MetaExtent::Data { id, payload, .. } = x {
                    holders.entry(payload.hash).or_default().push(*id);
                }
            }
        }
        Ok(holders
            .into_iter()
            .filter(|(_, ids)| ids.iter().all(|id| !included.contains(id)))
            .map(|(h, _)| h)
            .collect())
    }
}

#[cfg(test)]
mod tests {
    use super::PathGlobs;

    #[test]
    fn globs_match_paths_and_what_is_under_a_matched_directory() {
        let g = PathGlobs::new(&[
            "/data/priv_validator_state.json",
            "config/*_key.json",
            "keys",
        ])
        .unwrap();
        assert!(g.matches(b"data/priv_validator_state.json"));
        assert!(g.matches(b"config/node_key.json"));
        assert!(
            !g.matches(b"config/sub/node_key.json"),
            "* stays in one component"
        );
        assert!(g.matches(b"keys/a/b"), "under a matched directory");
        assert!(!g.matches(b"data/blockstore.db/000001.log"));
        assert!(!g.matches(b"data"));
        assert!(PathGlobs::new(&["/"]).is_err());
        assert!(PathGlobs::new(&["a[b"]).unwrap_err().contains("a[b"));
    }

    #[test]
    fn only_payloads_no_other_path_needs_are_left_out() {
        use crate::{CutRecord, Entry, ExtentBytes, ExtentData, Log, NsOp};
        let dir = tempfile::tempdir().unwrap();
        let mut log = Log::open_append(dir.path()).unwrap();
        let put = |path: &str, id| NsOp::Put {
            path: path.into(),
            entry: Entry::File {
                id,
                mode: 0o600,
                uid: 0,
                gid: 0,
            },
        };
        let data = |id, b: &[u8]| ExtentData {
            id,
            offset: 0,
            bytes: ExtentBytes::Data(b.to_vec()),
        };
        let size = |id, n| NsOp::SetSize { id, size: n };
        log.append(CutRecord {
            height: 1,
            time_unix_ms: 1,
            ops: vec![
                NsOp::Put {
                    path: b"keys".to_vec(),
                    entry: Entry::Dir {
                        mode: 0o700,
                        uid: 0,
                        gid: 0,
                    },
                },
                put("keys/k", 1),
                size(1, 6),
                put("data", 2),
                size(2, 6),
                put("keys/moved", 3),
                size(3, 6),
                put("keys/copy", 4),
                size(4, 6),
            ],
            extents: vec![
                data(1, b"secret"),
                data(2, b"public"),
                data(3, b"moving"),
                data(4, b"public"),
            ],
        })
        .unwrap();
        // keys/moved leaves the globs: height 2 needs its bytes.
        log.append(CutRecord {
            height: 2,
            time_unix_ms: 2,
            ops: vec![
                NsOp::Remove {
                    path: b"keys/moved".to_vec(),
                },
                put("moved", 3),
            ],
            extents: vec![],
        })
        .unwrap();
        let g = PathGlobs::new(&["keys"]).unwrap();
        let out = log.payloads_only_of(&g).unwrap();
        let want: std::collections::HashSet<[u8; 32]> =
            [*blake3::hash(b"secret").as_bytes()].into();
        assert_eq!(out, want);
        assert!(
            log.payloads_only_of(&PathGlobs::default())
                .unwrap()
                .is_empty()
        );
    }
}
