//! The appender's index of stored payloads by blake3: a new piece whose bytes the log already
//! holds points at them instead of storing them again.
//!
//! One entry per payload in the log (at least one per file), so its size matters at 10^6 files:
//! the hash is the key and is not kept a second time in the value (a [`PayloadRef`] is 72
//! bytes, 32 of them the hash), which takes a table slot from 104 to 72 bytes.

use std::collections::HashMap;

use super::format::{Codec, PayloadRef};

/// blake3 of raw bytes -> where that payload is stored. See the module documentation.
#[derive(Default)]
pub(crate) struct DedupIndex(HashMap<[u8; 32], Stored>);

/// A [`PayloadRef`] without its hash.
#[derive(Clone, Copy)]
struct Stored {
    seg: u64,
    offset: u64,
    stored_len: u64,
    raw_len: u64,
    codec: Codec,
}

impl DedupIndex {
    /// The stored payload whose raw bytes hash to `hash`.
    pub(crate) fn get(&self, hash: &[u8; 32]) -> Option<PayloadRef> {
        self.0.get(hash).map(|s| PayloadRef {
            seg: s.seg,
            offset: s.offset,
            stored_len: s.stored_len,
            raw_len: s.raw_len,
            codec: s.codec,
            hash: *hash,
        })
    }

    /// Indexes `p` unless a payload with its hash is indexed already (the first one stays).
    pub(crate) fn add(&mut self, p: &PayloadRef) {
        self.0.entry(p.hash).or_insert(Stored {
            seg: p.seg,
            offset: p.offset,
            stored_len: p.stored_len,
            raw_len: p.raw_len,
            codec: p.codec,
        });
    }

    /// Forgets every payload stored in segment `seg` at `offset` or after: a record being
    /// undone indexed them as it wrote them (one pass over the index, on that rare path only).
    pub(crate) fn forget_from(&mut self, seg: u64, offset: u64) {
        self.0.retain(|_, s| !(s.seg == seg && s.offset >= offset));
    }

    /// Tests: points `p.hash` at `p`, replacing what was there (to forge references).
    #[cfg(test)]
    pub(crate) fn replace(&mut self, p: &PayloadRef) {
        self.0.remove(&p.hash);
        self.add(p);
    }
}
