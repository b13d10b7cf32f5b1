//! Which pointers a push leaves on the remote ("Retention offsite" in docs/OPERATIONS.md).
//!
//! Without a policy of its own the remote mirrors the log: the heights the log keeps (and its
//! newest record). With one (`push --remote-cap`), the policy chooses among every height the
//! remote has a pointer for and those the push publishes now, so a height local retention and
//! compaction already removed stays restorable offsite as long as its pointer stays: its record
//! chain and payloads are what `prune` then keeps alive. Either way a pinned height's pointer
//! is never deleted, and a height the log still has gets the pointer of its current record
//! (compaction may have replaced it).

use std::collections::{BTreeSet, HashSet};
use std::sync::Arc;

use object_store::path::Path as ObjPath;

use crate::Remote;
use crate::error::{Result, fail};
use crate::push::{MASS_REMOVAL, Planned};

/// Offsite retention of its own: given every height that could be kept (any order), the
/// heights to keep. The agent passes its BTM policy (`retention::Policy::to_keep`).
#[derive(Clone)]
pub struct RemoteRetention(Arc<KeepFn>);

/// Heights that could be kept -> heights kept.
type KeepFn = dyn Fn(&[u64]) -> Vec<u64> + Send + Sync;

impl RemoteRetention {
    pub fn new(keep: impl Fn(&[u64]) -> Vec<u64> + Send + Sync + 'static) -> RemoteRetention {
        RemoteRetention(Arc::new(keep))
    }
}

impl std::fmt::Debug for RemoteRetention {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("RemoteRetention(..)")
    }
}

/// What a push ends with.
pub(crate) struct Retained {
    /// Heights that keep a pointer.
    pub heights: BTreeSet<u64>,
    /// Pointers (height, record) the push writes from the log (or finds already there).
    pub publish: HashSet<(u64, [u8; 32])>,
    /// Every pointer left at the end: `publish`, and the existing pointers of kept heights
    /// the log no longer publishes (dropped or compacted away locally).
    pub keep: HashSet<(u64, [u8; 32])>,
}

/// The records the log keeps a height for: kept heights, and the newest record (which the log
/// keeps reachable even when retention dropped it).
fn wanted(plan: &[Planned]) -> impl Iterator<Item = &Planned> {
    let last = plan.len().saturating_sub(1);
    plan.iter()
        .enumerate()
        .filter(move |(i, p)| !p.dropped || *i == last)
        .map(|(_, p)| p)
}

/// The pointers to leave, given the log's `plan`, the remote's `existing` pointers, the log's
/// `pins` and the remote policy, if any.
pub(crate) fn retained(
    plan: &[Planned],
    existing: &[(u64, [u8; 32], ObjPath)],
    pins: &BTreeSet<u64>,
    policy: Option<&RemoteRetention>,
) -> Retained {
    let from_log: Vec<&Planned> = wanted(plan).collect();
    let mut heights: BTreeSet<u64> = match policy {
        None => from_log.iter().map(|p| p.height).collect(),
        Some(keep) => {
            // Heights above the log's newest belong to a history it rolled back: they go.
            let newest = plan.last().map_or(u64::MAX, |p| p.height);
            // Pinned heights are kept anyway and take no slot (as in local retention).
            let mut candidates: Vec<u64> = (existing.iter())
                .map(|(h, _, _)| *h)
                .filter(|&h| h <= newest)
                .chain(from_log.iter().map(|p| p.height))
                .filter(|h| !pins.contains(h))
                .collect();
            candidates.sort_unstable();
            candidates.dedup();
            let mut kept: BTreeSet<u64> = keep.0(&candidates).into_iter().collect();
            // The newest height always stays, so the remote never ends up with nothing.
            kept.extend(plan.last().map(|p| p.height));
            kept
        }
    };
    heights.extend(pins);
    let publish: HashSet<(u64, [u8; 32])> = (from_log.iter())
        .filter(|p| heights.contains(&p.height))
        .map(|p| (p.height, p.key))
        .collect();
    let published: HashSet<u64> = publish.iter().map(|(h, _)| *h).collect();
    let keep = (existing.iter())
        .filter(|(h, _, _)| heights.contains(h) && !published.contains(h))
        .map(|(h, k, _)| (*h, *k))
        .chain(publish.iter().copied())
        .collect();
    Retained {
        heights,
        publish,
        keep,
    }
}

