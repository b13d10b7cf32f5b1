//! `btm-agent generate`: shell completions and man pages made from the clap definitions
//! themselves, so what the package ships (`cargo xtask dist`) cannot drift from the binary's
//! flags. Visible, so an install from source can make them too.
use std::{io::Write, path::PathBuf};

use anyhow::{Context, Result};
use clap::{Args, Subcommand};
use clap_complete::Shell;

#[derive(Args, Debug)]
pub struct GenerateArgs {
    #[command(subcommand)]
    what: What,
}

#[derive(Subcommand, Debug)]
enum What {
    /// Print the completion script for SHELL on stdout.
    Completions {
        #[arg(value_enum)]
        shell: Shell,
    },
    /// Write btm-agent.1 and one page per subcommand (btm-agent-run.1, ...) into DIR.
    Man {
        /// Created when missing.
        dir: PathBuf,
    },
}

/// Generates from `cmd`, the whole command line of the binary.
pub fn run(args: GenerateArgs, cmd: clap::Command) -> Result<()> {
    let cmd = crate::config::add_config_arg(cmd);
    match args.what {
        What::Completions { shell } => {
            let mut out = std::io::stdout().lock();
            let name = cmd.get_name().to_string();
            clap_complete::generate(shell, &mut cmd.clone(), name, &mut out);
            out.flush()?;
        }
        What::Man { dir } => {
            std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
            clap_mangen::generate_to(cmd, &dir)
                .with_context(|| format!("writing man pages into {}", dir.display()))?;
        }
    }
    Ok(())
}
