//! The pieces of a file with many: sorted chunks of at most [`CHUNK`] entries, each allocated to
//! its length plus at most [`GROW`] spare entries (the last chunk, filled front to back, may have
//! up to twice its length).
//!
//! Why not a `BTreeMap`: pieces arrive mostly in offset order (a capture reads a file front to
//! back), and a `BTreeMap` filled in order keeps its leaves about half full: a piece cost about
//! 179 bytes for its 96-byte entry. A chunk's room follows its length instead, so a piece costs
//! its entry plus a few bytes of the chunk's, however the chunks were split. An insert in the
//! middle moves at most a chunk's entries (12 KiB), as a slice of [`super::LARGE`] entries does.

use std::ops::Bound;
use std::slice;

use crate::state::Piece;

type Entry = (u64, Piece);

/// Most entries in one chunk: a full chunk is split in two.
pub(super) const CHUNK: usize = 128;
/// Room a chunk gains when it is full (grown by this much, not doubled, so a chunk holds at
/// most this many entries it does not use).
const GROW: usize = 4;

/// Sorted, non-empty chunks; every key of a chunk is below every key of the next one.
#[derive(Clone, Default)]
pub(super) struct Chunks {
    chunks: Vec<Vec<Entry>>,
    len: usize,
}

/// A position: chunk and index in it (`(c, chunk len)` and `(c + 1, 0)` are the same place).
type Pos = (usize, usize);

impl Chunks {
    /// From entries sorted by key with unique keys.
    pub(super) fn from_sorted(v: Vec<Entry>) -> Self {
        let len = v.len();
        let mut chunks = Vec::with_capacity(len.div_ceil(CHUNK));
        let mut it = v.into_iter().peekable();
        while it.peek().is_some() {
            let mut c = Vec::with_capacity(CHUNK.min(len));
            c.extend(it.by_ref().take(CHUNK));
            c.shrink_to(c.len() + GROW);
            chunks.push(c);
        }
        Chunks { chunks, len }
    }

    /// Every entry, in order (to move back to a slice).
    pub(super) fn into_sorted(self) -> Vec<Entry> {
        let mut v = Vec::with_capacity(self.len);
        for c in self.chunks {
            v.extend(c);
        }
        v
    }

    pub(super) fn len(&self) -> usize {
        self.len
    }

    /// The chunk that holds `key` or would hold it: the last whose first key is at or below
    /// `key`, or the first.
    fn chunk_of(&self, key: u64) -> usize {
        self.chunks
            .partition_point(|c| c[0].0 <= key)
            .saturating_sub(1)
    }

    fn find(&self, key: u64) -> Option<Pos> {
        let c = self.chunk_of(key);
        let i = self
            .chunks
            .get(c)?
            .binary_search_by_key(&key, |e| e.0)
            .ok()?;
        Some((c, i))
    }

    pub(super) fn get_mut(&mut self, key: u64) -> Option<&mut Piece> {
        let (c, i) = self.find(key)?;
        Some(&mut self.chunks[c][i].1)
    }

    pub(super) fn insert(&mut self, key: u64, piece: Piece) -> Option<Piece> {
        if self.chunks.is_empty() {
            self.chunks.push(new_chunk((key, piece)));
            self.len = 1;
            return None;
        }
        let c = self.chunk_of(key);
        let i = match self.chunks[c].binary_search_by_key(&key, |e| e.0) {
            Ok(i) => return Some(std::mem::replace(&mut self.chunks[c][i].1, piece)),
            Err(i) => i,
        };
        self.len += 1;
        let last = c + 1 == self.chunks.len();
        let chunk = &mut self.chunks[c];
        if last && i == chunk.len() && i < CHUNK {
            // Read front to back: grown by doubling, but never past CHUNK (a chunk tidied to
            // an odd room would double past it and keep the spare room once another chunk
            // follows it).
            if chunk.len() == chunk.capacity() {
                chunk.reserve_exact(i.max(1).min(CHUNK - i));
            }
            chunk.push((key, piece));
            return None;
        }
        if chunk.len() < CHUNK {
            if chunk.len() == chunk.capacity() {
                chunk.reserve_exact(GROW);
            }
            chunk.insert(i, (key, piece));
            return None;
        }
        if i == CHUNK && last {
            // After every other key (a file read front to back): a new chunk, the full one
            // stays full.
            self.chunks.push(new_chunk((key, piece)));
            return None;
        }
        let mut right = chunk.split_off(CHUNK / 2);
        chunk.shrink_to(CHUNK / 2 + GROW);
        right.reserve_exact(GROW);
        if i <= CHUNK / 2 {
            chunk.insert(i, (key, piece));
        } else {
            right.insert(i - CHUNK / 2, (key, piece));
        }
        self.chunks.insert(c + 1, right);
        None
    }

    pub(super) fn remove(&mut self, key: u64) -> Option<Piece> {
        let (c, i) = self.find(key)?;
        let (_, p) = self.chunks[c].remove(i);
        self.len -= 1;
        self.tidy(c);
        Some(p)
    }

