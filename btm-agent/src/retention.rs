//! Which heights to keep: BTM fair and fade retention.
//!
//! A [`Policy`] answers two questions, for every mode (the eBPF log, ZFS and Btrfs snapshots):
//!
//! * [`Policy::wants`]: should a cut be taken at this height at all? Only heights with
//!   `h % itv == 0` are ever kept.
//! * [`Policy::to_delete`]: given every height that exists now, which ones go?
//!
//! # The algorithms
//!
//! First, every height with `h % itv != 0` is deleted. The remaining ("aligned") heights are
//! ranked from the newest: position 0 is the highest height.
//!
//! * [`Algo::Fair`]: keep positions `0..cap`, delete the rest.
//! * [`Algo::Fade`]: with `chunk = max(cap / 10, 1)`, position `p < cap` lies in chunk
//!   `n = p / chunk`. For `n < 10` the height is kept only if it is a multiple of `itv^(n+1)`;
//!   positions `p >= 10 * chunk` (the `cap % 10` oldest slots, when `cap / 10` does not divide
//!   evenly) are kept as they are. Positions `p >= cap` are deleted. The density of kept heights
//!   thus falls by a factor of `itv` from one chunk to the next.
//!
//! # Reading of the original BTM (`ccmlm/btm`, `driver/{zfs,btrfs}.rs`, `clean_outdated_*`)
//!
//! BTM sorts the existing snapshots newest first and, for fade, takes `chunk_size = cap / STEP_CNT`
//! (`STEP_CNT = 10`), walks ten chunks of that size with denominators `itv.pow(1 + n)` and
//! deletes the members that are not multiples; the last, short chunk takes whatever is left; then
//! everything at index `>= cap` is deleted. Slots between `10 * chunk_size` and `cap` are not
//! examined, so they are kept: we do the same. BTM runs this before every new snapshot, so the
//! positions are positions among the snapshots that survived earlier rounds; the same holds here
//! because the caller passes the heights that exist now. Deliberate differences:
//!
//! * Alignment: BTM tests `(u64::MAX - h) % d == 0` (with `itv = 10` that keeps heights ending in
//!   5). The design (and what BTM's documentation promises) is `h % d == 0`, which we use.
//! * `cap < 10`: BTM's `chunk_size` is then 0, no chunk is thinned and fade degenerates to fair.
//!   Here the chunk size is at least 1, so fade still thins (chunk `n` is the single position `n`).
//! * Overflow: BTM computes `itv.pow(n + 1)`, which panics (debug) or wraps (release) once it no
//!   longer fits in the integer. Here the modulus is exact: when `itv^(n+1)` exceeds `u64::MAX`,
//!   every height `h` is below it, so `h` is a multiple only if `h == 0`. Such a chunk keeps
//!   height 0 (genesis) and nothing else. With `itv >= 85` that already happens for chunk 9.
//! * Heights that are not multiples of `itv` never exist in BTM (it skips them when snapshotting);
//!   here they may be passed in and are always deleted, and they do not take up positions.
//! * Duplicate heights in the input are counted once.

use std::collections::BTreeSet;

use serde::{Deserialize, Serialize};

/// The most heights a policy may keep (BTM's `CAP_MAX`).
pub const CAP_MAX: usize = 4096;

/// How many chunks fade splits `cap` into (BTM's `STEP_CNT`).
pub const FADE_CHUNKS: usize = 10;

/// The retention algorithm.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Algo {
    /// Keep the newest `cap` heights.
    Fair,
    /// Keep the newest `cap` heights, thinned more and more towards the old end.
    Fade,
}

/// An invalid [`Policy`].
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum PolicyError {
    /// `itv` was 0.
    #[error("invalid retention interval 0: itv must be at least 1 (1 keeps every height)")]
    ZeroItv,
    /// `cap` was outside `1..=CAP_MAX`.
    #[error("invalid retention cap {0}: cap must be between 1 and {CAP_MAX} (BTM's limit)")]
    Cap(usize),
}

