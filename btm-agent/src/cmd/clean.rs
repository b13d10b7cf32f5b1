//! BTM's `-C`: remove every kept height. It asks first (or takes `--yes`), and removes only
//! what btm wrote: the log's own files, or the volume's height snapshots, never other files a
//! log directory may share with.
use std::io::{BufRead, IsTerminal, Write};
use std::path::Path;

use anyhow::{Context, Result};

use super::exit;

/// Files and directories a log directory holds that btm wrote (besides `seg-<n>.btm`).
const LOG_FILES: &[&str] = &[
    "dropped",
    "dropped.tmp",
    "resume.state",
    "resume.state.tmp",
    "index.state",
    "index.state.tmp",
    "remote-id",
    // Only when it pins nothing (comments): -C refuses while heights are pinned.
    "pins",
    "pins.tmp",
    "compact.new",
    "compact.ready",
];
/// Removed last, after the log is closed.
const LOCK_FILES: &[&str] = &["lock", "readers.lock"];

fn is_segment(name: &str) -> bool {
    name.strip_prefix("seg-")
        .and_then(|n| n.strip_suffix(".btm"))
        .is_some_and(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()))
}

/// Goes on when `yes`, or when a person at the terminal answers y; otherwise a usage error
/// that says how to confirm.
pub fn confirm(what: &str, yes: bool) -> Result<()> {
    if yes {
        return Ok(());
    }
    if !std::io::stdin().is_terminal() {
        return Err(exit::usage(format!(
            "-C would {what}; there is no terminal to ask, so pass --yes to confirm"
        )));
    }
    eprint!("{what}? [y/N] ");
    std::io::stderr().flush().ok();
    let mut answer = String::new();
    std::io::stdin().lock().read_line(&mut answer)?;
    if matches!(answer.trim(), "y" | "Y" | "yes") {
        Ok(())
    } else {
        Err(exit::usage("not confirmed; nothing was removed"))
    }
}

/// Removes every height of the log at `dir`: its segments and state files, then its locks,
/// then the directory if nothing else is in it.
pub fn clean_log(dir: &Path, yes: bool) -> Result<()> {
    // Holding the appender lock proves no agent is writing.
    let log = super::logs::open_existing(dir)?;
    let n = log.heights().len();
    let all: Vec<u64> = log.heights().iter().map(|h| h.height).collect();
    crate::pins::refuse_removing(dir, &all, "-C")?;
    confirm(
        &format!("remove all {n} heights of the log {}", dir.display()),
        yes,
    )?;
    let mut others = 0;
    for e in std::fs::read_dir(dir)? {
        let e = e?;
        let name = e.file_name();
        let name = name.to_string_lossy();
        let path = e.path();
        if is_segment(&name) || LOG_FILES.contains(&name.as_ref()) {
            if e.file_type()?.is_dir() {
                std::fs::remove_dir_all(&path)
            } else {
                std::fs::remove_file(&path)
            }
            .with_context(|| format!("removing {}", path.display()))?;
        } else if !LOCK_FILES.contains(&name.as_ref()) {
            others += 1;
        }
    }
    drop(log);
    for f in LOCK_FILES {
        let _ = std::fs::remove_file(dir.join(f));
    }
    if others == 0 {
        let _ = std::fs::remove_dir(dir);
        println!("removed {n} heights ({})", dir.display());
    } else {
        println!(
            "removed {n} heights ({}); left {others} other entries there, which btm did not write",
            dir.display()
        );
    }
    Ok(())
}

/// Deletes every height snapshot of a native volume.
pub fn clean_native(volume: &Path, yes: bool) -> Result<()> {
    let b = crate::snapshot::detect(volume)?.ok_or_else(|| {
        exit::usage(format!(
            "{} has no native snapshots; pass --log LOGDIR for a log",
            volume.display()
        ))
    })?;
    let hs = b.list()?;
    confirm(
        &format!(
            "delete all {} height snapshots of {}",
            hs.len(),
            b.describe()
        ),
        yes,
    )?;
    b.delete(&hs)?;
    println!("removed {} snapshots of {}", hs.len(), b.describe());
    Ok(())
}

/// BTM's `-K N`: keeps the newest `n` heights and removes the others. In the log they are
/// removed and compacted away at once (as `compact --cap N`, which needs the agent stopped;
/// `compact --dry-run --cap N` shows what goes); native snapshots are deleted.
pub fn keep_newest(log: Option<&Path>, volume: Option<&Path>, n: usize) -> Result<()> {
    if n == 0 {
        return Err(exit::usage(
            "-K 0 would keep nothing: use -C to remove every height",
        ));
    }
    if let Some(dir) = log {
        return super::logs::compact(super::logs::CompactArgs {
            log: dir.to_path_buf(),
            cap: Some(n),
            itv: 1,
            algo: crate::retention::Algo::Fair,
            dry_run: false,
            json: false,
        });
    }
    let Some(volume) = volume else {
        return Err(exit::usage(
            "-K needs --log LOGDIR or -p VOLUME (native snapshots)",
        ));
    };
    let b = crate::snapshot::detect(volume)?.ok_or_else(|| {
        exit::usage(format!(
            "{} has no native snapshots; pass --log LOGDIR for a log",
            volume.display()
        ))
    })?;
    let mut hs = b.list()?;
    hs.sort_unstable();
    let old = &hs[..hs.len().saturating_sub(n)];
    b.delete(old)?;
    println!(
        "removed {} snapshots of {}, kept the newest {}",
        old.len(),
        b.describe(),
        hs.len() - old.len()
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_segment_names_are_segments() {
        assert!(is_segment("seg-00000001.btm"));
        for n in [
            "seg-.btm",
            "seg-1.btm.bak",
            "seg-x1.btm",
            "notes.txt",
            "seg-1",
        ] {
            assert!(!is_segment(n), "{n}");
        }
    }
}
