//! `--preserve` / `--preserve-preset` (rollback, replay, run) and `--exclude` (push, run's
//! offsite shipping): paths a rewind must never touch and paths that must never leave the
//! host. A validator's signing state (CometBFT's `data/priv_validator_state.json`) only moves
//! forward: rewinding it lets the validator sign a height twice and be slashed. Its keys must
//! not sit in an offsite bucket.
use anyhow::Result;

use super::exit;
use crate::log::PathGlobs;

/// Paths a node keeps that must never be rewound.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Preset {
    /// CometBFT / Tendermint home: data/priv_validator_state.json (last signed height),
    /// config/priv_validator_key.json, config/node_key.json.
    Cometbft,
}

impl Preset {
    pub fn globs(self) -> &'static [&'static str] {
        match self {
            Preset::Cometbft => &[
                "data/priv_validator_state.json",
                "config/priv_validator_key.json",
                "config/node_key.json",
            ],
        }
    }
}

#[derive(clap::Args, Clone, Debug, Default)]
pub struct PreserveArgs {
    /// Never rewind, overwrite or delete paths matching GLOB, relative to the volume (or
    /// --into) root: `*` stays within a component, `**` crosses them, a directory covers what
    /// is under it. Repeatable. Config key: preserve = ["GLOB", ...].
    #[arg(long = "preserve", value_name = "GLOB")]
    pub preserve: Vec<String>,
    /// Preserve a node's signing state and keys. cometbft: data/priv_validator_state.json,
    /// config/priv_validator_key.json, config/node_key.json (rewinding the signing state
    /// invites a double sign). Config key: preserve_preset = "cometbft".
    #[arg(long, value_enum, value_name = "NODE")]
    pub preserve_preset: Vec<Preset>,
}

impl PreserveArgs {
    /// The globs given and those of the presets.
    pub fn patterns(&self) -> Vec<String> {
        let mut v = self.preserve.clone();
        for p in &self.preserve_preset {
            v.extend(p.globs().iter().map(|g| g.to_string()));
        }
        v.dedup();
        v
    }

    pub fn globs(&self) -> Result<PathGlobs> {
        compile(&self.patterns(), "--preserve")
    }
}

#[derive(clap::Args, Clone, Debug, Default)]
pub struct ExcludeArgs {
    /// Never copy paths matching GLOB offsite (relative to the volume root; `*` within a
    /// component, `**` across, a directory covers what is under it). Repeatable. Their data
    /// is not uploaded, the heights record the globs, and a restore skips and names those
    /// paths. Keep validator and node keys home: --exclude 'config/*_key.json'.
    /// Config key: exclude = ["GLOB", ...].
    #[arg(long = "exclude", value_name = "GLOB")]
    pub exclude: Vec<String>,
}

impl ExcludeArgs {
    pub fn globs(&self) -> Result<PathGlobs> {
        compile(&self.exclude, "--exclude")
    }
}

fn compile(patterns: &[String], flag: &str) -> Result<PathGlobs> {
    PathGlobs::new(patterns).map_err(|e| exit::usage(format!("{flag}: {e}")))
}

/// What a replay or rollback left alone, for the text output.
pub fn preserved_text(paths: &[String]) -> String {
    match paths.len() {
        0 => String::new(),
        n if n <= 8 => format!("; preserved as they were: {}", paths.join(", ")),
        n => format!(
            "; preserved as they were: {}, ... ({n} paths)",
            paths[..8].join(", ")
        ),
    }
}
