//! A file's pieces: start offset -> [`Piece`], sorted, with the part of `BTreeMap`'s API the
//! fold, replay and diff use.
//!
//! Why not a `BTreeMap`: its first leaf reserves room for 11 entries, about 1 KiB, and most files
//! of a node's data directory have one piece (10^6 files cost 1 GiB in the log's tip state, and
//! compaction holds copies). Few pieces are kept in a sorted boxed slice of exactly their number,
//! so a one-piece file costs the piece itself; the map is 16 bytes (a `Vec` or a `BTreeMap` would
//! be 24, and every inode of the state's file table carries one). A file with many pieces (a
//! mmap'd database file can have millions of 4 KiB ones) moves to sorted chunks ([`chunks`])
//! above [`LARGE`] pieces, so an insert in the middle moves at most one chunk instead of the tail
//! of a long slice; it moves back at [`SMALL`]. Which of the two holds the pieces is invisible:
//! equality, order and iteration are the map's.

use std::fmt;
use std::ops::{Bound, RangeBounds};

use super::state::Piece;
use chunks::Chunks;

mod chunks;

/// Above this many pieces, a file's pieces move to chunks (a sorted insert into the slice then
/// copies at most this many 96-byte entries).
pub const LARGE: usize = 64;
/// At or below this many, they move back to a `Vec` (well below [`LARGE`], so a file hovering
/// around the limit does not move back and forth).
pub const SMALL: usize = 16;

/// Start offset -> piece, in offset order. See the module documentation.
#[derive(Clone, Default)]
pub struct PieceMap(Repr);

#[derive(Clone)]
enum Repr {
    /// Sorted by start, unique starts, at most [`LARGE`] entries, no spare room.
    Small(Box<[(u64, Piece)]>),
    /// Boxed: keeps the map at 16 bytes (a file with many pieces pays 32 more).
    Large(Box<Chunks>),
}

const _: () = assert!(std::mem::size_of::<PieceMap>() == 16);

impl Default for Repr {
    fn default() -> Self {
        Repr::Small(Box::default())
    }
}

impl PieceMap {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn len(&self) -> usize {
        match &self.0 {
            Repr::Small(v) => v.len(),
            Repr::Large(m) => m.len(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub fn get_mut(&mut self, start: &u64) -> Option<&mut Piece> {
        match &mut self.0 {
            Repr::Small(v) => {
                let i = v.binary_search_by_key(start, |e| e.0).ok()?;
                Some(&mut v[i].1)
            }
            Repr::Large(m) => m.get_mut(*start),
        }
    }

    /// Puts `piece` at `start`, returning the piece it replaces (as `BTreeMap::insert`).
    pub fn insert(&mut self, start: u64, piece: Piece) -> Option<Piece> {
        let b = match &mut self.0 {
            Repr::Small(b) => b,
            Repr::Large(m) => return m.insert(start, piece),
        };
        let i = match b.binary_search_by_key(&start, |e| e.0) {
            Ok(i) => return Some(std::mem::replace(&mut b[i].1, piece)),
            Err(i) => i,
        };
        let mut v = std::mem::take(b).into_vec();
        if v.len() == LARGE {
            v.insert(i, (start, piece));
            self.0 = Repr::Large(Box::new(Chunks::from_sorted(v)));
            return None;
        }
        // Exactly one more (a realloc, often in place): at most LARGE entries are copied.
        v.reserve_exact(1);
        v.insert(i, (start, piece));
        *b = v.into_boxed_slice();
        None
    }

    /// Takes out the piece at `start` (as `BTreeMap::remove`).
    pub fn remove(&mut self, start: &u64) -> Option<Piece> {
        match &mut self.0 {
            Repr::Small(b) => {
                let i = b.binary_search_by_key(start, |e| e.0).ok()?;
                let mut v = std::mem::take(b).into_vec();
                let (_, p) = v.remove(i);
                *b = v.into_boxed_slice();
                Some(p)
            }
            Repr::Large(m) => {
                let p = m.remove(*start)?;
                self.shrink();
                Some(p)
            }
        }
    }

    /// Takes out the pieces whose start lies in `range`, in order (a punch, a truncation). Panics
    /// where [`PieceMap::range`] does.
    pub fn take_range<R: RangeBounds<u64>>(&mut self, range: R) -> Vec<(u64, Piece)> {
        let (lo, hi) = (range.start_bound(), range.end_bound());
        check_bounds(lo, hi);
        match &mut self.0 {
            Repr::Small(b) => {
                let (from, to) = small_bounds(b, lo, hi);
                if from == to {
                    return Vec::new();
                }
                let mut v = std::mem::take(b).into_vec();
                let out = v.drain(from..to).collect();
                *b = v.into_boxed_slice();
                out
            }
            Repr::Large(m) => {
                let out = m.take_range(lo, hi);
                self.shrink();
                out
            }
        }
    }

    /// Back to a slice once chunks hold [`SMALL`] pieces or fewer.
    fn shrink(&mut self) {
        if let Repr::Large(m) = &mut self.0
            && m.len() <= SMALL
        {
            self.0 = Repr::Small(std::mem::take(&mut **m).into_sorted().into_boxed_slice());
        }
    }

    /// The pieces whose start lies in `range`, in order, from either end. Panics where
    /// `BTreeMap::range` does (start above end, or equal and both excluded).
    pub fn range<R: RangeBounds<u64>>(&self, range: R) -> Iter<'_> {
        let (lo, hi) = (range.start_bound(), range.end_bound());
        check_bounds(lo, hi);
        match &self.0 {
            Repr::Small(v) => {
                let (from, to) = small_bounds(v, lo, hi);
                Iter(IterRepr::Small(v[from..to].iter()))
            }
            Repr::Large(m) => Iter(IterRepr::Large(m.range(lo, hi))),
        }
    }

    /// Every (start, piece) in order.
    pub fn iter(&self) -> Iter<'_> {
        self.range(..)
    }

