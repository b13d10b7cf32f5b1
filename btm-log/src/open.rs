//! Opening a log: segments, records, torn tails, the checks every record passes.

use std::fs::{self, File, OpenOptions};
use std::os::unix::fs::FileExt;
use std::path::Path;

use super::check;
use super::format::{
    self, FORMAT_VERSION, HeaderError, PayloadRef, REC_HEADER_LEN, REC_MAGIC, RecHeader,
    RecordHash, SEG_HEADER_LEN, SegHeader, TRAILER_LEN, Trailer,
};
use super::meta::{Item, ReadError, StreamErr, for_each_item};
use super::record::FileId;
use super::{
    HeightInfo, Log, LogError, MetaExtent, RecordLoc, Segment, Tally, TornTail, compact, fsync_dir,
    parse_seg_name, seg_name,
};

pub(super) enum RecErr {
    /// Not a complete, intact record. `resume` is where a later valid record could start.
    Anomaly {
        why: String,
        resume: u64,
    },
    Fatal(LogError),
}

impl Log {
    // ---- opening ----------------------------------------------------------------------------

    pub(super) fn scan(&mut self) -> Result<(), LogError> {
        self.dropped = compact::read_dropped(&self.dir)?;
        let mut found = Vec::new();
        for ent in fs::read_dir(&self.dir).map_err(|e| LogError::io(&self.dir, e))? {
            let ent = ent.map_err(|e| LogError::io(&self.dir, e))?;
            if let Some(no) = ent.file_name().to_str().and_then(parse_seg_name) {
                found.push((no, ent.path()));
            }
        }
        // A committed compaction whose files are not all in place yet (readers only: the
        // appender finished it before scanning).
        compact::overlay(&self.dir, &mut found)?;
        found.sort();
        for w in found.windows(2) {
            if w[1].0 != w[0].0 + 1 {
                return Err(LogError::Corrupt {
                    segment: w[1].1.clone(),
                    offset: 0,
                    height: None,
                    what: format!(
                        "segment {} is missing (or a stray segment file lies here)",
                        seg_name(w[0].0 + 1)
                    ),
                });
            }
        }
        let n = found.len();
        for (i, (no, path)) in found.into_iter().enumerate() {
            let last = i + 1 == n;
            // Append mode opens every segment writable: if the last one turns out to be a torn
            // segment and is removed, the one before becomes the one to append to.
            let file = OpenOptions::new()
                .read(true)
                .write(self.writable)
                .open(&path)
                .map_err(|e| LogError::io(&path, e))?;
            let flen = file.metadata().map_err(|e| LogError::io(&path, e))?.len();
            let mut hb = vec![0u8; SEG_HEADER_LEN.min(flen) as usize];
            file.read_exact_at(&mut hb, 0)
                .map_err(|e| LogError::io(&path, e))?;
            match SegHeader::decode(&hb) {
                Ok(h) if h.seg == no => {}
                Ok(h) => {
                    return Err(LogError::Corrupt {
                        segment: path,
                        offset: 0,
                        height: None,
                        what: format!("segment header says it is number {}", h.seg),
                    });
                }
                Err(HeaderError::Version(v)) => {
                    return Err(LogError::UnsupportedVersion {
                        path,
                        version: v,
                        supported: FORMAT_VERSION,
                    });
                }
                Err(HeaderError::Garbage(why)) if last && flen <= SEG_HEADER_LEN => {
                    // A crash while creating the segment: it holds nothing acknowledged.
                    self.note_torn(&path, 0, flen, why.to_string());
                    if self.writable {
                        drop(file);
                        fs::remove_file(&path).map_err(|e| LogError::io(&path, e))?;
                        fsync_dir(&self.dir)?;
                    }
                    break;
                }
                Err(HeaderError::Garbage(why)) => {
                    return Err(LogError::Corrupt {
                        segment: path,
                        offset: 0,
                        height: None,
                        what: why.to_string(),
                    });
                }
            }
            let seg_idx = self.segments.len();
            self.segments.push(Segment {
                no,
                path: path.clone(),
                file,
                len: flen,
            });
            let mut p = SEG_HEADER_LEN;
            while p < flen {
                match self.read_record(seg_idx, p, flen, last) {
                    Ok((rec, max_id)) => {
                        let len = rec.len();
                        self.index_record(rec, max_id);
                        p += len;
                    }
                    Err(RecErr::Fatal(e)) => return Err(e),
                    Err(RecErr::Anomaly { why, resume }) => {
                        let seg = &self.segments[seg_idx];
                        if last && !valid_header_after(&seg.file, resume, flen) {
                            self.note_torn(&path, p, flen - p, why);
                            if self.writable {
                                let seg = &self.segments[seg_idx];
                                seg.file
                                    .set_len(p)
                                    .and_then(|()| seg.file.sync_all())
                                    .map_err(|e| LogError::io(&path, e))?;
                            }
                            break;
                        }
                        return Err(LogError::Corrupt {
                            segment: path,
                            offset: p,
                            height: None,
                            what: if last {
                                format!("{why}, and intact records follow it")
                            } else {
                                format!("{why} in a segment that is not the last one")
                            },
                        });
                    }
                }
            }
            self.segments[seg_idx].len = p;
        }
        Ok(())
    }