/// Which heights to keep.
///
/// The fields are public for convenience; [`Policy::new`] (and deserialisation) validate them.
/// A hand-built policy with `itv == 0` behaves as `itv == 1`, one with `cap == 0` keeps nothing.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "RawPolicy")]
pub struct Policy {
    /// Only heights with `h % itv == 0` are kept (at least 1).
    pub itv: u64,
    /// The most heights kept (`1..=CAP_MAX`).
    pub cap: usize,
    /// How heights are thinned.
    pub algo: Algo,
}

#[derive(Deserialize)]
struct RawPolicy {
    itv: u64,
    cap: usize,
    algo: Algo,
}

impl TryFrom<RawPolicy> for Policy {
    type Error = PolicyError;
    fn try_from(raw: RawPolicy) -> Result<Self, PolicyError> {
        Policy::new(raw.itv, raw.cap, raw.algo)
    }
}

impl Default for Policy {
    /// BTM's defaults: every 10th height, 100 kept, fair.
    fn default() -> Self {
        Policy {
            itv: 10,
            cap: 100,
            algo: Algo::Fair,
        }
    }
}

impl Policy {
    /// A validated policy: `itv >= 1` and `1 <= cap <= CAP_MAX`.
    pub fn new(itv: u64, cap: usize, algo: Algo) -> Result<Self, PolicyError> {
        let p = Policy { itv, cap, algo };
        p.validate()?;
        Ok(p)
    }

    /// Checks the invariants [`Policy::new`] enforces.
    pub fn validate(&self) -> Result<(), PolicyError> {
        if self.itv == 0 {
            return Err(PolicyError::ZeroItv);
        }
        if self.cap == 0 || self.cap > CAP_MAX {
            return Err(PolicyError::Cap(self.cap));
        }
        Ok(())
    }

    fn itv(&self) -> u64 {
        self.itv.max(1)
    }

    /// Should a cut be taken at this height at all? (`h % itv == 0`)
    pub fn wants(&self, height: u64) -> bool {
        height.is_multiple_of(self.itv())
    }

    /// Given all existing heights (any order, duplicates allowed), the heights to delete,
    /// ascending and without duplicates. See the module documentation for the rules.
    pub fn to_delete(&self, heights: &[u64]) -> Vec<u64> {
        let mut all: Vec<u64> = heights.to_vec();
        all.sort_unstable();
        all.dedup();

        // Newest first, aligned to itv only.
        let aligned: Vec<u64> = all
            .iter()
            .rev()
            .copied()
            .filter(|&h| self.wants(h))
            .collect();
        let in_cap = &aligned[..aligned.len().min(self.cap)];

        let mut keep: Vec<u64> = match self.algo {
            Algo::Fair => in_cap.to_vec(),
            Algo::Fade => {
                let chunk = (self.cap / FADE_CHUNKS).max(1);
                let (graded, rest) = in_cap.split_at(in_cap.len().min(chunk * FADE_CHUNKS));
                let mut keep: Vec<u64> = graded
                    .chunks(chunk)
                    .zip(1u32..)
                    .flat_map(|(members, exp)| {
                        let modulus = self.itv().checked_pow(exp);
                        members
                            .iter()
                            .copied()
                            .filter(move |&h| is_multiple(h, modulus))
                    })
                    .collect();
                // BTM leaves the slots past the tenth chunk (cap % 10 of them) alone.
                keep.extend_from_slice(rest);
                keep
            }
        };
        keep.sort_unstable();
        all.retain(|h| keep.binary_search(h).is_err());
        all
    }

    /// [`Policy::to_delete`] with the `pinned` heights set aside: they are never deleted and
    /// take no slot, so pinning a height (`btm-agent pin`) pushes no other height out.
    pub fn to_delete_unpinned(&self, heights: &[u64], pinned: &BTreeSet<u64>) -> Vec<u64> {
        let free: Vec<u64> = (heights.iter().copied())
            .filter(|h| !pinned.contains(h))
            .collect();
        self.to_delete(&free)
    }

