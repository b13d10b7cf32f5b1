//! Totals from metadata alone: what each record takes, dropped ones included (a rollback's
//! dry run and `stats` read them; neither reads a payload).
use std::collections::{HashMap, HashSet};

use super::{Entry, FileId, HeightInfo, Log, LogError, MetaExtent, NsOp, display_path};

/// What a log holds and what it costs (`btm-agent stats`).
#[derive(Clone, Debug, Default, PartialEq, serde::Serialize)]
pub struct LogStats {
    /// Heights kept (not removed by retention).
    pub heights: usize,
    pub first_height: Option<u64>,
    pub last_height: Option<u64>,
    /// Records in the chain, those of heights removed by retention (not compacted yet) included.
    pub records: usize,
    pub dropped_records: usize,
    pub segments: usize,
    /// Bytes of the segment files (what the log takes on disk).
    pub log_bytes: u64,
    /// Of those, the records of removed heights (compaction returns at most this).
    pub dropped_bytes: u64,
    /// Files of the tree at the last kept height, their apparent size and their data (holes
    /// left out).
    pub files_at_last: usize,
    pub logical_bytes_at_last: u64,
    pub data_bytes_at_last: u64,
    /// Data bytes every record captured, before deduplication and compression.
    pub captured_bytes: u64,
    /// Distinct payloads stored, their raw bytes (after deduplication) and their stored bytes
    /// (after compression, block tables included).
    pub payloads: u64,
    pub unique_bytes: u64,
    pub stored_bytes: u64,
    /// captured / unique, unique / stored, captured / stored (1 when there is nothing).
    pub dedup_ratio: f64,
    pub compression_ratio: f64,
    pub total_ratio: f64,
    /// Files whose payloads take the most stored bytes, largest first.
    pub top_files: Vec<FileStored>,
}

/// The stored bytes of one file's payloads, over the whole log.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct FileStored {
    /// Its last path.
    pub path: String,
    /// Whether the last kept height still has it.
    pub live: bool,
    pub payloads: u64,
    pub unique_bytes: u64,
    pub stored_bytes: u64,
}

fn ratio(a: u64, b: u64) -> f64 {
    if b == 0 { 1.0 } else { a as f64 / b as f64 }
}

impl Log {
    /// Every record of the chain in order, with whether retention removed its height.
    /// [`Log::heights`] leaves the removed ones out; their records still take space until
    /// compaction, and a rollback below them deletes them too.
    pub fn records_info(&self) -> Vec<(HeightInfo, bool)> {
        self.records
            .iter()
            .map(|r| (r.info.clone(), self.dropped.contains(&r.header.height)))
            .collect()
    }

    /// Totals of the log and its `top` files by stored bytes, from metadata alone.
    pub fn stats(&self, top: usize) -> Result<LogStats, LogError> {
        let kept = self.heights();
        let mut s = LogStats {
            heights: kept.len(),
            first_height: kept.first().map(|h| h.height),
            last_height: kept.last().map(|h| h.height),
            records: self.records.len(),
            dropped_records: self.records.len() - kept.len(),
            segments: self.segments.len(),
            log_bytes: self.total_bytes(),
            dropped_bytes: self.dropped_bytes(),
            captured_bytes: self.records.iter().map(|r| r.info.data_bytes).sum(),
            ..Default::default()
        };
        let mut live = HashSet::new();
        if let Some(h) = s.last_height {
            let st = self.state_at(h)?;
            s.files_at_last = st.files.len();
            s.logical_bytes_at_last = st.total_size();
            s.data_bytes_at_last = st.data_bytes();
            live.extend(st.files.keys().copied());
        }
        let mut path_of: HashMap<FileId, Vec<u8>> = HashMap::new();
        let mut per_file: HashMap<FileId, FileStored> = HashMap::new();
        let mut seen = HashSet::new();
        for r in &self.records {
            let meta = self.read_meta(r)?;
            for op in &meta.ops {
                if let NsOp::Put {
                    path,
                    entry: Entry::File { id, .. },
                } = op
                {
                    path_of.insert(*id, path.clone());
                }
            }
            let (lo, hi) = r.payload_range();
            for x in &meta.extents {
                let MetaExtent::Data { id, payload, .. } = x else {
                    continue;
                };
                // Stored by this record (not borrowed from an earlier one), counted once.
                if payload.seg != r.seg_no
                    || !(lo..hi).contains(&payload.offset)
                    || !seen.insert((payload.seg, payload.offset))
                {
                    continue;
                }
                s.payloads += 1;
                s.unique_bytes += payload.raw_len;
                s.stored_bytes += payload.stored_len;
                let f = per_file.entry(*id).or_default();
                f.payloads += 1;
                f.unique_bytes += payload.raw_len;
                f.stored_bytes += payload.stored_len;
            }
        }
        s.dedup_ratio = ratio(s.captured_bytes, s.unique_bytes);
        s.compression_ratio = ratio(s.unique_bytes, s.stored_bytes);
        s.total_ratio = ratio(s.captured_bytes, s.stored_bytes);
        let mut files: Vec<(FileId, FileStored)> = per_file.into_iter().collect();
        files.sort_by(|a, b| b.1.stored_bytes.cmp(&a.1.stored_bytes).then(a.0.cmp(&b.0)));
        s.top_files = files
            .into_iter()
            .take(top)
            .map(|(id, mut f)| {
                f.path = path_of
                    .get(&id)
                    .map_or_else(|| format!("(file {id})"), |p| display_path(p));
                f.live = live.contains(&id);
                f
            })
            .collect();
        Ok(s)
    }
}
