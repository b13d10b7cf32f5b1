//! Append-only incremental log: one record per block height, hash-chained, replayable to any
//! recorded height.
//!
//! This crate is the log alone: format, streaming writer ([`Log::begin`], [`Draft`]), fold,
//! replay, verification, retention and compaction. It needs no eBPF toolchain and no async
//! runtime, so tools that only read or restore logs can depend on it; the agent (`btm-agent`)
//! captures heights into it and re-exports it as `btm_agent::log`. Modules: `format` (the
//! bytes), `record` (what a height holds), `writer` (the one record writer), `append` (drafts),
//! `unchanged` (blocks the log already holds), `state` (the fold), `replay`, `verify`,
//! `compact`, `truncate`, `error`, [`dirfd`] (directories by descriptor), `testing` (feature
//! `testing`: record builders for other crates' tests).
//!
//! The on-disk format is specified byte by byte in `docs/FORMAT.md` (version
//! [`FORMAT_VERSION`]). In short: a log directory holds `seg-<n>.btm` segment files (a new one
//! after [`LogOptions::segment_size`] bytes), a `lock` file (exclusive `flock` held by the one
//! appender) and a `readers.lock` file (shared `flock` held by readers; whatever rewrites or
//! deletes segments must take it exclusively). A segment is a 32-byte header followed by
//! records. A record is a 128-byte header (magic, version, height, time, lengths, the previous
//! record's blake3, the metadata's blake3), a metadata block (namespace ops + extent table), a
//! payload section (chunks of at most 1 MiB, each a table of 4 KiB block hashes followed by the
//! zstd or raw data, deduplicated across the whole log by blake3) and a 48-byte trailer holding
//! the blake3 of the whole record.
//!
//! * Opening reads headers and metadata only and seeks over payloads; it keeps an index of where
//!   every record lives. A torn tail (the end of a crashed append) is cut off by
//!   [`Log::open_append`] and ignored by [`Log::open_read`].
//! * [`Log::state_at`] folds metadata only; [`Log::replay`] then reads just the payloads still
//!   visible at that height and rewrites only what differs in the target directory.
//! * [`Log::verify`] reads every byte and checks every hash.
//! * Retention: [`Log::drop_heights`] (or [`record_dropped`]) tombstones heights in
//!   `LOGDIR/dropped` at once; [`Log::compact`] later folds their records into the next kept
//!   height, rewriting only from the first segment that holds one (`compact.rs`).
//!
//! Paths in a log are data: every path is checked when appending, opening and replaying, and
//! replay reaches every entry through `openat(O_NOFOLLOW)` chains from the target directory, so a
//! hostile log cannot make it write outside the target.

mod append;
mod check;
mod compact;
mod compare;
mod counts;
use counts::Tally;
mod dedup;
pub mod dirfd;
mod error;
mod fold;
mod format;
mod globs;
mod meta;
mod open;
mod pathmap;
mod payload;
mod pieces;
mod pins;
mod record;
mod replay;
mod state;
mod summary;
mod truncate;
mod unchanged;
mod verify;
mod writer;
mod zstd_ctx;

#[cfg(any(test, feature = "testing"))]
pub mod testing;
#[cfg(test)]
mod tests;

use std::collections::{BTreeSet, HashSet};
use std::fs::{self, File, OpenOptions, TryLockError};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

pub use append::{Draft, RecordOps};
pub use compact::{CompactReport, DROPPED_FILE, Prepared, record_dropped};
pub use compare::{CompareOptions, TreeDiff, compare_tree};
pub use error::LogError;
pub use format::{Codec, FORMAT_VERSION, PayloadRef};
pub use globs::PathGlobs;
pub use pathmap::PathMap;
pub use payload::{check_payload, decode_payload};
pub use pieces::PieceMap;
pub use pins::{PINS_FILE, PINS_TMP, read_pins, read_pins_file, write_pins};
pub use record::{
    CutRecord, Entry, ExtentBytes, ExtentData, FileId, NsOp, RelPath, check_path,
    check_symlink_target, display_path,
};
pub use replay::{
    PayloadSource, ReplayOptions, ReplayScope, ReplayStats, SinceLast, merge_ranges, refuse_inside,
    replay_state,
};
pub use state::{FileState, Node, Piece, TreeState};
pub use summary::{FileStored, LogStats};
pub use verify::VerifyReport;

