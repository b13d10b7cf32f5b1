//! A clean stop leaves the next start what it needs to read only what changed.
//!
//! Without it, the first cut after a start reads every file (the tracker did not see what
//! happened meanwhile). On SIGTERM the agent writes `LOGDIR/resume.state`: for every file it
//! knows at the last height, its identity, file id, size, mtime and ctime, and the ranges the
//! tracker marked since that height. The next start trusts a file only where all of its stat
//! is unchanged and not "racy" (changed within [`RACY_NS`] of the moment the index was taken,
//! where a later write could leave the same timestamps: git's index has the same rule), and
//! reads just those ranges; any other file is read whole, and the unchanged-block filter
//! stores only what differs. `syncfs` before the index write-protects every shared mapping, so
//! a store through `mmap` after it faults and updates mtime.
//!
//! The file is used once (removed when read) and only for the height it was written at. After
//! a crash there is none; the stat index cuts leave (see [`super::crash_index`]) serves then,
//! in the same format: files whose stat changed since it are read whole.
use std::{fs, io::Write, path::Path};

use anyhow::Result;

pub use super::known::{Known, KnownFiles};
use super::{
    known::read_state,
    losses::Losses,
    scan::{Identity, Kind, Scan},
};
use crate::{log::FileId, tracker::Handover};

pub const RESUME_FILE: &str = "resume.state";
pub(super) const MAGIC: &[u8; 8] = b"btm.res\n";
/// Version 2 adds the tracker a stop left running; version 1 files are still read.
pub(super) const VERSION: u32 = 2;
/// Changes this close to the index are not trusted (covers coarse filesystem timestamps).
pub const RACY_NS: i64 = 2_000_000_000;

/// The tracker a stop left running (see [`crate::tracker::handover`]), and its loss counters
/// before the stop's last flip: a rise since means marks may be missing from what it kept.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Running {
    pub handover: Handover,
    pub seen: Losses,
}

/// The state a clean stop left for the height it was written at.
#[derive(Debug, Default)]
pub struct Resume {
    pub height: u64,
    /// When the index was taken (ns since the epoch).
    pub taken: i64,
    pub files: KnownFiles,
    pub running: Option<Running>,
    /// The tracker kept marking while no agent ran ([`Resume::running`], taken over by this
    /// start): a known file's marks cover it whatever its stat says.
    pub kept_running: bool,
}

impl Resume {
    /// What to read of a file found now with `size`, `mtime`, `ctime`: its marked ranges when
    /// nothing about it changed since the stop, else None (read it whole).
    pub fn unchanged(
        &self,
        ident: &Identity,
        id: FileId,
        now: (u64, i64, i64),
    ) -> Option<&[(u64, u64)]> {
        let (k, dirty) = self.files.get(ident)?;
        if self.kept_running {
            return (k.id == id).then_some(dirty);
        }
        let (size, mtime, ctime) = now;
        let racy = mtime.max(ctime) >= self.taken - RACY_NS;
        (k.id == id && k.size == size && k.mtime == mtime && k.ctime == ctime && !racy)
            .then_some(dirty)
    }

    /// Writes the state atomically (temporary file, fsync, rename, directory fsync). Tests
    /// build states this way; the agent streams its own from the scan ([`write_index`]).
    #[cfg(test)]
    pub fn save(&self, dir: &Path) -> Result<std::path::PathBuf> {
        super::crash_index::write_atomic(dir, RESUME_FILE, |w| {
            let mut e = Enc::new(w);
            e.header(self.height, self.taken, self.running.as_ref())?;
            e.u64s(&[self.files.len() as u64])?;
            for (ident, k, dirty) in self.files.iter() {
                e.file(ident, k.id, k.size, k.mtime, k.ctime, dirty)?;
            }
            e.finish()
        })?;
        Ok(dir.join(RESUME_FILE))
    }