impl Retained {
    /// Refuses a push that would remove most of the remote's heights (see [`MASS_REMOVAL`]).
    pub(crate) fn check_removals(
        &self,
        existing: &[(u64, [u8; 32], ObjPath)],
        remote: &Remote,
        name: &str,
    ) -> Result<()> {
        let remote_heights: HashSet<u64> = existing.iter().map(|(h, _, _)| *h).collect();
        let mut gone: Vec<u64> = (remote_heights.iter())
            .filter(|h| !self.heights.contains(h))
            .copied()
            .collect();
        gone.sort_unstable();
        if gone.len() > MASS_REMOVAL && gone.len() * 2 > remote_heights.len() {
            fail!(
                Refused,
                "this push would remove {} of the {} heights of {name:?} on {} ({}..={}) because \
                 the log no longer has them or remote retention (--remote-cap) does not keep \
                 them; nothing was changed. If that is intended (a rollback, a new retention \
                 policy), push with --allow-removals",
                gone.len(),
                remote_heights.len(),
                remote.url(),
                gone[0],
                gone[gone.len() - 1]
            );
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A log whose records are `heights`, those in `dropped` dropped; record keys are
    /// `[height + generation; 32]` (a compaction changes them).
    fn plan(heights: &[u64], dropped: &[u64], generation: u8) -> Vec<Planned> {
        (heights.iter())
            .map(|&h| Planned {
                key: [h as u8 + generation; 32],
                height: h,
                time_unix_ms: h,
                dropped: dropped.contains(&h),
            })
            .collect()
    }

    fn existing(heights: &[u64], generation: u8) -> Vec<(u64, [u8; 32], ObjPath)> {
        (heights.iter())
            .map(|&h| {
                (
                    h,
                    [h as u8 + generation; 32],
                    ObjPath::from(format!("p{h}")),
                )
            })
            .collect()
    }

    fn newest(n: usize) -> RemoteRetention {
        RemoteRetention::new(move |hs| hs[hs.len().saturating_sub(n)..].to_vec())
    }

    fn heights(r: &Retained) -> Vec<u64> {
        r.heights.iter().copied().collect()
    }

    #[test]
    fn without_a_policy_the_log_is_mirrored_and_pins_are_kept() {
        let p = plan(&[1, 2, 3, 4], &[1, 2, 4], 0);
        let r = retained(&p, &existing(&[1, 2, 3], 0), &BTreeSet::new(), None);
        // Kept heights and the newest record, even dropped.
        assert_eq!(heights(&r), vec![3, 4]);
        assert_eq!(r.keep.len(), 2);
        let r = retained(&p, &existing(&[1, 2, 3], 0), &[1].into(), None);
        assert_eq!(heights(&r), vec![1, 3, 4]);
        assert!(r.keep.contains(&(1, [1; 32])), "the pinned pointer stays");
    }

    #[test]
    fn a_policy_chooses_among_remote_and_log_heights_and_keeps_the_newest() {
        // The log kept 5 and 6 only (compaction folded 1..=4 away); the remote has 1..=5.
        let p = plan(&[5, 6], &[], 10);
        let ex = existing(&[1, 2, 3, 4, 5], 0);
        let r = retained(&p, &ex, &BTreeSet::new(), Some(&newest(4)));
        assert_eq!(heights(&r), vec![3, 4, 5, 6]);
        // 3 and 4 keep their old pointers; 5 gets its new record's, the old one goes.
        assert!(r.keep.contains(&(3, [3; 32])) && r.keep.contains(&(4, [4; 32])));
        assert!(r.keep.contains(&(5, [15; 32])) && !r.keep.contains(&(5, [5; 32])));
        assert_eq!(r.publish.len(), 2);
        // A policy that wants none of them still leaves the newest height.
        let none = RemoteRetention::new(|_| Vec::new());
        assert_eq!(
            heights(&retained(&p, &ex, &BTreeSet::new(), Some(&none))),
            vec![6]
        );
        // Pinned heights take no slot.
        let r = retained(&p, &ex, &[1].into(), Some(&newest(2)));
        assert_eq!(heights(&r), vec![1, 5, 6]);
    }
}