use format::RecHeader;
// The record-level API the offsite layer (`btm-remote`) and the fuzz targets build on: a record's
// metadata, its own stored payloads, the checks a payload must pass and its block table.
pub use format::{Meta, MetaExtent, block_table, table_len};
pub use record::cmp_components;

/// Tunables of a log. The defaults suit production; tests shrink the segment size.
#[derive(Clone, Debug)]
pub struct LogOptions {
    /// Start a new segment once the current one holds at least this many bytes.
    pub segment_size: u64,
    /// zstd level for payloads.
    pub zstd_level: i32,
    /// Data extents are cut into payloads at multiples of this many bytes (file offsets).
    pub chunk_size: u64,
    /// Threads compressing payloads during an append.
    pub compress_threads: usize,
    /// Leave out whole 4 KiB blocks that already hold the same bytes at the last height
    /// (`unchanged.rs`): cuts that capture more than changed store only what did.
    pub drop_unchanged: bool,
    /// Raw bytes an append gathers before it compresses and writes them: the bound on the
    /// memory a height takes, whatever its size.
    pub batch_bytes: usize,
    /// Memory the index of stored payloads by hash may take (`dedup.rs`): bytes met again
    /// within what it holds are stored once.
    pub dedup_index_bytes: usize,
}

impl Default for LogOptions {
    fn default() -> Self {
        LogOptions {
            segment_size: 1 << 30,
            zstd_level: 3,
            chunk_size: 1 << 20,
            compress_threads: std::thread::available_parallelism().map_or(1, |n| n.get().min(4)),
            drop_unchanged: true,
            batch_bytes: env_mib("BTM_CAPTURE_BUFFER_MIB", 64),
            dedup_index_bytes: env_mib("BTM_DEDUP_INDEX_MIB", dedup::DEFAULT_BUDGET >> 20),
        }
    }
}

/// A size in MiB from the environment variable `name` (1 to 4096; `default` when unset or
/// out of range, with a warning), in bytes: `BTM_CAPTURE_BUFFER_MIB` (the append batch, 64 by
/// default) and `BTM_DEDUP_INDEX_MIB` (32).
fn env_mib(name: &str, default: usize) -> usize {
    let mib = match std::env::var(name) {
        Err(_) => default,
        Ok(v) => match v.trim().parse::<usize>() {
            Ok(n) if (1..=4096).contains(&n) => n,
            _ => {
                tracing::warn!(
                    "{name}={v:?} is not a number of MiB from 1 to 4096; using {default}"
                );
                default
            }
        },
    };
    mib << 20
}

/// One record of the chain with its metadata, as [`Log::record_view`] gives it.
pub struct RecordView {
    pub height: u64,
    pub time_unix_ms: u64,
    /// The record hash (the chain link).
    pub hash: [u8; 32],
    /// Removed by retention (still part of the fold until compaction).
    pub dropped: bool,
    /// The metadata block exactly as stored.
    pub meta_bytes: Vec<u8>,
    /// The payloads this record stores itself, once each, in the order of their first row.
    pub own: Vec<PayloadRef>,
}

/// One recorded height, as `list` shows it.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct HeightInfo {
    pub height: u64,
    pub time_unix_ms: u64,
    /// Bytes the record takes in the log (header, metadata, new payloads, trailer).
    pub stored_bytes: u64,
    /// Raw bytes of data extents in the record (before dedup and compression).
    pub data_bytes: u64,
    /// Paths put or removed plus files whose size or data changed.
    pub files_changed: u64,
    /// blake3 of the record (the hash chain link), hex in JSON.
    #[serde(serialize_with = "serialize_hex")]
    pub hash: [u8; 32],
}

fn serialize_hex<S: serde::Serializer>(h: &[u8; 32], s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&hex(h))
}

pub fn hex(h: &[u8]) -> String {
    h.iter().map(|b| format!("{b:02x}")).collect()
}

/// A torn tail found when opening: the remains of an append that did not complete.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TornTail {
    pub segment: PathBuf,
    pub offset: u64,
    pub bytes: u64,
    pub reason: String,
    /// True when it was cut off (append mode), false when only ignored (read mode).
    pub cut: bool,
}