    /// The stat index a cut left in `dir` (see [`super::crash_index`]), kept for later starts:
    /// None when there is none, when it is damaged, or when it describes a height the log
    /// does not reach (`last`).
    pub fn take_index(dir: &Path, last: Option<u64>) -> Option<Resume> {
        let path = dir.join(super::crash_index::INDEX_FILE);
        if !path.exists() {
            return None;
        }
        match read_state(&path, true) {
            Ok(r) if r.running.is_none() && last.is_some_and(|l| r.height <= l) => Some(r),
            Ok(r) => {
                tracing::warn!(
                    "{} describes height {}, the log ends at {last:?}: not used",
                    path.display(),
                    r.height
                );
                None
            }
            Err(e) => {
                tracing::warn!("{} is unusable ({e:#}): not used", path.display());
                None
            }
        }
    }

    /// The tracker the state in `dir` says its stop left running, without taking the state:
    /// the tracker starts before the log is opened.
    pub fn peek_running(dir: &Path) -> Option<Handover> {
        Some(
            read_state(&dir.join(RESUME_FILE), false)
                .ok()?
                .running?
                .handover,
        )
    }

    /// Reads and removes the state in `dir`: None when there is none, or when it is damaged
    /// or was written at another height than `height` (then the first cut reads everything).
    pub fn take(dir: &Path, height: Option<u64>) -> Option<Resume> {
        let path = dir.join(RESUME_FILE);
        if !path.exists() {
            return None;
        }
        let state = read_state(&path, true);
        let _ = fs::remove_file(&path);
        let _ = fs::File::open(dir).and_then(|d| d.sync_all());
        match state {
            Ok(r) if Some(r.height) == height => Some(r),
            Ok(r) => {
                tracing::warn!(
                    "{} was written at height {}, the log ends at {height:?}: reading every file",
                    path.display(),
                    r.height
                );
                None
            }
            Err(e) => {
                tracing::warn!("{} is unusable ({e:#}): reading every file", path.display());
                None
            }
        }
    }
}

/// What a stat index is written from: every file of `scan` the cutter knows (`ids`), with
/// its stat; on a clean stop also what the tracker marked of it since the last height and
/// the tracker left running for the next start.
pub struct IndexOf<'a> {
    pub height: u64,
    /// When the stats were taken (ns since the epoch).
    pub taken: i64,
    pub scan: &'a Scan,
    pub ids: &'a super::IdMap,
    pub dirty: Option<&'a crate::tracker::DirtySet>,
    pub running: Option<Running>,
    /// On the stop of a start that cut no height: the state the stop before it left, whose
    /// marks (and, for a tracker not left running, stats) still say what the last height
    /// does not have (see [`marks_of`]).
    pub carried: Option<&'a Resume>,
}

/// Writes the index as `dir/name` in the resume state's format, straight from the scan (no
/// copy of 10^6 entries in memory); returns how many files it holds.
pub fn write_index(dir: &Path, name: &str, of: &IndexOf) -> Result<usize> {
    let head = (of.height, of.taken, of.running.as_ref());
    let rows = known_files(of.scan, of.ids).map(|row| (row, marks_of(of, &row)));
    write_files(dir, name, head, known_files(of.scan, of.ids).count(), rows)
}

/// The ranges (offset, length) to record of a file (stat now in `row`) for the next start:
/// what the tracker marked since the height. On the stop of a start that cut no height, also
/// what the stop before it carried (`of.carried`): its marks, or the whole file where that
/// state no longer vouches for it (its stat changed while no agent ran, or is racy). Only
/// this stop's marks and stat would make the next start trust a file written before the
/// first stop, or while no agent ran, as unchanged: its change would be missing from the next
/// height.
fn marks_of(of: &IndexOf, row: &IndexRow) -> Vec<(u64, u64)> {
    let &(ident, id, size, mtime, ctime) = row;
    let mut r = (of.dirty)
        .and_then(|d| d.files.get(&ident.0))
        .map(|f| f.ranges_within(size))
        .unwrap_or_default();
    let Some(prev) = of.carried else {
        return r;
    };
    let Some(old) = prev.unchanged(&ident, id, (size, mtime, ctime)) else {
        return if size == 0 {
            Vec::new()
        } else {
            vec![(0, size)]
        };
    };
    r.extend(
        old.iter()
            .filter(|&&(o, _)| o < size)
            .map(|&(o, l)| (o, l.min(size - o))),
    );
    let spans = r.into_iter().map(|(o, l)| (o, o + l)).collect();
    crate::log::merge_ranges(spans)
        .into_iter()
        .map(|(a, b)| (a, b - a))
        .collect()
}