    /// True when the pieces are held in chunks (tests check both are reached), after checking
    /// the chunks' invariants.
    #[cfg(test)]
    pub(crate) fn is_large(&self) -> bool {
        match &self.0 {
            Repr::Large(m) => {
                m.check();
                true
            }
            Repr::Small(_) => false,
        }
    }

    /// Every piece in order of start.
    pub fn values(&self) -> impl DoubleEndedIterator<Item = &Piece> + '_ {
        self.iter().map(|(_, p)| p)
    }
}

/// `BTreeMap::range`'s refusals, so both representations fail alike.
fn check_bounds(lo: Bound<&u64>, hi: Bound<&u64>) {
    match (lo, hi) {
        (Bound::Excluded(s), Bound::Excluded(e)) if s == e => {
            panic!("range start and end are equal and excluded in PieceMap")
        }
        (Bound::Included(s) | Bound::Excluded(s), Bound::Included(e) | Bound::Excluded(e))
            if s > e =>
        {
            panic!("range start is greater than range end in PieceMap")
        }
        _ => {}
    }
}

/// The indices of a sorted slice of entries that lie between the bounds (`from <= to`).
fn small_bounds(v: &[(u64, Piece)], lo: Bound<&u64>, hi: Bound<&u64>) -> (usize, usize) {
    let from = match lo {
        Bound::Included(s) => v.partition_point(|e| e.0 < *s),
        Bound::Excluded(s) => v.partition_point(|e| e.0 <= *s),
        Bound::Unbounded => 0,
    };
    let to = match hi {
        Bound::Included(e) => v.partition_point(|x| x.0 <= *e),
        Bound::Excluded(e) => v.partition_point(|x| x.0 < *e),
        Bound::Unbounded => v.len(),
    };
    (from, to.max(from))
}

/// Iterator over (start, piece) pairs of a [`PieceMap`], from either end.
pub struct Iter<'a>(IterRepr<'a>);

enum IterRepr<'a> {
    Small(std::slice::Iter<'a, (u64, Piece)>),
    Large(chunks::Iter<'a>),
}

impl<'a> Iterator for Iter<'a> {
    type Item = (&'a u64, &'a Piece);

    fn next(&mut self) -> Option<Self::Item> {
        match &mut self.0 {
            IterRepr::Small(i) => i.next().map(|(s, p)| (s, p)),
            IterRepr::Large(i) => i.next().map(|(s, p)| (s, p)),
        }
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        match &self.0 {
            IterRepr::Small(i) => i.size_hint(),
            IterRepr::Large(i) => i.size_hint(),
        }
    }
}

impl DoubleEndedIterator for Iter<'_> {
    fn next_back(&mut self) -> Option<Self::Item> {
        match &mut self.0 {
            IterRepr::Small(i) => i.next_back().map(|(s, p)| (s, p)),
            IterRepr::Large(i) => i.next_back().map(|(s, p)| (s, p)),
        }
    }
}

impl std::iter::FusedIterator for Iter<'_> {}

impl<'a> IntoIterator for &'a PieceMap {
    type Item = (&'a u64, &'a Piece);
    type IntoIter = Iter<'a>;

    fn into_iter(self) -> Iter<'a> {
        self.iter()
    }
}

impl FromIterator<(u64, Piece)> for PieceMap {
    fn from_iter<I: IntoIterator<Item = (u64, Piece)>>(iter: I) -> Self {
        let mut m = PieceMap::new();
        for (s, p) in iter {
            m.insert(s, p);
        }
        m
    }
}

impl PartialEq for PieceMap {
    fn eq(&self, other: &Self) -> bool {
        self.len() == other.len() && self.iter().eq(other.iter())
    }
}

impl Eq for PieceMap {}

impl fmt::Debug for PieceMap {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_map().entries(self.iter()).finish()
    }
}

#[cfg(test)]
mod tests;