struct Segment {
    no: u64,
    path: PathBuf,
    file: File,
    /// End of the last complete record (bytes beyond are a torn tail being ignored).
    len: u64,
}

#[derive(Clone, Debug)]
struct RecordLoc {
    seg_no: u64,
    seg_idx: usize,
    offset: u64,
    header: RecHeader,
    info: HeightInfo,
}

impl RecordLoc {
    fn len(&self) -> u64 {
        self.header.record_len().expect("checked at decode")
    }
    fn payload_range(&self) -> (u64, u64) {
        let s = self.offset + self.header.payload_start();
        (s, s + self.header.payload_len)
    }
}

/// An append-only incremental log. See the module documentation.
pub struct Log {
    dir: PathBuf,
    writable: bool,
    opts: LogOptions,
    _locks: Vec<File>,
    segments: Vec<Segment>,
    records: Vec<RecordLoc>,
    max_file_id: Option<FileId>,
    torn_tail: Option<TornTail>,
    /// Append mode: blake3 of raw bytes -> where that payload is stored.
    dedup: dedup::DedupIndex,
    /// Append mode: the state at the last height (built on first append).
    tip: Option<TreeState>,
    /// Heights removed by retention (`LOGDIR/dropped`): hidden from list, resolve and replay;
    /// their records stay until [`Log::compact`] folds them into the next kept height.
    dropped: BTreeSet<u64>,
    poisoned: Option<String>,
    /// Tests: fail writes once the segment would grow beyond this offset (simulated ENOSPC).
    #[cfg(test)]
    fail_writes_beyond: Option<u64>,
    /// Tests: write records without checking them (to build hostile logs).
    #[cfg(test)]
    skip_checks: bool,
}

fn seg_name(no: u64) -> String {
    format!("seg-{no:08}.btm")
}

fn parse_seg_name(name: &str) -> Option<u64> {
    let digits = name.strip_prefix("seg-")?.strip_suffix(".btm")?;
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse().ok()
}

fn fsync_dir(dir: &Path) -> Result<(), LogError> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| LogError::io(dir, e))
}

fn lock_error(path: &Path, e: TryLockError) -> LogError {
    match e {
        TryLockError::WouldBlock => LogError::Locked {
            path: path.to_path_buf(),
        },
        TryLockError::Error(e) => LogError::io(path, e),
    }
}

/// Opens (creating it `0600`) a lock file that no other user may open: a user who could
/// would be able to hold a lock on it and keep the agent from starting or compacting. A file
/// left by an older version with wider permissions is narrowed.
pub fn open_lock_file(path: &Path) -> std::io::Result<File> {
    use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .mode(0o600)
        .open(path)?;
    if file.metadata()?.permissions().mode() & 0o077 != 0 {
        file.set_permissions(std::fs::Permissions::from_mode(0o600))?;
    }
    Ok(file)
}

impl Log {
    /// Open (creating if needed) for appending. Finds a torn tail left by a crash (incomplete or
    /// checksum-failing last record) and cuts it off, logging a warning. Takes an exclusive flock
    /// on LOGDIR/lock so two agents cannot append to one log.
    pub fn open_append(dir: &Path) -> Result<Log, LogError> {
        Self::open_append_with(dir, LogOptions::default())
    }

    /// [`Log::open_append`] with explicit options.
    pub fn open_append_with(dir: &Path, opts: LogOptions) -> Result<Log, LogError> {
        fs::create_dir_all(dir).map_err(|e| LogError::io(dir, e))?;
        let lock_path = dir.join("lock");
        let lock = open_lock_file(&lock_path).map_err(|e| LogError::io(&lock_path, e))?;
        lock.try_lock().map_err(|e| lock_error(&lock_path, e))?;
        // A compaction that crashed after its commit point is finished; one before it, undone.
        compact::recover(dir)?;
        let mut log = Log::empty(dir, true, opts, vec![lock]);
        log.scan()?;
        Ok(log)
    }

    /// Open read-only (shared flock on LOGDIR/readers.lock), also tolerating a torn tail
    /// (ignored, not cut). Readers may run while an agent appends.
    pub fn open_read(dir: &Path) -> Result<Log, LogError> {
        Self::open_read_with(dir, LogOptions::default())
    }