    fn note_torn(&mut self, path: &Path, offset: u64, bytes: u64, reason: String) {
        let cut = self.writable;
        if cut {
            tracing::warn!(
                "{}: torn tail of {bytes} bytes at offset {offset} ({reason}), left by an append that \
                 did not complete; cutting it off",
                path.display()
            );
        } else {
            // Read mode: usually an append in progress in another process, or a crash that the
            // next appender will clean up. `torn_tail()` reports it.
            tracing::debug!(
                "{}: ignoring {bytes} bytes at offset {offset} after the last complete record ({reason})",
                path.display()
            );
        }
        self.torn_tail = Some(TornTail {
            segment: path.to_path_buf(),
            offset,
            bytes,
            reason,
            cut,
        });
    }

    fn read_record(
        &mut self,
        seg_idx: usize,
        p: u64,
        flen: u64,
        last_seg: bool,
    ) -> Result<(RecordLoc, Option<FileId>), RecErr> {
        let seg = &self.segments[seg_idx];
        let io = |e: std::io::Error| RecErr::Fatal(LogError::io(&seg.path, e));
        let anomaly = |why: String, resume: u64| RecErr::Anomaly { why, resume };
        if flen - p < REC_HEADER_LEN {
            return Err(anomaly(
                format!("incomplete record header ({} bytes)", flen - p),
                flen,
            ));
        }
        let mut hb = [0u8; REC_HEADER_LEN as usize];
        seg.file.read_exact_at(&mut hb, p).map_err(io)?;
        let header = match RecHeader::decode(&hb) {
            Ok(h) => h,
            Err(HeaderError::Garbage(why)) => return Err(anomaly(why.to_string(), p + 1)),
            Err(HeaderError::Version(v)) => {
                return Err(RecErr::Fatal(LogError::UnsupportedVersion {
                    path: seg.path.clone(),
                    version: v,
                    supported: FORMAT_VERSION,
                }));
            }
        };
        let len = header.record_len().expect("checked");
        let end = p.saturating_add(len);
        if end > flen {
            return Err(anomaly(
                format!(
                    "incomplete record of height {}: {} of {len} bytes",
                    header.height,
                    flen - p
                ),
                flen,
            ));
        }
        let damaged = |what: String| LogError::Corrupt {
            segment: seg.path.clone(),
            offset: p,
            height: Some(header.height),
            what,
        };
        let corrupt = |what: String| RecErr::Fatal(damaged(what));
        // The writer checks the whole last record before building on it: a crash (power loss)
        // may have left the trailer durable but not every payload block.
        let whole = self.writable && last_seg && end == flen;
        let meta_at = p + header.meta_start();
        let (meta_hash, record_hash) = hash_meta(
            &seg.file,
            &header,
            meta_at,
            whole.then(|| RecordHash::new(&header)),
        )
        .map_err(io)?;
        if meta_hash != header.meta_hash {
            return Err(anomaly(
                format!(
                    "metadata checksum mismatch in the record of height {}",
                    header.height
                ),
                end,
            ));
        }
        let mut tb = [0u8; TRAILER_LEN as usize];
        seg.file
            .read_exact_at(&mut tb, end - TRAILER_LEN)
            .map_err(io)?;
        let trailer = match Trailer::decode(&tb) {
            Ok(t) if t.record_len == len => t,
            Ok(_) => return Err(anomaly("trailer length mismatch".into(), end)),
            Err(_) => {
                return Err(anomaly(
                    format!("bad trailer of the record of height {}", header.height),
                    end,
                ));
            }
        };
        if let Some(mut h) = record_hash {
            let start = p + header.payload_start();
            hash_payload_range(&seg.file, start, start + header.payload_len, &mut h).map_err(io)?;
            if h.finish() != trailer.hash {
                return Err(anomaly(
                    format!(
                        "checksum mismatch in the record of height {}",
                        header.height
                    ),
                    end,
                ));
            }
        }
        let prev = self.records.last().map(|r| (r.header.height, &r.info.hash));
        check::check_chain(prev, &header).map_err(corrupt)?;
        let mut rec = RecordLoc {
            seg_no: seg.no,
            seg_idx,
            offset: p,
            header,
            info: HeightInfo {
                height: header.height,
                time_unix_ms: header.time_unix_ms,
                stored_bytes: len,
                data_bytes: 0,
                files_changed: 0,
                hash: trailer.hash,
            },
        };
        // Intact: decoded item by item (a baseline's block is not held whole), its figures
        // counted and its payload references checked on the way.
        let mut tally = Tally::default();
        let section = rec.payload_range();
        let mut own: Vec<(u64, u64, u64)> = Vec::new();
        let (file, records, dedup) = (&seg.file, &self.records, &mut self.dedup);
        let writable = self.writable;
        for_each_item(file, meta_at, header.meta_len, |item| {
            let e = match item {
                Item::Op(op) => {
                    tally.op(&op);
                    return Ok(());
                }
                Item::Extent(e) => e,
            };
            tally.extent(&e);
            let MetaExtent::Data {
                id,
                offset,
                payload: pl,
            } = e
            else {
                return Ok(());
            };
            if check::is_own(rec.seg_no, section, id, offset, &pl).map_err(StreamErr::Item)? {
                own.push((pl.offset, pl.stored_len, same_payload_key(&pl)));
                if writable {
                    dedup.add(&pl);
                }
                return Ok(());
            }
            check_borrowed(records, &pl, id, offset).map_err(StreamErr::Item)
        })
        .map_err(|e| match e {
            StreamErr::Item(what) => corrupt(what),
            StreamErr::Read(ReadError::Io(e)) => io(e),
            StreamErr::Read(ReadError::Meta(e)) => {
                RecErr::Fatal(check::meta_error(header.height, e, damaged))
            }
        })?;
        own.sort_unstable();
        own.dedup();
        let own = own.into_iter().map(|(o, l, _)| (o, l));
        check::check_own(section, header.version, own).map_err(corrupt)?;
        rec.info.data_bytes = tally.data_bytes;
        let max_id = tally.max_id;
        rec.info.files_changed = tally.files_changed();
        Ok((rec, max_id))
    }

