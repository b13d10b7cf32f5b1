//! The appender's index of stored payloads by blake3: a new piece whose bytes the log already
//! holds points at them instead of storing them again.
//!
//! One entry per payload in the log (at least one per file), so its size matters at 10^6 files:
//! the hash is the key and is not kept a second time in the value (a [`PayloadRef`] is 72
//! bytes, 32 of them the hash), and the rest is packed in 21 bytes with no padding, which takes
//! a table slot from 104 to 53 bytes. A payload whose place or lengths do not fit the packed
//! form (a log of more than 2^32 segments, a payload over 4 GiB) is not indexed: the index only
//! saves storing bytes again, so leaving one out costs space, never correctness.

use std::collections::HashMap;

use super::format::{Codec, PayloadRef};

/// blake3 of raw bytes -> where that payload is stored. See the module documentation.
#[derive(Default)]
pub(crate) struct DedupIndex(HashMap<[u8; 32], Stored>);

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

impl DedupIndex {
    /// The stored payload whose raw bytes hash to `hash`.
    pub(crate) fn get(&self, hash: &[u8; 32]) -> Option<PayloadRef> {
        self.0.get(hash).map(|&s| PayloadRef {
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
        self.0.entry(p.hash).or_insert(Stored {
            offset: p.offset,
            seg,
            stored_len,
            raw_len,
            codec: p.codec,
        });
    }

    /// Forgets every payload stored in segment `seg` at `offset` or after: a record being
    /// undone indexed them as it wrote them (one pass over the index, on that rare path only).
    pub(crate) fn forget_from(&mut self, seg: u64, offset: u64) {
        self.0
            .retain(|_, s| !(u64::from(s.seg) == seg && { s.offset } >= offset));
    }

    /// Tests: points `p.hash` at `p`, replacing what was there (to forge references).
    #[cfg(test)]
    pub(crate) fn replace(&mut self, p: &PayloadRef) {
        self.0.remove(&p.hash);
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
        let mut d = DedupIndex::default();
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
}