    /// [`Log::open_read`] with explicit options.
    pub fn open_read_with(dir: &Path, opts: LogOptions) -> Result<Log, LogError> {
        if !dir.is_dir() {
            return Err(LogError::NoLog {
                dir: dir.to_path_buf(),
            });
        }
        let lock_path = dir.join("readers.lock");
        let lock = open_lock_file(&lock_path).or_else(|_| File::open(&lock_path));
        let mut locks = Vec::new();
        match lock {
            Ok(lock) => {
                lock.try_lock_shared().map_err(|e| match e {
                    TryLockError::WouldBlock => LogError::Compacting {
                        dir: dir.to_path_buf(),
                    },
                    e => lock_error(&lock_path, e),
                })?;
                locks.push(lock);
            }
            // A log on read-only media without the file: nobody can rewrite it either.
            Err(e) => tracing::debug!("no reader lock {}: {e}", lock_path.display()),
        }
        let mut log = Log::empty(dir, false, opts, locks);
        log.scan()?;
        Ok(log)
    }

    fn empty(dir: &Path, writable: bool, opts: LogOptions, locks: Vec<File>) -> Log {
        let dedup = dedup::DedupIndex::with_budget(opts.dedup_index_bytes);
        Log {
            dir: dir.to_path_buf(),
            writable,
            opts,
            _locks: locks,
            segments: Vec::new(),
            records: Vec::new(),
            max_file_id: None,
            torn_tail: None,
            dedup,
            tip: None,
            dropped: BTreeSet::new(),
            poisoned: None,
            #[cfg(test)]
            fail_writes_beyond: None,
            #[cfg(test)]
            skip_checks: false,
        }
    }

    /// The log directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Recorded heights, ascending (without those removed by retention).
    pub fn heights(&self) -> Vec<HeightInfo> {
        self.records
            .iter()
            .filter(|r| !self.dropped.contains(&r.header.height))
            .map(|r| r.info.clone())
            .collect()
    }

    /// Heights removed by retention (see [`Log::drop_heights`]), ascending. Includes heights
    /// already compacted away.
    pub fn dropped_heights(&self) -> Vec<u64> {
        self.dropped.iter().copied().collect()
    }

    /// Removes `heights` by retention: durably recorded in `LOGDIR/dropped` at once (so they
    /// vanish from `list` and `replay`), physically folded into the next kept height by
    /// [`Log::compact`]. Unknown heights are an error and nothing is recorded.
    pub fn drop_heights(&mut self, heights: &[u64]) -> Result<(), LogError> {
        for &h in heights {
            self.index_of(h)?;
        }
        record_dropped(&self.dir, heights)?;
        self.dropped.extend(heights.iter().copied());
        Ok(())
    }

    /// The newest recorded height.
    pub fn last_height(&self) -> Option<u64> {
        self.records.last().map(|r| r.header.height)
    }

    /// The largest file id any record ever used (the agent continues after it).
    pub fn max_file_id(&self) -> Option<FileId> {
        self.max_file_id
    }

    /// The torn tail found when opening, if any.
    pub fn torn_tail(&self) -> Option<&TornTail> {
        self.torn_tail.as_ref()
    }

    /// Paths of the segment files, in order.
    pub fn segment_paths(&self) -> Vec<PathBuf> {
        self.segments.iter().map(|s| s.path.clone()).collect()
    }

    // ---- reading ----------------------------------------------------------------------------

    fn index_of(&self, height: u64) -> Result<usize, LogError> {
        self.records
            .binary_search_by_key(&height, |r| r.header.height)
            .map_err(|_| LogError::UnknownHeight {
                height,
                first: self.records.first().map(|r| r.header.height),
                last: self.last_height(),
            })
    }

    fn read_meta(&self, r: &RecordLoc) -> Result<Meta, LogError> {
        let mb = self.read_meta_block(r)?;
        Meta::decode(&mb).map_err(|e| check::meta_error(r.header.height, e, self.damaged(r)))
    }

