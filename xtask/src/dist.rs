//! `cargo xtask dist`: the release binary, its shell completions and man pages, and a .deb,
//! all under target/dist/. The completions and pages come from running the built binary
//! (`btm-agent generate`): xtask cannot link btm-agent, whose build.rs needs the eBPF
//! toolchain. cargo-deb packages them with the units and the example configuration
//! ([package.metadata.deb] in btm-agent/Cargo.toml says where each file goes).
use std::{
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context, Result, bail};

use crate::{cargo, setup, status};

pub const CARGO_DEB_VERSION: &str = "3.8.0";

pub fn run() -> Result<()> {
    setup::all()?;
    cargo_deb()?;
    let root = workspace_root();
    status(
        cargo()
            .current_dir(&root)
            .args(["build", "--release", "-p", "btm-agent"]),
    )?;
    let bin = root.join("target/release/btm-agent");
    let dist = root.join("target/dist");
    if dist.exists() {
        std::fs::remove_dir_all(&dist).with_context(|| format!("removing {}", dist.display()))?;
    }
    let completions = dist.join("completions");
    std::fs::create_dir_all(&completions)?;
    for (shell, file) in [
        ("bash", "btm-agent.bash"),
        ("zsh", "_btm-agent"),
        ("fish", "btm-agent.fish"),
    ] {
        let script = output(Command::new(&bin).args(["generate", "completions", shell]))?;
        std::fs::write(completions.join(file), script)?;
    }
    status(
        Command::new(&bin)
            .args(["generate", "man"])
            .arg(dist.join("man")),
    )?;
    // --no-build: the binary above is the one the completions were made from.
    status(
        cargo()
            .current_dir(&root)
            .args(["deb", "-p", "btm-agent", "--no-build", "--output"])
            .arg(&dist),
    )?;
    let debs: Vec<PathBuf> = std::fs::read_dir(&dist)?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|e| e == "deb"))
        .collect();
    for d in &debs {
        let size = std::fs::metadata(d)?.len();
        eprintln!("dist: {} ({} KiB)", d.display(), size / 1024);
    }
    Ok(())
}

/// The workspace root (xtask's parent), so `cargo xtask dist` works from any directory.
fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("xtask lives in the workspace")
        .to_path_buf()
}

/// Installs cargo-deb when missing (as setup.rs installs bpf-linker).
fn cargo_deb() -> Result<()> {
    let have = cargo()
        .args(["deb", "--version"])
        .output()
        .is_ok_and(|o| o.status.success());
    if have {
        return Ok(());
    }
    eprintln!("dist: installing cargo-deb {CARGO_DEB_VERSION} (a few minutes)");
    status(cargo().args([
        "install",
        "--locked",
        "cargo-deb",
        "--version",
        CARGO_DEB_VERSION,
    ]))
}

fn output(cmd: &mut Command) -> Result<Vec<u8>> {
    let out = cmd.output().with_context(|| format!("spawning {cmd:?}"))?;
    if !out.status.success() {
        bail!(
            "{cmd:?} failed with {}: {}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(out.stdout)
}
