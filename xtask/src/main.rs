//! Build and run helpers: `cargo xtask setup | run | test | bench | bench-offsite | bench-scale | fuzz`.
//!
//! Every command first makes sure the machine has what btm needs (idempotent: a second run
//! only checks), so the README's two commands work on a fresh machine.
mod bench;
mod dist;
mod fuzz;
mod setup;

use std::process::{Command, ExitCode};

use anyhow::{Context, Result, bail};
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "cargo xtask")]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Install what btm needs: apt packages, the pinned nightly with rust-src, bpf-linker
    /// built against LLVM 22; mount bpffs and tracefs when missing.
    Setup,
    /// Set up, build the eBPF object and the agent, and run the agent as root
    /// (through `sudo -E` when not root). Without arguments it runs `btm-agent demo`.
    Run {
        /// Build in release mode.
        #[arg(long)]
        release: bool,
        /// Arguments for btm-agent (after `--`).
        #[arg(last = true)]
        args: Vec<String>,
    },
    /// Set up, check formatting and clippy, and run every test as root.
    Test {
        /// Extra arguments for `cargo test`.
        #[arg(last = true)]
        args: Vec<String>,
    },
    /// Benchmark btm against restic, rsync, btrfs send and tar+zstd on loop volumes (as root,
    /// through `sudo -E` when not root); writes BENCHMARKS.md.
    Bench(bench::BenchArgs),
    /// Benchmark btm's offsite copy (push, replay --remote) against restic on an S3 server
    /// (moto on loopback), as root (through `sudo -E` when not root); writes
    /// BENCHMARKS-offsite.md.
    BenchOffsite(bench::offsite::OffsiteArgs),
    /// Measure how btm's costs grow with the volume (data larger than RAM, up to 10^6 files):
    /// memory, freeze, cuts, restarts, compaction; writes BENCHMARKS-scale.md. As root.
    BenchScale(bench::scale::ScaleArgs),
    /// Run every cargo-fuzz target (log, remote objects, socket protocol, configuration file)
    /// for --secs each from the committed seeds; fails on a crash or hang.
    Fuzz(fuzz::FuzzArgs),
    /// Build the release agent, its shell completions and man pages, and a .deb (cargo-deb)
    /// into target/dist/.
    Dist,
}

fn main() -> ExitCode {
    match run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("xtask: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run() -> Result<()> {
    match Cli::parse().cmd {
        Cmd::Setup => setup::all(),
        Cmd::Run { release, args } => {
            setup::all()?;
            let mut build = cargo();
            build.args(["build", "-p", "btm-agent"]);
            if release {
                build.arg("--release");
            }
            status(&mut build)?;
            let bin = format!(
                "target/{}/btm-agent",
                if release { "release" } else { "debug" }
            );
            let args = if args.is_empty() {
                vec!["demo".to_string()]
            } else {
                args
            };
            let mut cmd = if setup::is_root() {
                Command::new(&bin)
            } else {
                let mut c = Command::new("sudo");
                c.args(["-E", &bin]);
                c
            };
            cmd.args(&args);
            status(&mut cmd)
        }
        Cmd::Bench(a) => as_root("bench").unwrap_or_else(|| bench::run(a)),
        Cmd::BenchOffsite(a) => as_root("bench-offsite").unwrap_or_else(|| bench::offsite::run(a)),
        Cmd::BenchScale(a) => as_root("bench-scale").unwrap_or_else(|| bench::scale::run(a)),
        Cmd::Fuzz(a) => fuzz::run(a),
        Cmd::Dist => dist::run(),
        Cmd::Test { args } => {
            setup::all()?;
            if !setup::is_root() {
                // Tests mount loop devices and load eBPF programs.
                let exe = std::env::current_exe()?;
                let mut c = Command::new("sudo");
                c.arg("-E").arg(exe).arg("test").arg("--").args(&args);
                return status(&mut c);
            }
            status(cargo().args(["fmt", "--all", "--check"]))
                .context("formatting: run `cargo fmt --all`")?;
            // Default members: btm-ebpf only builds for the bpf target (through build.rs).
            status(cargo().args(["clippy", "--all-targets", "--", "-D", "warnings"]))?;
            status(cargo().args(["test", "--no-fail-fast"]).args(&args))
        }
    }
}

fn cargo() -> Command {
    Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()))
}

/// Sets the machine up, then, when not root, runs `cargo xtask <sub> ARGS` again through
/// `sudo -E` and returns its outcome; `None` when already root (go on here).
fn as_root(sub: &str) -> Option<Result<()>> {
    if let Err(e) = setup::all() {
        return Some(Err(e));
    }
    if setup::is_root() {
        return None;
    }
    let exe = match std::env::current_exe() {
        Ok(e) => e,
        Err(e) => return Some(Err(e.into())),
    };
    let mut c = Command::new("sudo");
    c.arg("-E").arg(exe).arg(sub).args(std::env::args().skip(2));
    Some(status(&mut c))
}

fn status(cmd: &mut Command) -> Result<()> {
    let st = cmd.status().with_context(|| format!("spawning {cmd:?}"))?;
    if !st.success() {
        bail!("{cmd:?} failed with {st}");
    }
    Ok(())
}