    /// Adds `rec` to the chain; `max_id`: the largest file id it names.
    pub(super) fn index_record(&mut self, rec: RecordLoc, max_id: Option<FileId>) {
        if let Some(m) = max_id {
            self.max_file_id = Some(self.max_file_id.map_or(m, |o| o.max(m)));
        }
        self.records.push(rec);
    }
}

/// A payload a record borrows must lie inside an earlier record's payload section.
fn check_borrowed(
    records: &[RecordLoc],
    p: &PayloadRef,
    id: FileId,
    offset: u64,
) -> Result<(), String> {
    let end = p.offset + p.stored_len;
    let i = records.partition_point(|r| (r.seg_no, r.offset) <= (p.seg, p.offset));
    let inside = i > 0 && {
        let r = &records[i - 1];
        let (rs, re) = r.payload_range();
        r.seg_no == p.seg && p.offset >= rs && end <= re
    };
    if !inside {
        return Err(format!(
            "data of file id {id} at offset {offset} points at segment {} bytes {}..{end}, \
             outside every payload section",
            p.seg, p.offset
        ));
    }
    Ok(())
}

/// What tells two references to the same place apart besides their place and length: two
/// extents may share a payload only if they name it alike.
fn same_payload_key(p: &PayloadRef) -> u64 {
    let mut h = blake3::Hasher::new();
    h.update(&p.raw_len.to_le_bytes());
    h.update(&[p.codec as u8]);
    h.update(&p.hash);
    u64::from_le_bytes(h.finalize().as_bytes()[..8].try_into().expect("8 bytes"))
}

