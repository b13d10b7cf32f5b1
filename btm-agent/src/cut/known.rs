//! What a resume state or stat index knows of each file, and reading one from disk.
//!
//! At 10^6 files this is the largest thing the first cut after a start holds beside the tip
//! and the walk. It was a hash map of a 72-byte entry (with a `Vec` for marks most files do not
//! have) in 2^21 buckets, about 150 MiB, decoded from the whole file read into memory (80 MiB
//! more). It is now a vector of 48-byte rows sorted by identity, looked up by binary search,
//! with the few files that have marks apart, decoded from the file as it is read.
use std::{collections::HashMap, fs::File, io::Read, path::Path};

use anyhow::{Context, Result, bail};

use super::{
    losses::Losses,
    resume::{MAGIC, Resume, Running, VERSION},
    scan::Identity,
};
use crate::{log::FileId, tracker::Handover};

/// What a file was when the state was taken.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Known {
    pub id: FileId,
    pub size: u64,
    pub mtime: i64,
    pub ctime: i64,
}

/// Every file a state knows, with the byte ranges marked of it since its height.
#[derive(Debug, Default)]
pub struct KnownFiles {
    /// Sorted by identity, one per identity.
    rows: Vec<(Identity, Known)>,
    /// Marked ranges (offset, length), of the files that have any.
    marks: HashMap<Identity, Vec<(u64, u64)>>,
}

impl KnownFiles {
    pub fn len(&self) -> usize {
        self.rows.len()
    }

    pub fn is_empty(&self) -> bool {
        self.rows.is_empty()
    }

    /// What the state says of the file `ident`, and its marked ranges.
    pub fn get(&self, ident: &Identity) -> Option<(Known, &[(u64, u64)])> {
        let i = self.rows.binary_search_by(|(k, _)| k.cmp(ident)).ok()?;
        Some((self.rows[i].1, self.marked(ident)))
    }

    fn marked(&self, ident: &Identity) -> &[(u64, u64)] {
        self.marks.get(ident).map_or(&[], Vec::as_slice)
    }

    /// Every file, in identity order.
    pub fn iter(&self) -> impl Iterator<Item = (Identity, Known, &[(u64, u64)])> + '_ {
        self.rows.iter().map(|(i, k)| (*i, *k, self.marked(i)))
    }

    /// Adds a file; [`KnownFiles::seal`] must follow before any lookup.
    fn push(&mut self, ident: Identity, k: Known, dirty: Vec<(u64, u64)>) {
        self.rows.push((ident, k));
        if dirty.is_empty() {
            self.marks.remove(&ident);
        } else {
            self.marks.insert(ident, dirty);
        }
    }

    /// Sorts the rows; of an identity listed twice (the writer lists a file once per path, so
    /// hard links repeat it) the last one stands, as the marks do.
    fn seal(&mut self) {
        // Stable, so a repeat follows the rows it repeats; each overwrites the one kept.
        self.rows.sort_by_key(|(i, _)| *i);
        self.rows.dedup_by(|later, kept| {
            let same = later.0 == kept.0;
            if same {
                *kept = *later;
            }
            same
        });
        self.rows.shrink_to_fit();
    }
}

impl FromIterator<(Identity, Known, Vec<(u64, u64)>)> for KnownFiles {
    fn from_iter<I: IntoIterator<Item = (Identity, Known, Vec<(u64, u64)>)>>(it: I) -> Self {
        let mut files = KnownFiles::default();
        for (i, k, d) in it {
            files.push(i, k, d);
        }
        files.seal();
        files
    }
}

/// The smallest encoding of one file: ino, id, size, count of ranges, three 16-byte times.
const ROW_BYTES: u64 = 4 * 8 + 3 * 16;

