//! A draft's commit: the metadata written as it was encoded, then read back item by item to
//! bring the tip up to date (the checks of the state the record builds on) and to count the
//! height's figures; then the fsync that acknowledges it. Reading back, not holding the
//! record's operations and rows as values, is what keeps a baseline of 10^6 files bounded.

use std::fs::{self, File, OpenOptions};

use super::{Draft, RecordOps};
use crate::error::LogError;
use crate::format::{SEG_HEADER_LEN, SegHeader};
use crate::meta::{Item, MetaStream};
use crate::record::NsOp;
use crate::writer::SegmentIo;
use crate::{HeightInfo, Log, RecordLoc, Segment, Tally, fsync_dir, seg_name};

impl Draft<'_> {
    /// [`Draft::commit_ops`] with operations given as values.
    pub fn commit(self, time_unix_ms: u64, ops: Vec<NsOp>) -> Result<HeightInfo, LogError> {
        let mut record_ops = self.ops();
        for op in &ops {
            record_ops.push(op)?;
        }
        drop(ops);
        self.commit_ops(time_unix_ms, record_ops)
    }

    /// Adds the namespace operations (applied before every extent), writes the metadata,
    /// checks the record against the state it builds on, fsyncs, and acknowledges the height.
    /// On any error nothing is acknowledged and the record is undone.
    pub fn commit_ops(mut self, time_unix_ms: u64, ops: RecordOps) -> Result<HeightInfo, LogError> {
        // Pending payloads whose rows were all dropped are not stored.
        self.pending.retain(|p| !p.rows.is_empty());
        self.flush()?;
        let rows = std::mem::replace(&mut self.ext, MetaStream::new(&self.log.dir, self.height));
        let meta = ops.stream.with_extents_of(rows);
        let prev_hash = self.log.records.last().map_or([0; 32], |r| r.info.hash);
        let w = self.w.take().expect("draft in progress");
        let len = meta.encoded_len();
        let (header, hash) = w.finish_with(self.height, time_unix_ms, prev_hash, len, |sink| {
            meta.write(sink)
        })?;
        let record_len = header.record_len().expect("fits");
        let seg_idx = self.log.segments.len() - 1;
        let mut rec = RecordLoc {
            seg_no: self.seg_no,
            seg_idx,
            offset: self.start,
            header,
            info: HeightInfo {
                height: self.height,
                time_unix_ms,
                stored_bytes: record_len,
                data_bytes: 0,
                files_changed: 0,
                hash,
            },
        };
        let settled = self.settle(&rec).and_then(|tally| {
            let seg = &self.log.segments[seg_idx];
            seg.file
                .sync_data()
                .map_err(|e| LogError::io(&seg.path, e))?;
            Ok(tally)
        });
        let tally = match settled {
            Ok(t) => t,
            Err(e) => {
                self.log.tip = None; // partly applied: rebuilt on the next append
                return Err(e); // Drop undoes the record
            }
        };
        self.log.segments[seg_idx].len = self.start + record_len;
        let max_id = tally.max_id;
        rec.info.data_bytes = tally.data_bytes;
        rec.info.files_changed = tally.files_changed();
        let info = rec.info.clone();
        self.log.index_record(rec, max_id);
        self.new_segment = false;
        self.start = u64::MAX; // committed: nothing to undo
        Ok(info)
    }

    /// Reads the record just written back, item by item: applies it to the tip (which checks
    /// it against the state it builds on), checks the sizes it sets against the blocks left
    /// out as unchanged, and counts its figures. Without checks (tests writing hostile
    /// records), only what reads is counted.
    fn settle(&mut self, rec: &RecordLoc) -> Result<Tally, LogError> {
        let mut tally = Tally::default();
        if !self.check {
            let _ = self.log.for_each_item_of(rec, false, |item| {
                match item {
                    Item::Op(op) => tally.op(&op),
                    Item::Extent(e) => tally.extent(&e),
                }
                Ok(())
            });
            return Ok(tally);
        }
        let mut sizes = self.unchanged.as_ref().map(|u| u.sizes_check());
        let mut tip = self.log.tip.take().expect("begin builds the tip");
        let mut a = tip.applying(self.height, None, None);
        self.log.for_each_item_of(rec, false, |item| match item {
            Item::Op(op) => {
                tally.op(&op);
                if let Some(s) = &mut sizes {
                    s.op(&op);
                }
                a.op(&op)
            }
            Item::Extent(e) => {
                tally.extent(&e);
                a.extent(&e)
            }
        })?;
        a.finish();
        if let Some(Err(reason)) = sizes.map(|s| s.finish()) {
            return Err(LogError::InvalidRecord {
                height: self.height,
                reason,
            });
        }
        self.log.tip = Some(tip);
        Ok(tally)
    }
}

impl Drop for Draft<'_> {
    fn drop(&mut self) {
        if self.start != u64::MAX {
            tracing::warn!(
                "the record of height {} was not committed; undoing it",
                self.height
            );
            self.log.tip = None;
            // The payloads this record indexed are cut off with it: nothing may point at them.
            self.log.dedup.forget_from(self.seg_no, self.start);
            self.log.undo_append(self.new_segment, self.start);
        }
    }
}

impl Log {
    // ---- appending (see append.rs) -------------------------------------------------------

    /// Creates segment `seg_no` (header, fsync, directory fsync) and makes it the last one.
    pub(crate) fn create_segment(&mut self, seg_no: u64) -> Result<(), LogError> {
        let path = self.dir.join(seg_name(seg_no));
        let created = (|| -> Result<File, LogError> {
            let file = OpenOptions::new()
                .read(true)
                .write(true)
                .create_new(true)
                .open(&path)
                .map_err(|e| LogError::io(&path, e))?;
            let io = SegmentIo::new(&file, &path, self.fail_beyond())?;
            io.write_at(&SegHeader { seg: seg_no }.encode(), 0)?;
            file.sync_all().map_err(|e| LogError::io(&path, e))?;
            fsync_dir(&self.dir)?;
            Ok(file)
        })();
        match created {
            Ok(file) => {
                self.segments.push(Segment {
                    no: seg_no,
                    path,
                    file,
                    len: SEG_HEADER_LEN,
                });
                Ok(())
            }
            Err(e) => {
                if path.exists() {
                    let _ = fs::remove_file(&path);
                    let _ = fsync_dir(&self.dir);
                }
                Err(e)
            }
        }
    }

    /// Undoes a record that was not acknowledged: cuts the last segment back to `start`, or
    /// removes it when the record created it. A failure here poisons the log.
    pub(crate) fn undo_append(&mut self, new_segment: bool, start: u64) {
        let seg = self.segments.last().expect("segment");
        let undo = if new_segment {
            fs::remove_file(&seg.path)
                .map_err(|e| LogError::io(&seg.path, e))
                .and_then(|()| fsync_dir(&self.dir))
        } else {
            seg.file
                .set_len(start)
                .and_then(|()| seg.file.sync_all())
                .map_err(|e| LogError::io(&seg.path, e))
        };
        if new_segment {
            self.segments.pop();
        }
        if let Err(u) = undo {
            self.poisoned = Some(u.to_string());
        }
    }

    /// Tests: where writes start failing like a full disk.
    pub(crate) fn fail_beyond(&self) -> Option<u64> {
        #[cfg(test)]
        return self.fail_writes_beyond;
        #[cfg(not(test))]
        None
    }
}
