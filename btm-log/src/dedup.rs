//! The appender's index of stored payloads by blake3: a new piece whose bytes the log already
//! holds points at them instead of storing them again.
//!
//! Its size matters: a log holds at least one payload per file, and more with every height. So
//! the hash is the key and is not kept a second time in the value (a [`PayloadRef`] is 72
//! bytes, 32 of them the hash), and the rest is packed in 21 bytes with no padding, which takes
//! a table slot from 104 to 53 bytes. A payload whose place or lengths do not fit the packed
//! form (a log of more than 2^32 segments, a payload over 4 GiB) is not indexed.
//!
//! And it is bounded: it holds the payloads stored or found most recently, in two generations
//! of equal size (`BTM_DEDUP_INDEX_MIB`, 32 MiB for both by default). When the young one is
//! full, the old one is forgotten and the young one becomes old; a payload found in the old one moves back
//! to the young one, so what is met at every height (the same bytes written again and again)
//! stays. Indexing every payload of the log cost 108 MiB after a baseline of 10^6 files and
//! grew with every height after it. The index only saves storing bytes again: a payload left
//! out or forgotten costs space, never correctness.

use std::collections::HashMap;

use super::format::{Codec, PayloadRef};

/// blake3 of raw bytes -> where that payload is stored. See the module documentation.
pub(crate) struct DedupIndex {
    young: HashMap<[u8; 32], Stored>,
    old: HashMap<[u8; 32], Stored>,
    per_generation: usize,
}

/// A [`PayloadRef`] without its hash, packed (no padding: 21 bytes).
#[derive(Clone, Copy)]
#[repr(C, packed)]
struct Stored {
    offset: u64,
    seg: u32,
    stored_len: u32,
    raw_len: u32,
    codec: Codec,
}

const _: () = assert!(std::mem::size_of::<([u8; 32], Stored)>() == 53);

/// Bytes a table slot takes: the entry plus the table's control byte.
const SLOT: usize = std::mem::size_of::<([u8; 32], Stored)>() + 1;

/// Memory the index may take by default (both generations).
pub(crate) const DEFAULT_BUDGET: usize = 32 << 20;

impl DedupIndex {
    /// An index whose two generations together take at most `bytes` (at least 28 entries
    /// each). A generation is full at 7/8 of a power-of-two number of slots, where the table
    /// would otherwise double.
    pub(crate) fn with_budget(bytes: usize) -> Self {
        let slots = (bytes / 2 / SLOT).max(32);
        let slots = if slots.is_power_of_two() {
            slots
        } else {
            slots.next_power_of_two() / 2
        };
        DedupIndex {
            young: HashMap::new(),
            old: HashMap::new(),
            per_generation: slots / 8 * 7,
        }
    }

    /// Entries a generation holds before it is turned over.
    #[cfg(test)]
    fn per_generation(&self) -> usize {
        self.per_generation
    }