/// One file of a stat index: identity, id, size, mtime, ctime.
pub type IndexRow = (Identity, FileId, u64, i64, i64);

/// The rows of every file of `scan` the cutter knows (`ids`), in path order.
fn known_files<'a>(scan: &'a Scan, ids: &'a super::IdMap) -> impl Iterator<Item = IndexRow> + 'a {
    scan.entries.values().filter_map(|e| match e.kind {
        Kind::File { ident, size } => ids
            .get(&ident)
            .map(|&id| (ident, id, size, e.mtime, e.ctime)),
        _ => None,
    })
}

/// Encodes a stat index of `scan` (every file `ids` knows; no marks, no tracker) into
/// `dir/name`'s temporary file, straight from the scan: no copy of its rows (48 bytes a file).
/// Not durable yet: [`super::crash_index::settle`] syncs it and puts it in place. Returns the
/// file and how many files it holds.
pub fn stage_index(
    dir: &Path,
    name: &str,
    (height, taken): (u64, i64),
    scan: &Scan,
    ids: &super::IdMap,
) -> Result<(std::fs::File, usize)> {
    let n = known_files(scan, ids).count();
    let rows = known_files(scan, ids).map(|r| (r, Vec::new()));
    let f = super::crash_index::write_unsynced(dir, name, |w| {
        encode_files(w, (height, taken, None), n, rows)
    })?;
    Ok((f, n))
}

/// The encoding of `n` files, each with what was marked of it, written atomically.
fn write_files(
    dir: &Path,
    name: &str,
    head: (u64, i64, Option<&Running>),
    n: usize,
    rows: impl Iterator<Item = (IndexRow, Vec<(u64, u64)>)>,
) -> Result<usize> {
    super::crash_index::write_atomic(dir, name, |w| encode_files(w, head, n, rows))?;
    Ok(n)
}

/// The encoding of `n` files, each with what was marked of it, to `w`.
fn encode_files(
    w: &mut dyn Write,
    (height, taken, running): (u64, i64, Option<&Running>),
    n: usize,
    rows: impl Iterator<Item = (IndexRow, Vec<(u64, u64)>)>,
) -> Result<()> {
    let mut enc = Enc::new(w);
    enc.header(height, taken, running)?;
    enc.u64s(&[n as u64])?;
    for ((ident, id, size, mtime, ctime), marked) in rows {
        enc.file(ident, id, size, mtime, ctime, &marked)?;
    }
    enc.finish()
}

/// The resume state's encoding, written as it goes, with its blake3 at the end.
/// Bytes are gathered in a buffer and hashed and written a buffer at a time: a blake3 update
/// and a write for each field of 10^6 files took 460 ms, with the agent's requests waiting.
struct Enc<'a> {
    w: &'a mut dyn Write,
    sum: blake3::Hasher,
    buf: Vec<u8>,
}

/// Bytes [`Enc`] gathers before it hashes and writes them.
const ENC_BUF: usize = 64 << 10;

