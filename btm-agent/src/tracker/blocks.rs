//! A set of 4 KiB block numbers kept as bit arrays per chunk of [`BLOCKS_PER_CHUNK`] blocks, the
//! layout the kernel side marks in (`btm_common::dirty`): 64 bytes per chunk touched however
//! many of its blocks are dirty, where a `BTreeSet<u64>` took tens of bytes per block (hundreds
//! of MiB for a 1 % height of a 2 TB volume).
use std::collections::BTreeMap;

use btm_common::dirty::BLOCKS_PER_CHUNK;

const WORDS: usize = (BLOCKS_PER_CHUNK / 64) as usize;

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct BlockSet {
    chunks: BTreeMap<u64, [u64; WORDS]>,
    len: u64,
}

fn split(block: u64) -> (u64, usize, u64) {
    let chunk = block / BLOCKS_PER_CHUNK;
    let bit = block % BLOCKS_PER_CHUNK;
    (chunk, (bit / 64) as usize, 1u64 << (bit % 64))
}

impl BlockSet {
    pub fn len(&self) -> u64 {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    pub fn contains(&self, block: &u64) -> bool {
        let (c, w, m) = split(*block);
        self.chunks.get(&c).is_some_and(|words| words[w] & m != 0)
    }

    /// Adds a block; true when it was not there.
    pub fn insert(&mut self, block: u64) -> bool {
        let (c, w, m) = split(block);
        let word = &mut self.chunks.entry(c).or_default()[w];
        let new = *word & m == 0;
        *word |= m;
        self.len += new as u64;
        new
    }

    /// ORs a chunk's words (bit `b` of word `w` is block `chunk * 512 + w * 64 + b`), as the
    /// kernel's dirty chunks hold them.
    pub fn add_words(&mut self, chunk: u64, bits: &[u64]) {
        if bits.iter().all(|&w| w == 0) {
            return;
        }
        let words = self.chunks.entry(chunk).or_default();
        for (have, &add) in words.iter_mut().zip(bits) {
            self.len += (add & !*have).count_ones() as u64;
            *have |= add;
        }
    }

    /// Adds every block of `first..end`.
    pub fn insert_range(&mut self, blocks: std::ops::Range<u64>) {
        let mut b = blocks.start;
        while b < blocks.end {
            let (c, w, _) = split(b);
            let bit = b % 64;
            let n = (64 - bit).min(blocks.end - b);
            let mask = if n == 64 {
                u64::MAX
            } else {
                ((1u64 << n) - 1) << bit
            };
            let word = &mut self.chunks.entry(c).or_default()[w];
            self.len += (mask & !*word).count_ones() as u64;
            *word |= mask;
            b += n;
        }
    }

    /// Adds every block of `other`.
    pub fn union(&mut self, other: BlockSet) {
        for (c, words) in other.chunks {
            self.add_words(c, &words);
        }
    }

    /// The blocks in ascending order.
    pub fn iter(&self) -> impl Iterator<Item = u64> + '_ {
        self.chunks.iter().flat_map(|(&c, words)| {
            words.iter().enumerate().flat_map(move |(w, &word)| {
                let base = c * BLOCKS_PER_CHUNK + w as u64 * 64;
                let mut v = word;
                std::iter::from_fn(move || {
                    (v != 0).then(|| {
                        let b = v.trailing_zeros() as u64;
                        v &= v - 1;
                        base + b
                    })
                })
            })
        })
    }

    /// Maximal runs of consecutive blocks, ascending: (first block, count).
    pub fn runs(&self) -> Vec<(u64, u64)> {
        let mut out: Vec<(u64, u64)> = Vec::new();
        let mut push = |first: u64, n: u64| match out.last_mut() {
            Some((f, c)) if *f + *c == first => *c += n,
            _ => out.push((first, n)),
        };
        for (&c, words) in &self.chunks {
            for (w, &word) in words.iter().enumerate() {
                let base = c * BLOCKS_PER_CHUNK + w as u64 * 64;
                let mut v = word;
                while v != 0 {
                    let start = v.trailing_zeros();
                    let len = (v >> start).trailing_ones();
                    push(base + start as u64, len as u64);
                    v = if start + len >= 64 {
                        0
                    } else {
                        v & !((1u64 << (start + len)) - 1)
                    };
                }
            }
        }
        out
    }
}

impl Extend<u64> for BlockSet {
    fn extend<I: IntoIterator<Item = u64>>(&mut self, iter: I) {
        for b in iter {
            self.insert(b);
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use proptest::prelude::*;

    use super::*;

    /// Runs of a sorted set, the obvious way.
    fn runs_of(set: &BTreeSet<u64>) -> Vec<(u64, u64)> {
        let mut out: Vec<(u64, u64)> = Vec::new();
        for &b in set {
            match out.last_mut() {
                Some((f, c)) if *f + *c == b => *c += 1,
                _ => out.push((b, 1)),
            }
        }
        out
    }

    proptest! {
        /// Whatever way blocks arrive (one by one, as chunk words, as ranges, merged from
        /// another set), the set holds exactly what a BTreeSet would.
        #[test]
        fn matches_a_btreeset(
            singles in proptest::collection::vec(0u64..5000, 0..200),
            ranges in proptest::collection::vec((0u64..5000, 0u64..700), 0..8),
            words in proptest::collection::vec((0u64..10, 0usize..8, any::<u64>()), 0..8),
            split_at in 0usize..200,
        ) {
            let (mut ours, mut other, mut model) =
                (BlockSet::default(), BlockSet::default(), BTreeSet::new());
            for (i, &b) in singles.iter().enumerate() {
                if i < split_at { ours.insert(b); } else { other.insert(b); }
                model.insert(b);
            }
            for &(s, n) in &ranges {
                ours.insert_range(s..s + n);
                model.extend(s..s + n);
            }
            for &(c, w, v) in &words {
                let mut bits = [0u64; WORDS];
                bits[w] = v;
                other.add_words(c, &bits);
                for b in 0..64 {
                    if v >> b & 1 == 1 {
                        model.insert(c * BLOCKS_PER_CHUNK + w as u64 * 64 + b);
                    }
                }
            }
            ours.union(other);
            prop_assert_eq!(ours.len(), model.len() as u64);
            prop_assert_eq!(ours.iter().collect::<Vec<_>>(), model.iter().copied().collect::<Vec<_>>());
            prop_assert_eq!(ours.runs(), runs_of(&model));
            for b in 0..5200 {
                prop_assert_eq!(ours.contains(&b), model.contains(&b));
            }
        }
    }

    #[test]
    fn a_dense_height_costs_bits_not_entries() {
        let mut s = BlockSet::default();
        s.insert_range(0..1 << 20); // 4 GiB of 4 KiB blocks
        assert_eq!(s.len(), 1 << 20);
        assert_eq!(s.chunks.len() as u64, (1 << 20) / BLOCKS_PER_CHUNK);
        assert_eq!(s.runs(), vec![(0, 1 << 20)]);
    }
}
