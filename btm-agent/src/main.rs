//! `btm-agent`: keep a blockchain node's data recoverable to any block height.
use clap::{Parser, Subcommand};

use btm_agent::cmd;

#[derive(Parser, Debug)]
#[command(name = "btm-agent", version, about, long_about = None)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Load the eBPF tracker on a volume and print the dirty extents it sees at each drain.
    Track(cmd::track::TrackArgs),
}

fn main() {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("BTM_LOG")
                .unwrap_or_else(|_| "info".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    let res = match cli.command {
        Command::Track(a) => cmd::track::run(a),
    };
    if let Err(e) = res {
        eprintln!("error: {e:#}");
        std::process::exit(1);
    }
}