    /// The complement of [`Policy::to_delete`]: the heights kept, ascending, without duplicates.
    pub fn to_keep(&self, heights: &[u64]) -> Vec<u64> {
        let del = self.to_delete(heights);
        let mut all = heights.to_vec();
        all.sort_unstable();
        all.dedup();
        all.retain(|h| del.binary_search(h).is_err());
        all
    }
}

/// Is `h` a multiple of `modulus`, where `None` stands for a modulus above `u64::MAX`
/// (of which only 0 is a multiple among u64 values)?
fn is_multiple(h: u64, modulus: Option<u64>) -> bool {
    match modulus {
        Some(m) => h.is_multiple_of(m),
        None => h == 0,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// Straightforward reference written from the specification, position by position, with
    /// divisibility by `itv^k` checked by repeated division (no powers, so no overflow at all).
    fn reference(itv: u64, cap: usize, algo: Algo, heights: &[u64]) -> Vec<u64> {
        let uniq: std::collections::BTreeSet<u64> = heights.iter().copied().collect();
        let mut aligned: Vec<u64> = uniq.iter().copied().filter(|h| h % itv == 0).collect();
        aligned.sort_by(|a, b| b.cmp(a));
        let divisible_by_power = |h: u64, k: u32| -> bool {
            if h == 0 || itv == 1 {
                return true;
            }
            let mut x = h;
            for _ in 0..k {
                if !x.is_multiple_of(itv) {
                    return false;
                }
                x /= itv;
            }
            true
        };
        let chunk = std::cmp::max(cap / 10, 1);
        let mut kept = std::collections::BTreeSet::new();
        for (pos, &h) in aligned.iter().enumerate() {
            if pos >= cap {
                continue;
            }
            let keep = match algo {
                Algo::Fair => true,
                Algo::Fade => {
                    let n = pos / chunk;
                    if n >= 10 {
                        true
                    } else {
                        divisible_by_power(h, n as u32 + 1)
                    }
                }
            };
            if keep {
                kept.insert(h);
            }
        }
        // BTreeSet iterates in ascending order.
        uniq.into_iter().filter(|h| !kept.contains(h)).collect()
    }

    fn p(itv: u64, cap: usize, algo: Algo) -> Policy {
        Policy::new(itv, cap, algo).unwrap()
    }

    #[test]
    fn validation() {
        assert_eq!(Policy::new(0, 10, Algo::Fair), Err(PolicyError::ZeroItv));
        assert_eq!(Policy::new(1, 0, Algo::Fair), Err(PolicyError::Cap(0)));
        assert_eq!(
            Policy::new(1, 4097, Algo::Fade),
            Err(PolicyError::Cap(4097))
        );
        assert!(Policy::new(1, 4096, Algo::Fade).is_ok());
        assert!(Policy::new(u64::MAX, 1, Algo::Fair).is_ok());
        let msg = Policy::new(1, 5000, Algo::Fair).unwrap_err().to_string();
        assert!(msg.contains("4096"), "{msg}");
    }

    #[test]
    fn serde_validates() {
        let ok: Policy = serde_json::from_str(r#"{"itv":10,"cap":100,"algo":"fade"}"#).unwrap();
        assert_eq!(ok, p(10, 100, Algo::Fade));
        assert!(serde_json::from_str::<Policy>(r#"{"itv":0,"cap":100,"algo":"fair"}"#).is_err());
        assert!(serde_json::from_str::<Policy>(r#"{"itv":1,"cap":0,"algo":"fair"}"#).is_err());
        assert_eq!(
            serde_json::to_string(&p(3, 7, Algo::Fair)).unwrap(),
            r#"{"itv":3,"cap":7,"algo":"fair"}"#
        );
    }

    #[test]
    fn wants() {
        let pol = p(10, 5, Algo::Fair);
        assert!(pol.wants(0));
        assert!(pol.wants(120));
        assert!(!pol.wants(125));
        assert!(p(1, 1, Algo::Fair).wants(7));
        // A hand-built itv of 0 acts as 1 instead of dividing by zero.
        let bad = Policy {
            itv: 0,
            cap: 1,
            algo: Algo::Fair,
        };
        assert!(bad.wants(7));
        assert_eq!(bad.to_delete(&[1, 2, 3]), vec![1, 2]);
    }

    #[test]
    fn fair_examples() {
        let pol = p(10, 3, Algo::Fair);
        assert_eq!(pol.to_delete(&[]), Vec::<u64>::new());
        assert_eq!(pol.to_delete(&[5, 10, 20, 30, 40]), vec![5, 10]);
        // Any order, duplicates counted once.
        assert_eq!(pol.to_delete(&[40, 10, 30, 5, 20, 40, 10]), vec![5, 10]);
        // Unaligned heights go even when there is room; they take no slot.
        assert_eq!(pol.to_delete(&[7, 10, 13, 20]), vec![7, 13]);
        assert_eq!(pol.to_keep(&[7, 10, 13, 20]), vec![10, 20]);
    }

    #[test]
    fn fade_example_itv2_cap20() {
        // chunk = 2: positions (newest first) 0-1 need %2, 2-3 %4, 4-5 %8, 6-7 %16, 8-9 %32, ...
        let pol = p(2, 20, Algo::Fade);
        let heights: Vec<u64> = (1..=40).map(|i| 2 * i).collect(); // 2..=80
        // 80,78 | 76,74 | 72,70 | 68,66 | 64,62 | 60,58 | ... positions >= 20 (heights <= 40) go.
        assert_eq!(pol.to_keep(&heights), vec![64, 72, 76, 78, 80]);
        assert_eq!(pol.to_delete(&heights).len(), 35);
    }

    #[test]
    fn fade_cap_below_ten_uses_chunks_of_one() {
        // chunk = 1: position 0 needs %10, 1 needs %100, 2 needs %1000; beyond cap goes.
        let pol = p(10, 3, Algo::Fade);
        let heights: Vec<u64> = (1..=10).map(|i| 10 * i).collect();
        assert_eq!(pol.to_keep(&heights), vec![100]);
        // 1000 (pos 0, %10), 900 (pos 1, %100), 800 (pos 2, not %1000).
        let heights = [800, 900, 1000];
        assert_eq!(pol.to_keep(&heights), vec![900, 1000]);
        let heights = [1000, 1900, 2000];
        // 2000 (pos 0, %10), 1900 (pos 1, %100), 1000 (pos 2, %1000).
        assert_eq!(pol.to_keep(&heights), vec![1000, 1900, 2000]);
    }

    #[test]
    fn fade_keeps_btm_remainder_slots() {
        // cap 15: chunk 1, ten graded positions, then positions 10..15 kept as BTM does.
        let pol = p(10, 15, Algo::Fade);
        let heights: Vec<u64> = (1..=20).map(|i| 10 * i).collect(); // 10..=200
        assert_eq!(pol.to_keep(&heights), vec![60, 70, 80, 90, 100, 200]);
    }

    #[test]
    fn fade_steady_state_density() {
        // Run fade the way the agent does (prune after each new height) and check that the
        // result is fair within chunk 0 and sparser further back.
        let pol = p(10, 100, Algo::Fade);
        let mut live: Vec<u64> = Vec::new();
        for h in (10..=2_000_000u64).step_by(10) {
            live.push(h);
            let del = pol.to_delete(&live);
            live.retain(|x| del.binary_search(x).is_err());
        }
        assert!(live.len() <= 100);
        let newest: Vec<u64> = live.iter().rev().take(10).copied().collect();
        assert_eq!(
            newest,
            (0..10).map(|i| 2_000_000 - 10 * i).collect::<Vec<_>>()
        );
        // Oldest kept heights are aligned to high powers of 10.
        assert!(live[0].is_multiple_of(100_000), "{live:?}");
    }

    #[test]
    fn fade_overflowing_modulus_keeps_only_zero() {
        // itv = 2^32: chunk 1 (positions 1 with cap 10) needs a multiple of 2^64, which no
        // non-zero u64 is.
        let itv = 1u64 << 32;
        let pol = p(itv, 10, Algo::Fade);
        let heights = [0, itv, 2 * itv, 3 * itv];
        // Newest first: 3*itv (pos 0, %itv ok), 2*itv (pos 1, %2^64: no), itv (pos 2: no),
        // 0 (pos 3: multiple of anything).
        assert_eq!(pol.to_keep(&heights), vec![0, 3 * itv]);
        assert_eq!(
            pol.to_delete(&heights),
            reference(itv, 10, Algo::Fade, &heights)
        );
        // Maximal itv.
        let pol = p(u64::MAX, 10, Algo::Fade);
        assert_eq!(pol.to_keep(&[0, u64::MAX]), vec![0, u64::MAX]);
        assert_eq!(pol.to_keep(&[u64::MAX, 5]), vec![u64::MAX]);
    }

    #[test]
    fn pinned_heights_are_never_deleted_and_take_no_slot() {
        let pol = p(1, 2, Algo::Fair);
        let pins: BTreeSet<u64> = [1].into();
        assert_eq!(pol.to_delete_unpinned(&[1, 2, 3, 4, 5], &pins), vec![2, 3]);
        assert_eq!(pol.to_delete(&[1, 2, 3, 4, 5]), vec![1, 2, 3]);
    }

    #[test]
    fn itv_one_fade_is_fair() {
        let heights: Vec<u64> = (0..500).collect();
        let fade = p(1, 100, Algo::Fade).to_delete(&heights);
        let fair = p(1, 100, Algo::Fair).to_delete(&heights);
        assert_eq!(fade, fair);
        assert_eq!(fade, (0..400).collect::<Vec<_>>());
    }

    #[test]
    fn reference_agrees_on_examples() {
        let heights: Vec<u64> = (1..=40).map(|i| 2 * i).collect();
        assert_eq!(
            p(2, 20, Algo::Fade).to_delete(&heights),
            reference(2, 20, Algo::Fade, &heights)
        );
    }

    /// Increasing height sequences: mostly multiples of `itv` (so fade has something to thin),
    /// sometimes unaligned, starting low or near the top of u64.
    fn scenario() -> impl Strategy<Value = (u64, usize, Vec<u64>)> {
        (1u64..=20, 1usize..=4096).prop_flat_map(|(itv, cap)| {
            let start = prop_oneof![
                3 => 0u64..1_000,
                1 => (u64::MAX - 100_000_000)..(u64::MAX - 50_000_000),
            ];
            let steps = prop::collection::vec((1u64..=4, any::<bool>(), 0u64..itv), 0..=6000);
            (Just(itv), Just(cap), start, steps).prop_map(|(itv, cap, start, steps)| {
                let mut h = start;
                let mut out = Vec::with_capacity(steps.len());
                for (mult, jitter, off) in steps {
                    let step = if jitter && off > 0 { off } else { mult * itv };
                    h = h.saturating_add(step);
                    if out.last() != Some(&h) {
                        out.push(h);
                    }
                }
                (itv, cap, out)
            })
        })
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(192))]

        #[test]
        fn matches_reference((itv, cap, heights) in scenario(), fade in any::<bool>()) {
            let algo = if fade { Algo::Fade } else { Algo::Fair };
            let pol = Policy::new(itv, cap, algo).unwrap();
            let got = pol.to_delete(&heights);
            prop_assert_eq!(&got, &reference(itv, cap, algo, &heights));

            // Order of the input does not matter.
            let mut rev = heights.clone();
            rev.reverse();
            prop_assert_eq!(&pol.to_delete(&rev), &got);

            // Structural properties.
            let kept = pol.to_keep(&heights);
            prop_assert_eq!(kept.len() + got.len(), heights.len());
            prop_assert!(kept.len() <= cap);
            prop_assert!(kept.iter().all(|h| h % itv == 0));
            let newest_aligned = heights.iter().rev().find(|h| *h % itv == 0);
            if let Some(h) = newest_aligned {
                prop_assert_eq!(kept.last(), Some(h));
            }
            let fair_kept = Policy::new(itv, cap, Algo::Fair).unwrap().to_keep(&heights);
            prop_assert!(kept.iter().all(|h| fair_kept.binary_search(h).is_ok()));
        }
    }
}
