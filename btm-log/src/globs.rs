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

use crate::{Entry, Log, LogError, MetaExtent, NsOp};

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
    /// Payloads (by blake3) that only files put at paths matching `globs` hold: what an
    /// offsite copy leaves out for `--exclude`. From metadata alone; a payload another file
    /// also holds is not among them (that file needs it).
    pub fn payloads_only_of(&self, globs: &PathGlobs) -> Result<HashSet<[u8; 32]>, LogError> {
        let mut out = HashSet::new();
        if globs.is_empty() {
            return Ok(out);
        }
        let mut excluded_id = HashMap::new();
        let mut needed = HashSet::new();
        for r in &self.records {
            let meta = self.read_meta(r)?;
            for op in &meta.ops {
                if let NsOp::Put {
                    path,
                    entry: Entry::File { id, .. },
                } = op
                {
                    excluded_id.insert(*id, globs.matches(path));
                }
            }
            for x in &meta.extents {
                if let MetaExtent::Data { id, payload, .. } = x {
                    if excluded_id.get(id).copied().unwrap_or(false) {
                        out.insert(payload.hash);
                    } else {
                        needed.insert(payload.hash);
                    }
                }
            }
        }
        out.retain(|h| !needed.contains(h));
        Ok(out)
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
}
