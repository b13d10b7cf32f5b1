//! `pin` and `unpin`: keep a height whatever retention says, here and offsite.
//!
//! A pinned height is never dropped by local retention (`run`, `compact --cap`, `-K`), a
//! rollback or `-C` over it is refused, and `push` publishes the pin under
//! `volumes/<name>/pins/` and never deletes the pointer of a pinned height (the pin is also
//! what keeps it offsite once remote retention would remove it). Works while the agent runs.
use std::path::{Path, PathBuf};

use anyhow::Result;

use super::exit::{self, Code};
use super::report;
use crate::log::{Log, read_pins, write_pins};

#[derive(clap::Args, Debug)]
#[command(
    after_help = "Pins are kept in LOGDIR/pins and read by every process that removes \
heights: retention (run, compact --cap, -K) sets them aside, taking no slot of --cap; a rollback \
or -C over one is refused. Each push publishes them offsite (volumes/<name>/pins/) and never \
deletes a pinned height's pointer, whatever --remote-cap says. `btm-agent unpin H --log DIR` \
releases one; `btm-agent list` marks them."
)]
pub struct PinArgs {
    /// The height to pin: the log must hold it (see `btm-agent list`).
    pub height: u64,
    /// The log the height is kept in.
    #[arg(long, env = "BTM_LOG_DIR")]
    pub log: PathBuf,
    /// Print what was done as one JSON object (`"v": 1`); errors too.
    #[arg(long)]
    pub json: bool,
}

/// Whether the log at `dir` keeps `height` now, or why not (a message that says what to do).
fn check_kept(dir: &Path, height: u64) -> Result<()> {
    let log = Log::open_read(dir)?;
    if log.heights().iter().any(|h| h.height == height) {
        return Ok(());
    }
    let why = if log.dropped_heights().contains(&height) {
        format!(
            "height {height} was already removed from the log {} by retention and cannot be \
             pinned there any more; if an offsite copy still has it (`btm-agent list --remote \
             URL`), restore it from there (`btm-agent replay --remote URL --to {height} \
             --exact`)",
            dir.display()
        )
    } else {
        format!(
            "the log {} has no height {height}; `btm-agent list --log {}` shows the heights \
             that can be pinned",
            dir.display(),
            dir.display()
        )
    };
    Err(exit::coded(Code::HeightNotFound, why))
}

/// `pin H`: adds `H` to `LOGDIR/pins`.
pub fn pin(a: PinArgs) -> Result<()> {
    check_kept(&a.log, a.height)?;
    let mut pins = read_pins(&a.log)?;
    let added = pins.insert(a.height);
    if added {
        write_pins(&a.log, &pins)?;
        // A running agent may have dropped the height between the check and the write: a
        // pin of a height the log no longer has would keep nothing, so take it back.
        if let Err(e) = check_kept(&a.log, a.height) {
            pins.remove(&a.height);
            write_pins(&a.log, &pins)?;
            return Err(e);
        }
    }
    print(&a, added, "pinned")
}

/// `unpin H`: removes `H` from `LOGDIR/pins`; retention may drop it from then on, and the next
/// push removes its pin offsite.
pub fn unpin(a: PinArgs) -> Result<()> {
    let mut pins = read_pins(&a.log)?;
    if !pins.remove(&a.height) {
        let list: Vec<String> = pins.iter().map(u64::to_string).collect();
        return Err(exit::coded(
            Code::HeightNotFound,
            format!(
                "height {} is not pinned in the log {} (pinned: {})",
                a.height,
                a.log.display(),
                if list.is_empty() {
                    "none".into()
                } else {
                    list.join(", ")
                }
            ),
        ));
    }
    write_pins(&a.log, &pins)?;
    print(&a, true, "unpinned")
}

fn print(a: &PinArgs, changed: bool, what: &str) -> Result<()> {
    let pins: Vec<u64> = read_pins(&a.log)?.into_iter().collect();
    if a.json {
        return report::print_json(serde_json::json!({
            "height": a.height, what: true, "changed": changed, "pins": pins
        }));
    }
    let already = if changed { "" } else { " (already)" };
    let after = if what == "pinned" {
        "retention keeps it here, and `btm-agent push` publishes the pin and keeps the height \
         offsite"
    } else {
        "retention may remove it from now on, here and, after the next push, offsite"
    };
    println!(
        "{what} height {} of the log {}{already}: {after}",
        a.height,
        a.log.display()
    );
    Ok(())
}
