//! Errors of the log. Every message says what is wrong and what to do about it.

use std::path::PathBuf;

/// An error from the log.
#[derive(Debug, thiserror::Error)]
pub enum LogError {
    #[error("I/O error on {}: {source}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },

    #[error("no log at {}: the directory does not exist (check the path; `btm-agent run` creates the log at its first height)", dir.display())]
    NoLog { dir: PathBuf },

    #[error(
        "log lock {} is held by another process (another btm agent appending to this log?): \
         stop it, or use another log directory",
        path.display()
    )]
    Locked { path: PathBuf },

    #[error(
        "the log at {} is being compacted (readers.lock is held exclusively); retry in a moment",
        dir.display()
    )]
    Compacting { dir: PathBuf },

    #[error("height {got} is not above the last recorded height {last}: heights must increase")]
    HeightNotIncreasing { last: u64, got: u64 },

    #[error(
        "unsafe path \"{path}\" at height {height}: {reason}; \
         a path like this could make replay write outside its target, so it is refused"
    )]
    UnsafePath {
        height: u64,
        path: String,
        reason: String,
    },

    #[error("invalid record for height {height}: {reason}; nothing was written")]
    InvalidRecord { height: u64, reason: String },

    #[error(
        "the log is damaged: {what} ({}, offset {offset}{}); run `btm-agent verify` and restore the log \
         from a copy, or start a new log with a fresh baseline",
        segment.display(),
        height.map(|h| format!(", record of height {h}")).unwrap_or_default()
    )]
    Corrupt {
        segment: PathBuf,
        offset: u64,
        height: Option<u64>,
        what: String,
    },

    #[error(
        "corrupt data for \"{path}\" at height {height} (file id {id}, bytes {offset}..{end}): \
         {what}; the log is damaged: restore it from a copy, or replay a height recorded after \
         this file was last rewritten",
        end = offset + len
    )]
    CorruptExtent {
        height: u64,
        path: String,
        id: u64,
        offset: u64,
        len: u64,
        what: String,
    },

    #[error("unsupported log format version {version} in {}: this btm reads version {supported}; use a newer btm", path.display())]
    UnsupportedVersion {
        path: PathBuf,
        version: u16,
        supported: u16,
    },

    #[error("height {height} is not recorded in this log{}; run `btm-agent list` to see the recorded heights", range_hint(*first, *last))]
    UnknownHeight {
        height: u64,
        first: Option<u64>,
        last: Option<u64>,
    },

    #[error(
        "height {height} was removed by retention; nearest kept: {nearest}; run `btm-agent list` \
         to see the kept heights"
    )]
    Dropped { height: u64, nearest: String },

    #[error("no recorded height at or below {target}: the oldest recorded height is {oldest}")]
    NoHeightAtOrBelow { target: u64, oldest: u64 },

    #[error("the log is empty: no height has been recorded yet")]
    Empty,

    #[error("the log at {} was opened read-only; open it with `open_append` to append", dir.display())]
    ReadOnly { dir: PathBuf },

    #[error(
        "an earlier failed append could not be undone ({reason}); the log in {} may hold a \
         partial record: stop appending and reopen the log (open cuts the partial record off)",
        dir.display()
    )]
    Poisoned { dir: PathBuf, reason: String },

    /// A payload source other than the log's own segments failed (an offsite copy, for one):
    /// its own error, as text.
    #[error("{0}")]
    Source(String),

    #[error(
        "compacting the log at {} needs about {} free and the filesystem has {}: nothing was \
         changed; free space there, or wait until retention drops more",
        dir.display(), human(*need), human(*free)
    )]
    NoSpace { dir: PathBuf, need: u64, free: u64 },

    #[error("compaction of the log at {} abandoned ({why}); the log is as it was", dir.display())]
    Abandoned { dir: PathBuf, why: String },

    #[error("replay into {}: {what}", path.display())]
    Replay { path: PathBuf, what: String },
}

fn human(b: u64) -> String {
    format!("{:.1} MiB", b as f64 / (1u64 << 20) as f64)
}

fn range_hint(first: Option<u64>, last: Option<u64>) -> String {
    match (first, last) {
        (Some(f), Some(l)) => format!(" (recorded heights lie in {f}..={l})"),
        _ => " (the log is empty)".to_string(),
    }
}

impl LogError {
    pub(crate) fn io(path: impl Into<PathBuf>, source: std::io::Error) -> LogError {
        LogError::Io {
            path: path.into(),
            source,
        }
    }

    /// True when the error is an I/O error of the given kind, e.g. `StorageFull` for ENOSPC.
    pub fn is_io_kind(&self, kind: std::io::ErrorKind) -> bool {
        matches!(self, LogError::Io { source, .. } if source.kind() == kind)
    }
}
