//! `btm-agent exec -- NODE ARGS`: start a node so that its mmap stores are tracked per 4 KiB.
//!
//! On ext4 and xfs a file written in large chunks sits in 2 MiB folios, which the kernel maps
//! with one PMD; a store into a clean PMD-mapped folio makes all 2 MiB writable at once, so the
//! tracker must mark (and the cut read) the whole folio. With THP disabled for the process
//! (`PR_SET_THP_DISABLE`, inherited across fork and exec, needing no privilege) the folios are
//! mapped page by page, every store into a clean page faults, and marks stay 4 KiB. The cost is
//! the node's own anonymous memory losing transparent huge pages.
use std::{ffi::OsString, os::unix::process::CommandExt, process::Command};

use anyhow::{Context, Result, bail};
use clap::Args;

#[derive(Args, Debug)]
pub struct ExecArgs {
    /// The node and its arguments, after `--`.
    #[arg(last = true, required = true, value_name = "NODE ARGS")]
    pub command: Vec<OsString>,
}

/// Disables THP for this process and replaces it with the node; returns only on failure.
pub fn run(a: ExecArgs) -> Result<()> {
    // SAFETY: prctl with integer arguments.
    if unsafe { libc::prctl(libc::PR_SET_THP_DISABLE, 1, 0, 0, 0) } != 0 {
        bail!(
            "prctl(PR_SET_THP_DISABLE): {}: this kernel cannot disable THP per process; \
             start the node directly (its mmap stores are then tracked per 2 MiB folio)",
            std::io::Error::last_os_error()
        );
    }
    let (prog, args) = a
        .command
        .split_first()
        .context("no command given after --")?;
    let err = Command::new(prog).args(args).exec();
    Err(err).with_context(|| format!("starting {}", prog.to_string_lossy()))
}