/// Hands the bytes `from..to` of a segment to `each`, 1 MiB at a time.
fn read_range(file: &File, from: u64, to: u64, mut each: impl FnMut(&[u8])) -> std::io::Result<()> {
    let mut buf = vec![0u8; (1 << 20).min(to.saturating_sub(from) as usize)];
    let mut at = from;
    while at < to {
        let n = buf.len().min((to - at) as usize);
        file.read_exact_at(&mut buf[..n], at)?;
        each(&buf[..n]);
        at += n as u64;
    }
    Ok(())
}

/// The blake3 of the metadata block at `at`, also fed to `record` (the record hash of the last
/// record, checked whole).
pub(super) fn hash_meta(
    file: &File,
    header: &RecHeader,
    at: u64,
    mut record: Option<RecordHash>,
) -> std::io::Result<([u8; 32], Option<RecordHash>)> {
    let mut hasher = blake3::Hasher::new();
    read_range(file, at, at + header.meta_len, |b| {
        hasher.update(b);
        if let Some(r) = &mut record {
            r.meta(b);
        }
    })?;
    Ok((*hasher.finalize().as_bytes(), record))
}

/// Feeds the bytes `from..to` of a segment to a record hash as payload-section bytes (the open
/// path's last-record check, and verify's unused payload bytes).
pub(super) fn hash_payload_range(
    file: &File,
    from: u64,
    to: u64,
    hasher: &mut format::RecordHash,
) -> std::io::Result<()> {
    read_range(file, from, to, |b| hasher.payload(b))
}

/// Looks for a decodable record header at or after `from` (before `end`).
fn valid_header_after(file: &File, from: u64, end: u64) -> bool {
    const CHUNK: usize = 1 << 20;
    let mut at = from;
    let mut buf = vec![0u8; CHUNK];
    while at + REC_HEADER_LEN <= end {
        let n = CHUNK.min((end - at) as usize);
        if file.read_exact_at(&mut buf[..n], at).is_err() {
            return false;
        }
        let mut i = 0;
        while let Some(k) = buf[i..n].windows(8).position(|w| w == REC_MAGIC) {
            let q = at + (i + k) as u64;
            if q + REC_HEADER_LEN <= end {
                let mut hb = [0u8; REC_HEADER_LEN as usize];
                if file.read_exact_at(&mut hb, q).is_ok() && RecHeader::decode(&hb).is_ok() {
                    return true;
                }
            }
            i += k + 1;
        }
        if n < CHUNK {
            break;
        }
        at += (n - 7) as u64;
    }
    false
}
