//! Pins on the agent's side: retention sets pinned heights aside (see
//! [`crate::retention::Policy::to_delete_unpinned`]), and whatever removes heights for another
//! reason (a rollback) refuses to take a pinned one with it. The list itself is
//! `btm_log::read_pins` / `write_pins` (`LOGDIR/pins`), which `push` also reads.
use std::collections::BTreeSet;
use std::path::Path;

use anyhow::Result;

use crate::cmd::exit::{self, Code};

/// The pinned heights of the log at `dir`.
pub fn pinned(dir: &Path) -> Result<BTreeSet<u64>> {
    Ok(crate::log::read_pins(dir)?)
}

/// Refuses `what` when it would remove a pinned height among `removed`: the message names the
/// pins and how to release them. Nothing has been changed when this fails.
pub fn refuse_removing(dir: &Path, removed: &[u64], what: &str) -> Result<()> {
    let pins = pinned(dir)?;
    let hit: Vec<u64> = removed
        .iter()
        .copied()
        .filter(|h| pins.contains(h))
        .collect();
    if hit.is_empty() {
        return Ok(());
    }
    let list: Vec<String> = hit.iter().map(u64::to_string).collect();
    Err(exit::coded(
        Code::Failure,
        format!(
            "{what} would remove pinned height{} {} of the log {}; nothing was changed. If that \
             is intended, unpin first: `btm-agent unpin {} --log {}`",
            if hit.len() > 1 { "s" } else { "" },
            list.join(", "),
            dir.display(),
            hit[0],
            dir.display()
        ),
    ))
}
