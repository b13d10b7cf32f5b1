//! `btm-agent config check`: validate the configuration `run` would use and print it as TOML,
//! each key with where its value came from (flag, env, file or default). Meant for operators
//! before a restart and for install scripts; it needs neither root nor the volume. `--json`
//! prints the same as one object (`{"v":1,"file":...,"settings":{KEY:{"value":...,
//! "source":...}}}`).
use anyhow::{Result, bail};

use super::run::RunArgs;
use crate::config::{self, DEFAULT_PATH, Source};

#[derive(clap::Args, Debug)]
pub struct ConfigArgs {
    #[command(subcommand)]
    pub command: ConfigCommand,
}

#[derive(clap::Subcommand, Debug)]
pub enum ConfigCommand {
    /// Validate the configuration (file, BTM_* variables, flags) and print the effective one.
    Check(CheckArgs),
}

#[derive(clap::Args, Debug)]
pub struct CheckArgs {
    #[command(flatten)]
    pub run: RunArgs,
    /// Print the effective configuration as one JSON object (errors too).
    #[arg(long)]
    pub json: bool,
}

pub fn run(args: ConfigArgs) -> Result<()> {
    match args.command {
        ConfigCommand::Check(c) => check(&c.run, c.json),
    }
}

fn check(args: &RunArgs, json: bool) -> Result<()> {
    let eff = config::effective();
    validate(args, &eff)?;
    if json {
        let settings: serde_json::Map<String, serde_json::Value> = eff
            .entries
            .iter()
            .map(|e| {
                let mut v = serde_json::json!({
                    "value": e.json_value(),
                    "source": e.source_kind(),
                });
                if let Source::Env(var) = &e.source {
                    v["env"] = var.as_str().into();
                }
                (e.key.clone(), v)
            })
            .collect();
        // print_json puts "v": 1 first.
        return super::report::print_json(serde_json::json!({
            "file": eff.file,
            "settings": settings,
        }));
    }
    match &eff.file {
        Some(f) => println!(
            "# effective configuration of `btm-agent run`; file {}",
            f.display()
        ),
        None => println!(
            "# effective configuration of `btm-agent run`; no file ({DEFAULT_PATH} absent)"
        ),
    }
    for e in &eff.entries {
        println!("{}", e.to_toml());
    }
    // Paths are checked loosely: the volume may be mounted only when the agent starts.
    for (key, p) in [("volume", &args.volume), ("log", &args.log)] {
        if !p.exists() {
            eprintln!("note: {key} {} does not exist (yet)", p.display());
        }
    }
    Ok(())
}

/// Checks that span more than one flag's parser; errors name the key and its source.
fn validate(args: &RunArgs, eff: &config::Effective) -> Result<()> {
    let from = |key: &str| {
        eff.entries
            .iter()
            .find(|e| e.key == key)
            .map_or(Source::Default, |e| e.source.clone())
    };
    if args.itv == 0 {
        bail!("itv ({}): must be at least 1", from("itv"));
    }
    if !(1..=4096).contains(&args.cap) {
        bail!(
            "cap = {} ({}): must be between 1 and 4096",
            args.cap,
            from("cap")
        );
    }
    if args.log.starts_with(&args.volume) {
        bail!(
            "log {} ({}) lies inside volume {} ({}): the volume is frozen during cuts; put the log on another filesystem",
            args.log.display(),
            from("log"),
            args.volume.display(),
            from("volume")
        );
    }
    Ok(())
}