    /// Entries held now (both generations).
    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.young.len() + self.old.len()
    }

    /// The stored payload whose raw bytes hash to `hash` (found in the old generation, it
    /// moves to the young one).
    pub(crate) fn get(&mut self, hash: &[u8; 32]) -> Option<PayloadRef> {
        let s = match self.young.get(hash) {
            Some(&s) => s,
            None => {
                let s = self.old.remove(hash)?;
                self.insert_young(*hash, s);
                s
            }
        };
        Some(PayloadRef {
            seg: s.seg.into(),
            offset: s.offset,
            stored_len: s.stored_len.into(),
            raw_len: s.raw_len.into(),
            codec: s.codec,
            hash: *hash,
        })
    }

    /// Indexes `p` unless a payload with its hash is indexed already (the first one stays).
    /// Left out when it does not fit the packed form (see the module documentation).
    pub(crate) fn add(&mut self, p: &PayloadRef) {
        let (Ok(seg), Ok(stored_len), Ok(raw_len)) = (
            u32::try_from(p.seg),
            u32::try_from(p.stored_len),
            u32::try_from(p.raw_len),
        ) else {
            return;
        };
        if self.young.contains_key(&p.hash) || self.old.contains_key(&p.hash) {
            return;
        }
        let s = Stored {
            offset: p.offset,
            seg,
            stored_len,
            raw_len,
            codec: p.codec,
        };
        self.insert_young(p.hash, s);
    }

    fn insert_young(&mut self, hash: [u8; 32], s: Stored) {
        if self.young.len() >= self.per_generation {
            // The old generation's memory goes back before the young one grows again.
            self.old = std::mem::take(&mut self.young);
        }
        self.young.insert(hash, s);
    }

    /// Forgets every payload stored in segment `seg` at `offset` or after: a record being
    /// undone indexed them as it wrote them (one pass over the index, on that rare path only).
    pub(crate) fn forget_from(&mut self, seg: u64, offset: u64) {
        for g in [&mut self.young, &mut self.old] {
            g.retain(|_, s| !(u64::from(s.seg) == seg && { s.offset } >= offset));
        }
    }

    /// Tests: points `p.hash` at `p`, replacing what was there (to forge references).
    #[cfg(test)]
    pub(crate) fn replace(&mut self, p: &PayloadRef) {
        self.young.remove(&p.hash);
        self.old.remove(&p.hash);
        self.add(p);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(n: u8, seg: u64, stored_len: u64) -> PayloadRef {
        PayloadRef {
            seg,
            offset: u64::MAX - 7,
            stored_len,
            raw_len: 4096,
            codec: Codec::Zstd,
            hash: [n; 32],
        }
    }

    #[test]
    fn packed_entries_give_back_the_reference_and_what_does_not_fit_is_left_out() {
        let mut d = DedupIndex::with_budget(DEFAULT_BUDGET);
        let a = p(1, u64::from(u32::MAX), u64::from(u32::MAX));
        d.add(&a);
        assert_eq!(d.get(&a.hash), Some(a));
        // The first stays.
        d.add(&PayloadRef { seg: 2, ..a });
        assert_eq!(d.get(&a.hash), Some(a));
        for big in [p(2, 1 << 32, 100), p(3, 1, 1 << 32)] {
            d.add(&big);
            assert_eq!(d.get(&big.hash), None);
        }
        d.forget_from(u64::from(u32::MAX), 0);
        assert_eq!(d.get(&a.hash), None);
    }

    fn nth(i: u32) -> PayloadRef {
        let mut hash = [0; 32];
        hash[..4].copy_from_slice(&i.to_le_bytes());
        PayloadRef {
            offset: u64::from(i) * 4096,
            hash,
            ..p(0, 1, 100)
        }
    }

    #[test]
    fn memory_is_bounded_and_what_is_met_again_stays() {
        let mut d = DedupIndex::with_budget(64 * SLOT);
        // 64 slots: two generations of 32 slots, 28 entries each.
        assert_eq!(d.per_generation(), 28);
        let zero = nth(u32::MAX);
        d.add(&zero);
        for i in 0..1000 {
            d.add(&nth(i));
            // Met at every height: found, so it moves to the young generation each time.
            assert_eq!(d.get(&zero.hash), Some(zero), "after {i}");
            assert!(d.len() <= 2 * d.per_generation());
            // No generation ever grows beyond the slots it started with.
            assert!(d.young.capacity() <= 28 && d.old.capacity() <= 28);
        }
        // The most recent entries are there, the oldest are forgotten.
        assert_eq!(d.get(&nth(999).hash), Some(nth(999)));
        assert_eq!(d.get(&nth(0).hash), None);
        // The default budget holds the 32 MiB it names.
        let d = DedupIndex::with_budget(DEFAULT_BUDGET);
        assert!(2 * (d.per_generation() / 7 * 8) * SLOT <= DEFAULT_BUDGET);
        assert!(4 * (d.per_generation() / 7 * 8) * SLOT > DEFAULT_BUDGET);
    }

    #[test]
    fn an_undone_record_is_forgotten_in_both_generations() {
        let mut d = DedupIndex::with_budget(64 * SLOT);
        for i in 0..40 {
            d.add(&nth(i));
        }
        assert!(!d.old.is_empty() && !d.young.is_empty());
        // nth(i) is at offset i * 4096 of segment 1.
        d.forget_from(1, 20 * 4096);
        assert_eq!(d.get(&nth(19).hash), Some(nth(19)));
        for i in 20..40 {
            assert_eq!(d.get(&nth(i).hash), None);
        }
    }
}