impl<'a> Enc<'a> {
    fn new(w: &'a mut dyn Write) -> Enc<'a> {
        Enc {
            w,
            sum: blake3::Hasher::new(),
            buf: Vec::with_capacity(ENC_BUF),
        }
    }

    fn put(&mut self, b: &[u8]) -> Result<()> {
        self.buf.extend_from_slice(b);
        if self.buf.len() >= ENC_BUF {
            self.flush()?;
        }
        Ok(())
    }

    fn flush(&mut self) -> Result<()> {
        self.sum.update(&self.buf);
        self.w.write_all(&self.buf)?;
        self.buf.clear();
        Ok(())
    }

    fn u64s(&mut self, v: &[u64]) -> Result<()> {
        v.iter().try_for_each(|x| self.put(&x.to_le_bytes()))
    }

    fn header(&mut self, height: u64, taken: i64, running: Option<&Running>) -> Result<()> {
        self.put(MAGIC)?;
        self.put(&VERSION.to_le_bytes())?;
        self.u64s(&[height])?;
        self.put(&(taken as i128).to_le_bytes())?;
        match running {
            None => self.put(&[0]),
            Some(r) => {
                self.put(&[1])?;
                let h = r.handover;
                self.u64s(&[h.token, h.misses_base])?;
                self.u64s(&r.seen.words())
            }
        }
    }

    fn file(
        &mut self,
        (ino, btime): Identity,
        id: FileId,
        size: u64,
        mtime: i64,
        ctime: i64,
        dirty: &[(u64, u64)],
    ) -> Result<()> {
        self.u64s(&[ino, id, size, dirty.len() as u64])?;
        for v in [btime, mtime, ctime] {
            self.put(&(v as i128).to_le_bytes())?;
        }
        dirty.iter().try_for_each(|(o, l)| self.u64s(&[*o, *l]))
    }

    fn finish(mut self) -> Result<()> {
        self.flush()?;
        let sum = *self.sum.finalize().as_bytes();
        self.w.write_all(&sum)?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn roundtrip_once_and_only_at_its_height() {
        let dir = tempfile::tempdir().unwrap();
        let k = Known {
            id: 7,
            size: 100,
            mtime: 1,
            ctime: 2,
        };
        let mut r = Resume {
            height: 5,
            taken: 10_000_000_000,
            files: [((3, 4), k, vec![(0, 4096)])].into_iter().collect(),
            ..Default::default()
        };
        r.save(dir.path()).unwrap();
        assert!(
            Resume::take(dir.path(), Some(6)).is_none(),
            "another height"
        );
        r.save(dir.path()).unwrap();
        let back = Resume::take(dir.path(), Some(5)).unwrap();
        assert_eq!(back.files.get(&(3, 4)), Some((k, &[(0, 4096)][..])));
        assert!(Resume::take(dir.path(), Some(5)).is_none(), "used once");
        // Trusted only when nothing changed and it is not racy.
        assert_eq!(
            back.unchanged(&(3, 4), 7, (100, 1, 2)),
            Some(&[(0, 4096)][..])
        );
        assert!(back.unchanged(&(3, 4), 7, (101, 1, 2)).is_none());
        assert!(back.unchanged(&(3, 4), 7, (100, 1, 3)).is_none());
        assert!(back.unchanged(&(3, 4), 8, (100, 1, 2)).is_none());
        assert!(
            back.unchanged(&(3, 4), 7, (100, 9_000_000_000, 2))
                .is_none(),
            "racy"
        );
        // A damaged file is refused.
        r.save(dir.path()).unwrap();
        let p = dir.path().join(RESUME_FILE);
        let mut b = fs::read(&p).unwrap();
        b[30] ^= 1;
        fs::write(&p, b).unwrap();
        assert!(Resume::take(dir.path(), Some(5)).is_none());

        // A stop that left its tracker running: peeked before the tracker starts, and then a
        // known file's marks are trusted whatever its stat (the tracker saw every write).
        let running = Running {
            handover: Handover {
                token: 0xfeed,
                misses_base: 3,
            },
            seen: Losses::from_words([1, 2, 3, 4, 5]),
        };
        r.running = Some(running);
        r.save(dir.path()).unwrap();
        assert_eq!(Resume::peek_running(dir.path()), Some(running.handover));
        let mut back = Resume::take(dir.path(), Some(5)).unwrap();
        assert_eq!(back.running, Some(running));
        assert!(
            back.unchanged(&(3, 4), 7, (101, 5, 6)).is_none(),
            "not taken over"
        );
        back.kept_running = true;
        assert_eq!(
            back.unchanged(&(3, 4), 7, (101, 5, 6)),
            Some(&[(0, 4096)][..])
        );
        assert!(
            back.unchanged(&(3, 4), 8, (100, 1, 2)).is_none(),
            "another file"
        );
    }

    /// The stop of a start that cut nothing carries the previous stop's marks where that
    /// stop still vouches for the file, and marks it whole where it does not.
    #[test]
    fn a_stop_without_a_height_carries_the_previous_marks() {
        let (scan, ids) = (Scan::default(), super::super::IdMap::default());
        let known = Known {
            id: 5,
            size: 100,
            mtime: 1_000,
            ctime: 1_000,
        };
        let mut prev = Resume {
            height: 3,
            taken: 10_000_000_000,
            files: [((7, 1), known, vec![(10, 5), (50, 60)])]
                .into_iter()
                .collect(),
            running: None,
            kept_running: false,
        };
        let marks = |prev: &Resume, row: IndexRow| {
            let of = IndexOf {
                height: 3,
                taken: 20_000_000_000,
                scan: &scan,
                ids: &ids,
                dirty: None,
                running: None,
                carried: Some(prev),
            };
            marks_of(&of, &row)
        };
        // Unchanged since the first stop: its marks, cut to the size now.
        assert_eq!(
            marks(&prev, ((7, 1), 5, 100, 1_000, 1_000)),
            vec![(10, 5), (50, 50)]
        );
        // Its stat changed while no agent ran (and no tracker marked): all of it.
        assert_eq!(marks(&prev, ((7, 1), 5, 100, 2_000, 2_000)), vec![(0, 100)]);
        assert_eq!(marks(&prev, ((7, 1), 5, 120, 1_000, 1_000)), vec![(0, 120)]);
        // Racy at the first stop: all of it.
        let racy = 9_000_000_000;
        assert_eq!(marks(&prev, ((7, 1), 5, 100, racy, racy)), vec![(0, 100)]);
        // A tracker kept marking meanwhile: its marks whatever the stat says.
        prev.kept_running = true;
        assert_eq!(
            marks(&prev, ((7, 1), 5, 100, 2_000, 2_000)),
            vec![(10, 5), (50, 50)]
        );
        // Nothing carried: only this stop's marks.
        let of = IndexOf {
            height: 3,
            taken: 0,
            scan: &scan,
            ids: &ids,
            dirty: None,
            running: None,
            carried: None,
        };
        assert!(marks_of(&of, &((7, 1), 5, 100, 2_000, 2_000)).is_empty());
    }

    #[test]
    fn stat_index_serves_its_height_and_later_ones_and_stays() {
        let vol = tempfile::tempdir().unwrap();
        let dir = tempfile::tempdir().unwrap();
        fs::write(vol.path().join("a"), b"aaaa").unwrap();
        fs::write(vol.path().join("b"), b"bb").unwrap();
        let scan = Scan::walk(vol.path()).unwrap();
        let idents: Vec<(Identity, u64)> = scan
            .entries
            .values()
            .filter_map(|e| match e.kind {
                Kind::File { ident, size } => Some((ident, size)),
                _ => None,
            })
            .collect();
        // Only files with an id are indexed.
        let mut ids = super::super::IdMap::default();
        ids.insert(idents[0].0, 11);
        let name = super::super::crash_index::INDEX_FILE;
        let of = IndexOf {
            height: 7,
            taken: 42,
            scan: &scan,
            ids: &ids,
            dirty: None,
            running: None,
            carried: None,
        };
        let n = write_index(dir.path(), name, &of).unwrap();
        assert_eq!(n, 1);
        assert!(
            Resume::take_index(dir.path(), Some(6)).is_none(),
            "an older log"
        );
        assert!(
            Resume::take_index(dir.path(), None).is_none(),
            "an empty log"
        );
        let r = Resume::take_index(dir.path(), Some(9)).unwrap();
        assert_eq!((r.height, r.taken, r.files.len()), (7, 42, 1));
        let (k, dirty) = r.files.get(&idents[0].0).unwrap();
        assert_eq!((k.id, k.size, dirty.len()), (11, idents[0].1, 0));
        assert!(r.running.is_none());
        assert!(Resume::take_index(dir.path(), Some(7)).is_some(), "kept");
        // Damaged: refused.
        let p = dir.path().join(name);
        let mut b = fs::read(&p).unwrap();
        let last = b.len() - 40;
        b[last] ^= 1;
        fs::write(&p, b).unwrap();
        assert!(Resume::take_index(dir.path(), Some(9)).is_none());
    }
}