    /// The metadata block of a record as stored, checked against its hash (the segment may
    /// have changed since it was opened).
    fn read_meta_block(&self, r: &RecordLoc) -> Result<Vec<u8>, LogError> {
        let seg = &self.segments[r.seg_idx];
        let mut mb = vec![0u8; r.header.meta_len as usize];
        seg.file
            .read_exact_at(&mut mb, r.offset + r.header.meta_start())
            .map_err(|e| LogError::io(&seg.path, e))?;
        if *blake3::hash(&mb).as_bytes() != r.header.meta_hash {
            let what = "metadata checksum mismatch (the segment changed after it was opened)";
            return Err(self.damaged(r)(what.into()));
        }
        Ok(mb)
    }

    /// What names record `r` as damaged, with `what` is wrong with it.
    fn damaged(&self, r: &RecordLoc) -> impl Fn(String) -> LogError {
        let (segment, offset) = (self.segments[r.seg_idx].path.clone(), r.offset);
        let height = Some(r.header.height);
        move |what| LogError::Corrupt {
            segment: segment.clone(),
            offset,
            height,
            what,
        }
    }

    /// Number of records in the chain, dropped ones included (see [`Log::record_view`]).
    pub fn record_count(&self) -> usize {
        self.records.len()
    }

    /// Record `i` of the chain (0-based, dropped ones included) as an offsite copy needs it:
    /// its metadata block and the payloads it stores itself (the others it borrows from
    /// earlier records).
    pub fn record_view(&self, i: usize) -> Result<RecordView, LogError> {
        let r = &self.records[i];
        let meta_bytes = self.read_meta_block(r)?;
        // The payloads it stores itself, from its extents as the block decodes: the block is
        // held (it is uploaded as it is), its decoded form is not (as large again).
        let (s, e) = r.payload_range();
        let mut seen = HashSet::new();
        let mut own = Vec::new();
        meta::for_each_in(&meta_bytes, |item| {
            if let meta::Item::Extent(MetaExtent::Data { payload, .. }) = item
                && payload.seg == r.seg_no
                && (s..e).contains(&payload.offset)
                && seen.insert(payload.hash)
            {
                own.push(payload);
            }
            Ok::<(), format::MetaError>(())
        })
        .map_err(|e| check::meta_error(r.header.height, e, self.damaged(r)))?;
        Ok(RecordView {
            height: r.header.height,
            time_unix_ms: r.header.time_unix_ms,
            hash: r.info.hash,
            dropped: self.dropped.contains(&r.header.height),
            meta_bytes,
            own,
        })
    }

    /// Appends the stored bytes of a payload (block table, then the codec's body) to `out`,
    /// checked by decoding them first so that damage is never copied elsewhere.
    pub fn read_stored_into(&self, p: &PayloadRef, out: &mut Vec<u8>) -> Result<(), LogError> {
        let seg = self.payload_segment(p)?;
        let at = out.len();
        out.resize(at + p.stored_len as usize, 0);
        seg.file
            .read_exact_at(&mut out[at..], p.offset)
            .map_err(|e| LogError::io(&seg.path, e))?;
        if let Err(what) = check_payload(p, &out[at..]) {
            return Err(LogError::Corrupt {
                segment: seg.path.clone(),
                offset: p.offset,
                height: self.payload_height(p),
                what: format!("payload {}: {what}", hex(&p.hash)),
            });
        }
        Ok(())
    }

    /// The state after the first `n` records.
    fn fold_to(&self, n: usize) -> Result<TreeState, LogError> {
        let mut st = TreeState::default();
        for r in &self.records[..n] {
            self.apply_record(&mut st, r, None, None)?;
        }
        Ok(st)
    }

    /// The state at the last height, folded once and then kept up to date by every append:
    /// the one copy of the namespace an appender needs (the cutter diffs against it).
    pub fn tip(&mut self) -> Result<&TreeState, LogError> {
        if self.tip.is_none() {
            self.tip = Some(self.fold_to(self.records.len())?);
        }
        Ok(self.tip.as_ref().expect("just built"))
    }

    /// Folded namespace + per-file extent map at `height` (must be a recorded height), without
    /// reading payloads.
    pub fn state_at(&self, height: u64) -> Result<TreeState, LogError> {
        self.check_not_dropped(height)?;
        let i = self.index_of(height)?;
        if i + 1 == self.records.len()
            && let Some(tip) = &self.tip
        {
            return Ok(tip.clone());
        }
        self.fold_to(i + 1)
    }

