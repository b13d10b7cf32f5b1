//! `cargo xtask fuzz`: every cargo-fuzz target under `fuzz/` for a time budget each, starting
//! from the committed seeds (`fuzz/seeds/<target>`) and growing a local corpus
//! (`fuzz/corpus/<target>`, not committed). A crash or hang fails the run and names the input
//! libFuzzer saved under `fuzz/artifacts/<target>/`.
use std::path::Path;
use std::process::Command;
use std::time::Instant;

use anyhow::{Context, Result, bail};

use crate::setup::{self, EBPF_TOOLCHAIN};

/// The targets, in the order they run (cheap decoders first).
pub const TARGETS: &[&str] = &[
    "log_headers",
    "log_meta",
    "log_payload",
    "protocol",
    "remote_objects",
    "config_file",
    "log_segment",
    "log_forged",
];

#[derive(clap::Args)]
pub struct FuzzArgs {
    /// Seconds per target.
    #[arg(long, default_value_t = 600)]
    secs: u64,
    /// Only these targets (repeat the flag; default: all).
    #[arg(long = "target", value_parser = clap::builder::PossibleValuesParser::new(TARGETS))]
    targets: Vec<String>,
    /// Rewrite the committed seeds from real data (fuzz/src/seeds.rs) and exit.
    #[arg(long)]
    seed: bool,
}

pub fn run(a: FuzzArgs) -> Result<()> {
    setup::nightly()?;
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz");
    if a.seed {
        return crate::status(nightly(&root).args(["run", "--bin", "seeds"]));
    }
    cargo_fuzz()?;
    let targets: Vec<&str> = if a.targets.is_empty() {
        TARGETS.to_vec()
    } else {
        a.targets.iter().map(String::as_str).collect()
    };
    crate::status(nightly(&root).args(["fuzz", "build", "-O"]))
        .context("building the fuzz targets")?;
    let mut table = Vec::new();
    for t in targets {
        let corpus = root.join("corpus").join(t);
        std::fs::create_dir_all(&corpus)?;
        let started = Instant::now();
        let out = nightly(&root)
            .args(["fuzz", "run", "-O", t])
            .arg(&corpus)
            .arg(root.join("seeds").join(t))
            .args([
                "--",
                &format!("-max_total_time={}", a.secs),
                "-timeout=10",
                "-rss_limit_mb=2048",
                "-print_final_stats=1",
            ])
            .output()
            .with_context(|| format!("running fuzz target {t}"))?;
        let log = String::from_utf8_lossy(&out.stderr);
        let runs = stat(&log, "stat::number_of_executed_units:");
        let cov = log
            .lines()
            .rev()
            .find_map(|l| {
                l.split_once(" cov: ")
                    .map(|(_, r)| r.split_whitespace().next())
            })
            .flatten()
            .unwrap_or("?")
            .to_string();
        let secs = started.elapsed().as_secs();
        eprintln!("fuzz: {t}: {runs} executions in {secs} s, coverage {cov}");
        if !out.status.success() {
            let tail: Vec<&str> = log.lines().rev().take(40).collect();
            eprintln!("{}", tail.into_iter().rev().collect::<Vec<_>>().join("\n"));
            bail!("fuzz target {t} failed (the input is under fuzz/artifacts/{t}/)");
        }
        table.push((t, runs, secs, cov));
    }
    println!("| target | executions | seconds | coverage (edges) |\n|---|---:|---:|---:|");
    for (t, runs, secs, cov) in table {
        println!("| {t} | {runs} | {secs} | {cov} |");
    }
    Ok(())
}

/// cargo with the pinned nightly in `fuzz/` (its own workspace); the outer cargo's toolchain
/// variables are dropped so `+toolchain` decides.
fn nightly(root: &Path) -> Command {
    let mut c = Command::new("cargo");
    c.current_dir(root)
        .arg(format!("+{EBPF_TOOLCHAIN}"))
        .env_remove("RUSTUP_TOOLCHAIN")
        .env_remove("RUSTC")
        .env_remove("CARGO");
    c
}

fn stat(log: &str, key: &str) -> u64 {
    log.lines()
        .find_map(|l| l.strip_prefix(key))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0)
}

/// cargo-fuzz, installed when missing.
fn cargo_fuzz() -> Result<()> {
    let have = Command::new("cargo")
        .args(["fuzz", "--version"])
        .output()
        .is_ok_and(|o| o.status.success());
    if !have {
        eprintln!("fuzz: installing cargo-fuzz");
        crate::status(Command::new("cargo").args(["install", "--locked", "cargo-fuzz"]))?;
    }
    Ok(())
}
