//! `btm-agent thaw`: thaw the volume if a cut left it frozen. The unit runs it after the agent
//! stops (ExecStopPost): when systemd SIGKILLs the agent and its thaw guard together after a
//! stop timeout, nothing else would thaw the node's volume. It reads the volume as `run` does,
//! so a unit needs no path of its own.
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use clap::Args;

#[derive(Args, Debug)]
pub struct ThawArgs {
    /// Mount point of the volume (default: `volume` of the configuration file).
    #[arg(short = 'p', long, env = "BTM_VOLUME")]
    pub volume: Option<PathBuf>,
    /// The agent's configuration file (default /etc/btm/btm.toml if present).
    #[arg(long, env = "BTM_CONFIG", value_name = "FILE")]
    pub config: Option<PathBuf>,
}

pub fn run(args: ThawArgs) -> Result<()> {
    let volume = match args.volume {
        Some(v) => v,
        None => volume_of(args.config.as_deref())?,
    };
    // A running agent holds the volume's lock, and its freezes are its own to end.
    let _claim = crate::volume::VolumeLock::acquire(&volume)?;
    if crate::volume::Frozen::thaw_leftover(&volume)
        .with_context(|| format!("thawing {}", volume.display()))?
    {
        println!("{} was frozen; thawed it", volume.display());
    } else {
        println!("{} is not frozen", volume.display());
    }
    Ok(())
}

/// The `volume` key of the configuration file.
fn volume_of(config: Option<&Path>) -> Result<PathBuf> {
    let path = config.unwrap_or(Path::new(crate::config::DEFAULT_PATH));
    let table =
        crate::config::read_table(path, "no --volume, and reading configuration {} failed")?;
    match table.get("volume") {
        Some(toml::Value::String(v)) => Ok(PathBuf::from(v)),
        _ => Err(super::exit::usage(format!(
            "no --volume, and {} has no `volume = \"PATH\"`",
            path.display()
        ))),
    }
}
