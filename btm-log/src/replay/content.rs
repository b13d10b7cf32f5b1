//! Replay of a file's bytes: compare what is there with the state, write only what differs.

use super::*;
use writer::{Bad, Job, Loaded};

impl Replayer<'_> {
    /// Makes the file's bytes equal to the state's; returns whether anything changed.
    pub(super) fn content(
        &mut self,
        file: &Arc<File>,
        f: &FileState,
        old_size: u64,
        fresh: bool,
        path: &[u8],
        id: FileId,
    ) -> Result<bool, LogError> {
        let mut changed = false;
        if old_size != f.size {
            file.set_len(f.size)
                .map_err(|e| self.err(path, format!("truncate: {e}")))?;
            changed = true;
        }
        // Below `limit` the file may hold old bytes; above it, it is a fresh hole (except for
        // the rest of the block holding the old end, hence `dirty_end`).
        let limit = if fresh { 0 } else { old_size.min(f.size) };
        let bs = file
            .metadata()
            .map(|m| m.blksize())
            .unwrap_or(4096)
            .clamp(512, 1 << 20);
        let dirty_end = limit.div_ceil(bs).saturating_mul(bs);
        let (segs, holes) = self.plan(f, limit, dirty_end, bs);
        // First which pieces differ from the old bytes (all of them above `limit`), so that
        // their payloads can be fetched together; then the writes.
        let mut differs = Vec::with_capacity(segs.len());
        let (mut wanted, mut seen) = (Vec::new(), std::collections::HashSet::new());
        for (start, piece) in &segs {
            let d = start + piece.len > limit || !self.same(file, *start, piece, path)?;
            if d && seen.insert(piece.payload.hash) {
                wanted.push(piece.payload);
            }
            differs.push(d);
        }
        self.log.prefetch(&wanted);
        // Shared by the writes of this file (made once, not per piece).
        let full: Arc<Path> = self.into.join(OsStr::from_bytes(path)).into();
        let shown: Arc<str> = display_path(path).into();
        for ((start, piece), differs) in segs.iter().zip(differs) {
            let (start, end) = (*start, start + piece.len);
            let range = piece.skip as usize..(piece.skip + piece.len) as usize;
            if differs && end <= limit {
                // Old bytes are there: write only the blocks that differ.
                let old = self.read_old(file, start, piece.len, path)?;
                let raw = self.checked(&piece.payload, path, id, start)?;
                changed |= self.write_diff(file, start, &raw.raw[range], &old, bs, path)?;
                self.buf = old;
            } else if differs {
                let raw = self.payload(&piece.payload, path, id, start)?;
                let job = Job {
                    file: file.clone(),
                    p: piece.payload,
                    data: raw,
                    range,
                    at: start,
                    path: full.clone(),
                    bad: self.bad_at(&piece.payload, shown.clone(), id, start),
                };
                if self.writer.submit(job)? {
                    self.stats.writes_in_parallel += 1;
                }
                self.stats.bytes_written += piece.len;
                changed = true;
            }
            self.progress.inc(piece.len);
        }
        for (start, end) in holes {
            changed |= self.hole(file, start, end, bs, path)?;
        }
        Ok(changed)
    }

    /// The pieces to compare (and write where they differ) and the gaps to make holes of:
    /// every piece and every gap below `dirty_end` (above it the file is a fresh hole), or,
    /// when the replay is scoped ([`ReplayScope`]), only their parts within the file's
    /// ranges that may differ, plus everything above `limit` (the old size or the new).
    fn plan(&self, f: &FileState, limit: u64, dirty_end: u64, bs: u64) -> Plan {
        let mut gaps = Vec::new();
        let mut cursor = 0;
        for (&start, piece) in &f.pieces {
            if cursor < dirty_end && cursor < start {
                gaps.push((cursor, start));
            }
            cursor = start + piece.len;
        }
        if cursor < dirty_end && cursor < f.size {
            gaps.push((cursor, f.size));
        }
        let Some(only) = &self.only else {
            return (
                f.pieces.iter().map(|(&s, p)| (s, p.clone())).collect(),
                gaps,
            );
        };
        // Whole filesystem blocks: a mark or an extent may start or end inside one.
        let mut want: Vec<(u64, u64)> = only
            .iter()
            .map(|&(a, b)| (a / bs * bs, b.div_ceil(bs).saturating_mul(bs)))
            .chain([(limit / bs * bs, u64::MAX)])
            .collect();
        want = merge(want);
        let mut segs = Vec::new();
        for (&start, piece) in &f.pieces {
            for (a, b) in overlaps(&want, start, start + piece.len) {
                let sub = Piece {
                    len: b - a,
                    skip: piece.skip + (a - start),
                    payload: piece.payload,
                };
                segs.push((a, sub));
            }
        }
        let holes = gaps
            .into_iter()
            .flat_map(|(a, b)| overlaps(&want, a, b))
            .collect();
        (segs, holes)
    }

    /// The file's `len` bytes at `start`, in the reused buffer (hand it back to `self.buf`).
    fn read_old(
        &mut self,
        file: &File,
        start: u64,
        len: u64,
        path: &[u8],
    ) -> Result<Vec<u8>, LogError> {
        let mut old = std::mem::take(&mut self.buf);
        old.resize(len as usize, 0);
        file.read_exact_at(&mut old, start)
            .map_err(|e| self.err(path, format!("read: {e}")))?;
        Ok(old)
    }

    /// Whether the file's bytes under `piece` (at `start`, below the old size) already equal
    /// it: its hash when the piece is its whole payload, else its block table.
    fn same(
        &mut self,
        file: &File,
        start: u64,
        piece: &Piece,
        path: &[u8],
    ) -> Result<bool, LogError> {
        let old = self.read_old(file, start, piece.len, path)?;
        self.stats.bytes_compared += piece.len;
        let same = if piece.is_whole() {
            *blake3::hash(&old).as_bytes() == piece.payload.hash
        } else {
            self.table_says_same(piece, &old)?
        };
        self.buf = old;
        Ok(same)
    }

    /// True when the payload's block table shows that `old` (the file's bytes under `piece`)
    /// already equals the piece: every block the piece covers is covered whole and its hash
    /// matches. False when a block differs or the piece cuts through a block (then the payload
    /// must be read to compare).
    fn table_says_same(&mut self, piece: &Piece, old: &[u8]) -> Result<bool, LogError> {
        let (s, e) = (piece.skip, piece.skip + piece.len);
        let raw_len = piece.payload.raw_len;
        let blocks = s / TABLE_BLOCK..e.div_ceil(TABLE_BLOCK);
        let whole = |k: u64| k * TABLE_BLOCK >= s && ((k + 1) * TABLE_BLOCK).min(raw_len) <= e;
        if !whole(blocks.start) || !whole(blocks.end - 1) {
            return Ok(false);
        }
        let table = self.log.load_table(&piece.payload)?;
        self.stats.log_bytes_read += table.len() as u64;
        let n = TABLE_ENTRY as usize;
        for k in blocks {
            let bs = (k * TABLE_BLOCK - s) as usize;
            let be = (((k + 1) * TABLE_BLOCK).min(raw_len) - s) as usize;
            let want = &table[k as usize * n..(k as usize + 1) * n];
            if blake3::hash(&old[bs..be]).as_bytes()[..n] != *want {
                return Ok(false);
            }
        }
        Ok(true)
    }

    /// Writes `new` at `start` where it differs from `old` (the bytes there now), in runs of
    /// whole filesystem blocks.
    fn write_diff(
        &mut self,
        file: &File,
        start: u64,
        new: &[u8],
        old: &[u8],
        bs: u64,
        path: &[u8],
    ) -> Result<bool, LogError> {
        let mut changed = false;
        let mut run: Option<usize> = None; // start index of a run of differing blocks
        let mut i = 0usize;
        while i <= new.len() {
            let j = if i == new.len() {
                i
            } else {
                let abs = start + i as u64;
                (i + (bs - abs % bs) as usize).min(new.len())
            };
            let differs = i < new.len() && new[i..j] != old[i..j];
            match (differs, run) {
                (true, None) => run = Some(i),
                (false, Some(r)) => {
                    file.write_all_at(&new[r..i], start + r as u64)
                        .map_err(|e| self.err(path, format!("write: {e}")))?;
                    self.stats.bytes_written += (i - r) as u64;
                    changed = true;
                    run = None;
                }
                _ => {}
            }
            if i == new.len() {
                break;
            }
            i = j;
        }
        Ok(changed)
    }

    /// Makes `[start, end)` read as zeros without writing zeros over whole blocks: the block-
    /// aligned interior is punched out where it holds data (SEEK_DATA), the partial blocks at the
    /// edges are zeroed where they hold non-zero bytes. Writes zeros only where the filesystem
    /// cannot punch holes.
    fn hole(
        &mut self,
        file: &File,
        start: u64,
        end: u64,
        bs: u64,
        path: &[u8],
    ) -> Result<bool, LogError> {
        if start >= end {
            return Ok(false);
        }
        let a = start.div_ceil(bs).saturating_mul(bs).min(end);
        let b = (end / bs * bs).max(a);
        let mut changed = self.zero_fill(file, start, a, path)?;
        changed |= self.zero_fill(file, b, end, path)?;
        if a >= b {
            return Ok(changed);
        }
        let data = match lseek(file, a as i64, Whence::SeekData) {
            Ok(off) if (off as u64) < b => off as u64,
            Ok(_) | Err(Errno::ENXIO) => return Ok(changed),
            Err(_) => a, // no SEEK_DATA: assume data
        };
        let flags = FallocateFlags::FALLOC_FL_PUNCH_HOLE | FallocateFlags::FALLOC_FL_KEEP_SIZE;
        match fallocate(file, flags, data as i64, (b - data) as i64) {
            Ok(()) => {
                self.stats.holes_punched += 1;
                Ok(true)
            }
            Err(Errno::EOPNOTSUPP) => Ok(self.zero_fill(file, data, b, path)? | changed),
            Err(e) => Err(self.err(path, format!("punch hole: {e}"))),
        }
    }

    /// Overwrites the non-zero bytes of `[start, end)` with zeros.
    fn zero_fill(
        &mut self,
        file: &File,
        start: u64,
        end: u64,
        path: &[u8],
    ) -> Result<bool, LogError> {
        let mut changed = false;
        let mut at = start;
        let mut buf = vec![0u8; (1 << 20).min(end.saturating_sub(start) as usize)];
        while at < end {
            let n = buf.len().min((end - at) as usize);
            file.read_exact_at(&mut buf[..n], at)
                .map_err(|e| self.err(path, format!("read: {e}")))?;
            self.stats.bytes_compared += n as u64;
            if buf[..n].iter().any(|&b| b != 0) {
                buf[..n].fill(0);
                file.write_all_at(&buf[..n], at)
                    .map_err(|e| self.err(path, format!("write: {e}")))?;
                self.stats.bytes_written += n as u64;
                changed = true;
            }
            at += n as u64;
        }
        Ok(changed)
    }

    /// The payload's raw bytes, maybe not yet checked against its blake3 (the writer thread
    /// checks them before writing; [`Replayer::checked`] here).
    fn payload(
        &mut self,
        p: &PayloadRef,
        path: &[u8],
        id: FileId,
        offset: u64,
    ) -> Result<Arc<Loaded>, LogError> {
        if let Some(v) = self.cache.get(p) {
            return Ok(v.clone());
        }
        let (raw, checked) = match self.log.load_payload_unchecked(p) {
            Ok(loaded) => loaded,
            Err(Ok(what)) => return Err(self.bad(p, path, id, offset).error(what)),
            Err(Err(e)) => return Err(e),
        };
        Ok(self.keep(p, Loaded::new(raw, checked)))
    }

    /// [`Replayer::payload`], checked against its blake3 on this thread.
    fn checked(
        &mut self,
        p: &PayloadRef,
        path: &[u8],
        id: FileId,
        offset: u64,
    ) -> Result<Arc<Loaded>, LogError> {
        let raw = self.payload(p, path, id, offset)?;
        match raw.check(p) {
            Ok(()) => Ok(raw),
            Err(what) => Err(self.bad(p, path, id, offset).error(what)),
        }
    }

    /// What a damaged payload at `offset` of file `id` is reported as.
    fn bad(&self, p: &PayloadRef, path: &[u8], id: FileId, offset: u64) -> Bad {
        self.bad_at(p, display_path(path).into(), id, offset)
    }

    fn bad_at(&self, p: &PayloadRef, path: Arc<str>, id: FileId, offset: u64) -> Bad {
        Bad {
            height: self.log.payload_height(p).unwrap_or(self.height),
            path,
            id,
            offset,
            len: p.raw_len,
        }
    }

    /// Caches a decoded payload (the oldest go once the cache is full).
    fn keep(&mut self, p: &PayloadRef, raw: Loaded) -> Arc<Loaded> {
        self.stats.log_bytes_read += p.stored_len;
        self.stats.payloads_read += 1;
        let raw = Arc::new(raw);
        self.cache_bytes += raw.raw.len();
        self.cache.insert(*p, raw.clone());
        self.cache_order.push_back(*p);
        while self.cache_bytes > CACHE_BYTES
            && let Some(old) = self.cache_order.pop_front()
        {
            if let Some(v) = self.cache.remove(&old) {
                self.cache_bytes -= v.raw.len();
            }
        }
        raw
    }

    // ---- pass 3 -----------------------------------------------------------------------------
}

/// The pieces (at their file offsets) and the hole ranges a file's replay looks at.
type Plan = (Vec<(u64, Piece)>, Vec<(u64, u64)>);

/// Sorted, non-overlapping `[start, end)` ranges covering the same bytes as `r` (also the
/// ranges a cut re-reads, so that no byte is read twice).
pub fn merge(mut r: Vec<(u64, u64)>) -> Vec<(u64, u64)> {
    r.retain(|&(a, b)| a < b);
    r.sort_unstable();
    let mut out: Vec<(u64, u64)> = Vec::with_capacity(r.len());
    for (a, b) in r {
        match out.last_mut() {
            Some(last) if a <= last.1 => last.1 = last.1.max(b),
            _ => out.push((a, b)),
        }
    }
    out
}

/// The parts of `[a, b)` within the merged ranges `want`.
fn overlaps(want: &[(u64, u64)], a: u64, b: u64) -> Vec<(u64, u64)> {
    let first = want.partition_point(|&(_, e)| e <= a);
    want[first..]
        .iter()
        .take_while(|&&(s, _)| s < b)
        .map(|&(s, e)| (s.max(a), e.min(b)))
        .filter(|(s, e)| s < e)
        .collect()
}