    /// The segment a payload names, or the damage that it names none.
    fn payload_segment(&self, p: &PayloadRef) -> Result<&Segment, LogError> {
        self.segment(p.seg).ok_or_else(|| LogError::Corrupt {
            segment: self.dir.clone(),
            offset: p.offset,
            height: None,
            what: format!("segment {} is not part of the log", p.seg),
        })
    }

    fn segment(&self, no: u64) -> Option<&Segment> {
        let i = self.segments.binary_search_by_key(&no, |s| s.no).ok()?;
        Some(&self.segments[i])
    }

    /// Resolve `target` against the kept heights (BTM rollback semantics).
    pub fn resolve(&self, target: Option<u64>, exact: bool) -> Result<u64, LogError> {
        if exact && let Some(t) = target {
            self.check_not_dropped(t)?;
        }
        let hs: Vec<u64> = self.heights().iter().map(|r| r.height).collect();
        resolve_height(&hs, target, exact)
    }

    /// The "removed by retention" error for a dropped height (the newest record stays
    /// reachable: the agent builds on it).
    fn check_not_dropped(&self, height: u64) -> Result<(), LogError> {
        if !self.dropped.contains(&height) || self.last_height() == Some(height) {
            return Ok(());
        }
        let kept: Vec<u64> = self.heights().iter().map(|r| r.height).collect();
        let i = kept.partition_point(|&k| k < height);
        let near: Vec<String> = [i.checked_sub(1).map(|j| kept[j]), kept.get(i).copied()]
            .into_iter()
            .flatten()
            .map(|h| h.to_string())
            .collect();
        Err(LogError::Dropped {
            height,
            nearest: if near.is_empty() {
                "none".into()
            } else {
                near.join(" and ")
            },
        })
    }

    /// Materialise `height` into `into` (created if missing; may be non-empty), rewriting only
    /// what differs. See [`ReplayOptions`] and [`ReplayStats`].
    pub fn replay(
        &self,
        height: u64,
        into: &Path,
        opts: &ReplayOptions,
    ) -> Result<ReplayStats, LogError> {
        replay::replay(self, height, into, opts)
    }

    /// Read every record, check the hash chain, every record checksum and every extent's blake3.
    /// Errors name the height and the file path (at that height) of a bad extent.
    pub fn verify(&self) -> Result<VerifyReport, LogError> {
        verify::verify(self)
    }
}

/// Why [`pick_height`] found no height.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NoHeight {
    /// There are no heights at all.
    Empty,
    /// `exact` was asked and the target is not one of them.
    NotRecorded { first: u64, last: u64 },
    /// Every height is above the target.
    AllAbove { oldest: u64 },
}

/// BTM's rollback rules, the one place they are written (the log and the native snapshot
/// modes both use them): `None` -> the latest height; `exact` -> that height or nothing;
/// otherwise the newest height <= target. `heights` ascending.
pub fn pick_height(heights: &[u64], target: Option<u64>, exact: bool) -> Result<u64, NoHeight> {
    let (Some(&first), Some(&last)) = (heights.first(), heights.last()) else {
        return Err(NoHeight::Empty);
    };
    let Some(t) = target else {
        return Ok(last);
    };
    if heights.binary_search(&t).is_ok() {
        return Ok(t);
    }
    if exact {
        return Err(NoHeight::NotRecorded { first, last });
    }
    match heights.partition_point(|&h| h <= t) {
        0 => Err(NoHeight::AllAbove { oldest: first }),
        i => Ok(heights[i - 1]),
    }
}

/// [`pick_height`] with the log's errors.
pub fn resolve_height(heights: &[u64], target: Option<u64>, exact: bool) -> Result<u64, LogError> {
    pick_height(heights, target, exact).map_err(|e| match e {
        NoHeight::Empty => LogError::Empty,
        NoHeight::NotRecorded { first, last } => LogError::UnknownHeight {
            height: target.unwrap_or_default(),
            first: Some(first),
            last: Some(last),
        },
        NoHeight::AllAbove { oldest } => LogError::NoHeightAtOrBelow {
            target: target.unwrap_or_default(),
            oldest,
        },
    })
}