/// Reads the state at `path`, checking its blake3 as it goes; with `files` false its files
/// are checked and skipped (to look at the header only).
pub fn read_state(path: &Path, files: bool) -> Result<Resume> {
    let f = File::open(path)?;
    let len = f.metadata()?.len();
    if len < 8 + 4 + 8 + 16 + 8 + 32 {
        bail!("not a resume state");
    }
    let mut r = Src {
        f,
        left: len - 32,
        buf: Vec::with_capacity(SRC_BUF),
        pos: 0,
        sum: blake3::Hasher::new(),
    };
    if &r.take::<8>()? != MAGIC {
        bail!("not a resume state");
    }
    let version = r.u32()?;
    if version != VERSION && version != 1 {
        bail!("unknown version");
    }
    let height = r.u64()?;
    let taken = r.ns()?;
    let running = match version {
        1 => None,
        _ => match r.take::<1>()?[0] {
            0 => None,
            1 => {
                let handover = Handover {
                    token: r.u64()?,
                    misses_base: r.u64()?,
                };
                let mut w = [0u64; 5];
                for v in &mut w {
                    *v = r.u64()?;
                }
                Some(Running {
                    handover,
                    seen: Losses::from_words(w),
                })
            }
            _ => bail!("bad running-tracker flag"),
        },
    };
    let n = r.u64()?;
    let mut known = KnownFiles::default();
    if files {
        // No more rows than the bytes left can hold: a damaged count reserves nothing absurd.
        known
            .rows
            .reserve_exact(n.min(r.remaining() / ROW_BYTES) as usize);
    }
    for _ in 0..n {
        let (ino, id, size, ranges) = (r.u64()?, r.u64()?, r.u64()?, r.u64()?);
        let (btime, mtime, ctime) = (r.ns()?, r.ns()?, r.ns()?);
        if ranges > r.remaining() / 16 {
            bail!("truncated");
        }
        let mut dirty = Vec::with_capacity(if files { ranges as usize } else { 0 });
        for _ in 0..ranges {
            let range = (r.u64()?, r.u64()?);
            if files {
                dirty.push(range);
            }
        }
        if files {
            let k = Known {
                id,
                size,
                mtime,
                ctime,
            };
            known.push((ino, btime), k, dirty);
        }
    }
    if r.remaining() != 0 {
        bail!("trailing bytes");
    }
    let body = r.sum.finalize();
    let mut sum = [0u8; 32];
    r.f.read_exact(&mut sum).context("truncated")?;
    if body.as_bytes() != &sum {
        bail!("checksum mismatch");
    }
    known.seal();
    Ok(Resume {
        height,
        taken,
        files: known,
        running,
        kept_running: false,
    })
}

/// Bytes [`Src`] reads (and hashes) at a time.
const SRC_BUF: usize = 64 << 10;

/// The body of a state (all but its trailing blake3), read a buffer at a time and hashed as
/// it is read.
struct Src {
    f: File,
    /// Bytes of the body not read from the file yet.
    left: u64,
    buf: Vec<u8>,
    pos: usize,
    sum: blake3::Hasher,
}

impl Src {
    /// Bytes of the body not consumed yet.
    fn remaining(&self) -> u64 {
        self.left + (self.buf.len() - self.pos) as u64
    }

    fn take<const N: usize>(&mut self) -> Result<[u8; N]> {
        if self.buf.len() - self.pos < N {
            self.buf.drain(..self.pos);
            self.pos = 0;
            let want = (SRC_BUF as u64).min(self.left) as usize;
            let start = self.buf.len();
            self.buf.resize(start + want, 0);
            self.f.read_exact(&mut self.buf[start..])?;
            self.sum.update(&self.buf[start..]);
            self.left -= want as u64;
            if self.buf.len() < N {
                bail!("truncated");
            }
        }
        let a = self.buf[self.pos..self.pos + N]
            .try_into()
            .expect("length checked");
        self.pos += N;
        Ok(a)
    }

    fn u32(&mut self) -> Result<u32> {
        Ok(u32::from_le_bytes(self.take()?))
    }

    fn u64(&mut self) -> Result<u64> {
        Ok(u64::from_le_bytes(self.take()?))
    }

    /// A time in ns, stored in 16 bytes (the format predates the 8-byte times in memory).
    fn ns(&mut self) -> Result<i64> {
        let t = i128::from_le_bytes(self.take()?);
        Ok(t.clamp(i64::MIN as i128, i64::MAX as i128) as i64)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sorted_one_per_identity_last_wins() {
        let k = |id| Known {
            id,
            size: 1,
            mtime: 2,
            ctime: 3,
        };
        let files: KnownFiles = [
            ((9, 0), k(1), vec![(0, 1)]),
            ((2, 5), k(2), vec![]),
            ((9, 0), k(3), vec![]),
            ((2, 1), k(4), vec![(4, 4)]),
        ]
        .into_iter()
        .collect();
        assert_eq!(files.len(), 3);
        assert_eq!(files.get(&(9, 0)), Some((k(3), &[][..])), "the last stands");
        assert_eq!(files.get(&(2, 1)), Some((k(4), &[(4, 4)][..])));
        assert_eq!(files.get(&(2, 5)), Some((k(2), &[][..])));
        assert_eq!(files.get(&(3, 0)), None);
        let order: Vec<Identity> = files.iter().map(|(i, _, _)| i).collect();
        assert_eq!(order, [(2, 1), (2, 5), (9, 0)]);
    }
}