    /// After chunk `c` lost entries: drops it when empty, merges it into the next one when both
    /// fit in half a chunk, and gives back room it no longer uses.
    fn tidy(&mut self, c: usize) {
        let n = self.chunks[c].len();
        if n == 0 {
            self.chunks.remove(c);
            return;
        }
        if let Some(next) = self.chunks.get(c + 1)
            && n + next.len() <= CHUNK / 2
        {
            let next = self.chunks.remove(c + 1);
            self.chunks[c].extend(next);
        }
        let chunk = &mut self.chunks[c];
        if chunk.capacity() > chunk.len() + 2 * GROW {
            chunk.shrink_to(chunk.len() + GROW);
        }
    }

    /// The position of the first entry whose key is above `k` (`past_equal`) or at or above it.
    fn position(&self, k: u64, past_equal: bool) -> Pos {
        let c = self.chunk_of(k);
        let Some(chunk) = self.chunks.get(c) else {
            return (0, 0);
        };
        (
            c,
            chunk.partition_point(|e| e.0 < k || (past_equal && e.0 == k)),
        )
    }

    /// The position of the first entry the bound lets in, as a lower bound.
    fn lower(&self, b: Bound<&u64>) -> Pos {
        match b {
            Bound::Unbounded => (0, 0),
            Bound::Included(k) => self.position(*k, false),
            Bound::Excluded(k) => self.position(*k, true),
        }
    }

    /// The position just past the last entry the bound lets in, as an upper bound.
    fn upper(&self, b: Bound<&u64>) -> Pos {
        match b {
            Bound::Unbounded => self.end(),
            Bound::Included(k) => self.position(*k, true),
            Bound::Excluded(k) => self.position(*k, false),
        }
    }

    fn end(&self) -> Pos {
        match self.chunks.last() {
            Some(c) => (self.chunks.len() - 1, c.len()),
            None => (0, 0),
        }
    }

    /// The entries between the bounds (checked by the caller), in order from either end.
    pub(super) fn range(&self, lo: Bound<&u64>, hi: Bound<&u64>) -> Iter<'_> {
        let (from, to) = (self.lower(lo), self.upper(hi));
        let to = to.max(from);
        if self.chunks.is_empty() {
            return Iter::default();
        }
        if from.0 == to.0 {
            return Iter {
                front: self.chunks[from.0][from.1..to.1].iter(),
                ..Iter::default()
            };
        }
        Iter {
            front: self.chunks[from.0][from.1..].iter(),
            mid: self.chunks[from.0 + 1..to.0].iter(),
            back: self.chunks[to.0][..to.1].iter(),
        }
    }

    /// Takes out the entries between the bounds (checked by the caller), in order: whole chunks
    /// go at once, so a truncation of millions of pieces does not move the rest each time.
    pub(super) fn take_range(&mut self, lo: Bound<&u64>, hi: Bound<&u64>) -> Vec<Entry> {
        let (from, to) = (self.lower(lo), self.upper(hi));
        if self.chunks.is_empty() || to <= from {
            return Vec::new();
        }
        let mut out = Vec::new();
        if from.0 == to.0 {
            out.extend(self.chunks[from.0].drain(from.1..to.1));
        } else {
            out.extend(self.chunks[from.0].drain(from.1..));
            for c in self.chunks.drain(from.0 + 1..to.0) {
                out.extend(c);
            }
            out.extend(self.chunks[from.0 + 1].drain(..to.1));
            self.tidy(from.0 + 1);
        }
        self.tidy(from.0);
        self.len -= out.len();
        out
    }

    /// Checks the invariants (tests).
    #[cfg(test)]
    pub(super) fn check(&self) {
        let mut last = None;
        let mut n = 0;
        for (k, c) in self.chunks.iter().enumerate() {
            assert!(!c.is_empty() && c.len() <= CHUNK, "chunk of {}", c.len());
            let is_last = k + 1 == self.chunks.len();
            assert!(
                c.capacity() <= c.len() + 2 * GROW || (is_last && c.capacity() <= 2 * c.len()),
                "room {} for {}",
                c.capacity(),
                c.len()
            );
            for e in c {
                assert!(last < Some(e.0));
                last = Some(e.0);
            }
            n += c.len();
        }
        assert_eq!(n, self.len);
    }
}

fn new_chunk(e: Entry) -> Vec<Entry> {
    let mut c = Vec::with_capacity(GROW);
    c.push(e);
    c
}

/// Entries of a range of [`Chunks`]: the rest of the first chunk, whole chunks, the start of the
/// last one.
#[derive(Default)]
pub(super) struct Iter<'a> {
    front: slice::Iter<'a, Entry>,
    mid: slice::Iter<'a, Vec<Entry>>,
    back: slice::Iter<'a, Entry>,
}

impl<'a> Iterator for Iter<'a> {
    type Item = &'a Entry;

    fn next(&mut self) -> Option<&'a Entry> {
        loop {
            if let Some(e) = self.front.next() {
                return Some(e);
            }
            match self.mid.next() {
                Some(c) => self.front = c.iter(),
                None => return self.back.next(),
            }
        }
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        let known = self.front.len() + self.back.len();
        if self.mid.len() == 0 {
            (known, Some(known))
        } else {
            (known + self.mid.len(), None)
        }
    }
}

impl<'a> DoubleEndedIterator for Iter<'a> {
    fn next_back(&mut self) -> Option<&'a Entry> {
        loop {
            if let Some(e) = self.back.next_back() {
                return Some(e);
            }
            match self.mid.next_back() {
                Some(c) => self.back = c.iter(),
                None => return self.front.next_back(),
            }
        }
    }
}
