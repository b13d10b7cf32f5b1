//! The configuration file from any bytes, through the agent's own reader (TOML, then each
//! key and value checked by the flag's parser): a clear error or a configuration, never a
//! panic. What the file sets is what `run` gets.
#![no_main]
use std::ffi::OsString;

use btm_agent::cmd::run::RunArgs;
use clap::{CommandFactory, FromArgMatches, Parser, Subcommand};
use libfuzzer_sys::fuzz_target;

#[derive(Parser)]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    Run(RunArgs),
}

fuzz_target!(|data: &[u8]| {
    let file = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(file.path(), data).unwrap();
    let argv: Vec<OsString> = vec![
        "btm-agent".into(),
        "run".into(),
        "--config".into(),
        file.path().into(),
    ];
    let Ok(m) = btm_agent::config::matches_with_config(Cli::command(), argv) else {
        return;
    };
    let _ = Cli::from_arg_matches(&m);
});
