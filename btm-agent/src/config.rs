//! Configuration of the agent: a TOML file whose keys are `run`'s flags (`itv = 10`,
//! `socket_mode = "660"`), environment variables `BTM_*`, and flags, in rising precedence.
//!
//! The file's values become the defaults of the matching arguments before clap parses the
//! command line, so clap itself applies "flag over env over default" and validates every
//! value with the flag's own parser: one rule, one set of checks, whatever the source.
//!
//! The other verbs take from the same file the keys that say where things are (see [`SHARED`]):
//! `btm-agent list` lists the log `run` writes, `status` asks the agent on `run`'s socket.
use std::{
    collections::BTreeMap,
    ffi::OsString,
    path::{Path, PathBuf},
    sync::OnceLock,
};

use anyhow::{Context, Result, bail};
use clap::{
    Arg, ArgAction, ArgMatches, Command, CommandFactory, FromArgMatches, parser::ValueSource,
};

/// Read when present and no `--config` / `BTM_CONFIG` names another file.
pub const DEFAULT_PATH: &str = "/etc/btm/btm.toml";

/// Subcommands whose arguments the file configures.
const TARGETS: &[&[&str]] = &[&["run"], &["config", "check"]];

/// Arguments that are not configuration keys.
const NOT_KEYS: &[&str] = &["config", "help", "version", "json"];

/// A verb that takes some of `run`'s keys from the file.
struct Shared {
    verb: &'static str,
    /// The file's keys it takes, when its command line and environment do not set them.
    keys: &'static [&'static str],
    /// Alternative places to work on (the log, a volume's snapshots, a remote): once one of
    /// them is given by flag or environment, the file's values for the others are not used
    /// (`list --remote URL` lists the remote, not the file's log; `rollback --volume V` does
    /// not pair V with the file's log).
    sources: &'static [&'static str],
}

/// `remote` is taken only where it is the destination (push, prune): for list and replay a
/// remote replaces the log as the source, and `run --remote` is meant to ship, not to redirect
/// them. So is `remote_key`, which belongs to that remote; the bandwidth limits apply to any
/// remote.
const SHARED: &[Shared] = &[
    Shared {
        verb: "list",
        keys: &["log", "volume", "remote_name", "limit_download"],
        sources: &["log", "volume", "remote"],
    },
    Shared {
        verb: "verify",
        keys: &["log", "remote_name", "limit_download"],
        sources: &["log", "remote"],
    },
    Shared {
        verb: "replay",
        keys: &[
            "log",
            "remote_name",
            "preserve",
            "preserve_preset",
            "limit_download",
        ],
        sources: &["log", "remote"],
    },
    Shared {
        verb: "rollback",
        keys: &["volume", "log", "socket", "preserve", "preserve_preset"],
        sources: &["volume", "log"],
    },
    Shared {
        verb: "compact",
        keys: &["log"],
        sources: &[],
    },
    Shared {
        verb: "pin",
        keys: &["log"],
        sources: &[],
    },
    Shared {
        verb: "unpin",
        keys: &["log"],
        sources: &[],
    },
    Shared {
        verb: "diff",
        keys: &["log"],
        sources: &[],
    },
    Shared {
        verb: "stats",
        keys: &["log"],
        sources: &[],
    },
    Shared {
        verb: "push",
        keys: &[
            "log",
            "remote",
            "remote_name",
            "remote_key",
            "exclude",
            "limit_upload",
            "remote_cap",
            "remote_itv",
            "remote_algo",
        ],
        sources: &[],
    },
    Shared {
        verb: "prune",
        keys: &["remote", "remote_name", "remote_key"],
        sources: &[],
    },
    Shared {
        verb: "status",
        keys: &["socket"],
        sources: &[],
    },
    Shared {
        verb: "snapshot",
        keys: &["socket"],
        sources: &[],
    },
];

/// Where a value of the effective configuration came from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Source {
    Flag,
    Env(String),
    File(PathBuf),
    Default,
    Unset,
}

impl std::fmt::Display for Source {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Source::Flag => write!(f, "flag"),
            Source::Env(v) => write!(f, "env {v}"),
            Source::File(p) => write!(f, "file {}", p.display()),
            Source::Default => write!(f, "default"),
            Source::Unset => write!(f, "unset"),
        }
    }
}

/// One key of the effective configuration.
#[derive(Clone, Debug)]
pub struct Entry {
    pub key: String,
    /// The value as given (before parsing), `None` when unset; a list's values one per line.
    pub raw: Option<String>,
    pub source: Source,
    kind: Kind,
}

#[derive(Clone, Copy, Debug)]
enum Kind {
    Bool,
    Int,
    Str,
    /// A repeatable flag (`--preserve G1 --preserve G2`): a TOML array in the file.
    List,
}

impl Entry {
    /// The entry as a TOML line (commented out when unset), with its source.
    pub fn to_toml(&self) -> String {
        let Some(raw) = &self.raw else {
            return format!("# {} =  # unset", self.key);
        };
        let value = match self.kind {
            Kind::Bool => raw.clone(),
            Kind::List => toml::Value::Array(raw.lines().map(|l| l.into()).collect()).to_string(),
            Kind::Int if raw.parse::<u64>().is_ok() => raw.clone(),
            _ => toml::Value::String(raw.clone()).to_string(),
        };
        format!("{} = {value}  # {}", self.key, self.source)
    }
}

impl Entry {
    /// The value as JSON: a boolean, a number, a string, or null when unset.
    pub fn json_value(&self) -> serde_json::Value {
        match (&self.raw, self.kind) {
            (None, _) => serde_json::Value::Null,
            (Some(r), Kind::Bool) => r
                .parse::<bool>()
                .map_or_else(|_| r.as_str().into(), Into::into),
            (Some(r), Kind::Int) => r
                .parse::<u64>()
                .map_or_else(|_| r.as_str().into(), Into::into),
            (Some(r), Kind::Str) => r.as_str().into(),
            (Some(r), Kind::List) => r.lines().collect::<Vec<_>>().into(),
        }
    }

    /// Where the value came from as a word (`flag`, `env`, `file`, `default`, `unset`).
    pub fn source_kind(&self) -> &'static str {
        match self.source {
            Source::Flag => "flag",
            Source::Env(_) => "env",
            Source::File(_) => "file",
            Source::Default => "default",
            Source::Unset => "unset",
        }
    }
}

/// The configuration this process runs with: the file read (if any) and every key.
#[derive(Clone, Debug, Default)]
pub struct Effective {
    pub file: Option<PathBuf>,
    pub entries: Vec<Entry>,
}

static EFFECTIVE: OnceLock<Effective> = OnceLock::new();

/// The effective configuration recorded by [`parse`] (empty for subcommands it does not cover).
pub fn effective() -> Effective {
    EFFECTIVE.get().cloned().unwrap_or_default()
}

/// Parses the process's arguments with the configuration file applied; exits on errors
/// (clap's for flags, ours naming the file and key for the file) with the usage code, 2. With
/// `--json` among the arguments the error is a JSON object on stdout, as the verb's others.
pub fn parse<T: CommandFactory + FromArgMatches>() -> T {
    use crate::cmd::exit;
    let argv: Vec<OsString> = std::env::args_os().collect();
    let res =
        matches_with_config(T::command(), argv.clone()).and_then(|m| Ok(T::from_arg_matches(&m)?));
    let e = match res {
        Ok(t) => return t,
        Err(e) => e,
    };
    let json = argv
        .iter()
        .take_while(|a| *a != "--")
        .any(|a| a == "--json");
    let e = match e.downcast::<clap::Error>() {
        Ok(c) if !json || !c.use_stderr() => c.exit(),
        Ok(c) => {
            let text = c.render().to_string();
            let first = text.lines().next().unwrap_or_default();
            anyhow::anyhow!("{}", first.trim_start_matches("error: "))
        }
        Err(e) => e,
    };
    exit::set_json(json);
    exit::fail(exit::Code::Usage, &format!("{e:#}"))
}

/// Parses `argv` against `cmd`, using the configuration file's values as defaults of the
/// configured subcommand's arguments. Records the effective configuration for [`effective`].
pub fn matches_with_config(cmd: Command, argv: Vec<OsString>) -> Result<ArgMatches> {
    let cmd = add_config_arg(cmd);
    // A tolerant first pass only finds the subcommand and `--config`; help, version and
    // real errors are left to the full parse below.
    let Ok(pre) = cmd.clone().ignore_errors(true).try_get_matches_from(&argv) else {
        return Ok(cmd.try_get_matches_from(argv)?);
    };
    let Some((target, sub)) = TARGETS
        .iter()
        .find_map(|t| descend(&pre, t).map(|m| (*t, m)))
    else {
        if let Some((shared, sub)) = SHARED
            .iter()
            .find_map(|s| descend(&pre, &[s.verb]).map(|m| (s, m)))
        {
            let values = match config_file(sub) {
                Some(path) => shared_values(&path, &cmd, shared, sub)?,
                None => BTreeMap::new(),
            };
            let cmd = with_defaults(cmd, &[shared.verb], &values);
            return Ok(cmd.try_get_matches_from(argv)?);
        }
        return Ok(cmd.try_get_matches_from(argv)?);
    };
    let file = config_file(sub);
    let values = match &file {
        Some(path) => read_file(path, subcommand(&cmd, target))?,
        None => BTreeMap::new(),
    };
    // In declaration order (setting a default moves an argument to the end).
    let order: Vec<String> = subcommand(&cmd, target)
        .get_arguments()
        .map(|a| a.get_id().to_string())
        .filter(|k| !NOT_KEYS.contains(&k.as_str()))
        .collect();
    let cmd = with_defaults(cmd, target, &values);
    let m = cmd.clone().try_get_matches_from(argv)?;
    let sub = descend(&m, target).expect("the full parse found the same subcommand");
    let args = subcommand(&cmd, target);
    let entries = order
        .iter()
        .filter_map(|k| args.get_arguments().find(|a| a.get_id() == k.as_str()))
        .map(|a| entry(a, sub, file.as_deref(), &values))
        .collect();
    let _ = EFFECTIVE.set(Effective { file, entries });
    Ok(m)
}

/// `--config` (or `BTM_CONFIG`), else the default path when it exists.
fn config_file(sub: &ArgMatches) -> Option<PathBuf> {
    match sub.get_one::<PathBuf>("config") {
        Some(p) => Some(p.clone()),
        None => Some(PathBuf::from(DEFAULT_PATH)).filter(|p| p.exists()),
    }
}

/// The file's values a shared verb takes (the whole file is checked as `run` would).
fn shared_values(
    path: &Path,
    cmd: &Command,
    shared: &Shared,
    sub: &ArgMatches,
) -> Result<BTreeMap<String, Vec<String>>> {
    let mut values = read_file(path, subcommand(cmd, &["run"]))?;
    let given = |k: &str| {
        matches!(
            sub.try_get_raw(k)
                .ok()
                .flatten()
                .map(|_| sub.value_source(k)),
            Some(Some(ValueSource::CommandLine | ValueSource::EnvVariable))
        )
    };
    let source_given = shared.sources.iter().any(|k| given(k));
    values.retain(|k, _| {
        shared.keys.contains(&k.as_str())
            && !given(k)
            && !(source_given && shared.sources.contains(&k.as_str()))
    });
    Ok(values)
}

/// The configuration file as a TOML table; `reading` says what was being done (`{}` is the
/// path) when the file cannot be read.
pub fn read_table(path: &Path, reading: &str) -> Result<toml::Table> {
    let text = std::fs::read_to_string(path)
        .with_context(|| reading.replace("{}", &path.display().to_string()))?;
    text.parse()
        .map_err(|e| anyhow::anyhow!("{}: not valid TOML: {e}", path.display()))
}

/// Reads the file into `key -> value as a flag would spell it`, checking each key and value
/// against the subcommand's arguments.
fn read_file(path: &Path, cmd: &Command) -> Result<BTreeMap<String, Vec<String>>> {
    let table = read_table(
        path,
        "reading configuration {} (from --config, BTM_CONFIG or the default)",
    )?;
    let known: Vec<&str> = cmd
        .get_arguments()
        .map(|a| a.get_id().as_str())
        .filter(|k| !NOT_KEYS.contains(k))
        .collect();
    let mut out = BTreeMap::new();
    for (k, v) in table {
        let key = k.replace('-', "_");
        let Some(arg) = cmd
            .get_arguments()
            .find(|a| a.get_id().as_str() == key && !NOT_KEYS.contains(&key.as_str()))
        else {
            bail!(
                "{}: unknown key `{k}`; known keys: {}",
                path.display(),
                known.join(", ")
            );
        };
        let list = matches!(arg.get_action(), ArgAction::Append);
        // A list only for a repeatable flag; elsewhere it fails below as any other type.
        let items = match v {
            toml::Value::Array(a) if list => a,
            v => vec![v],
        };
        let mut vals = Vec::new();
        for v in items {
            let s = match v {
                toml::Value::String(s) => s,
                toml::Value::Integer(i) => i.to_string(),
                toml::Value::Boolean(b) => b.to_string(),
                other => bail!(
                    "{}: key `{k}`: expected a string, integer or boolean{}, found {}",
                    path.display(),
                    if list { " (or a list of them)" } else { "" },
                    other.type_str()
                ),
            };
            check_value(arg, &s).map_err(|e| {
                let msg = e.to_string();
                let first = msg.lines().next().unwrap_or_default();
                anyhow::anyhow!(
                    "{}: key `{k}`: {}",
                    path.display(),
                    first.trim_start_matches("error: ")
                )
            })?;
            vals.push(s);
        }
        out.insert(key, vals);
    }
    Ok(out)
}

/// Runs `s` through the argument's own parser (as a default value, with its env var off).
fn check_value(arg: &Arg, s: &str) -> Result<(), clap::Error> {
    Command::new("config")
        .no_binary_name(true)
        .arg(
            arg.clone()
                .required(false)
                .env(None)
                .default_value(s.to_string()),
        )
        .try_get_matches_from(Vec::<OsString>::new())
        .map(drop)
}

/// `cmd` with `--config` on the subcommands the file configures, as [`parse`] sees it (also
/// for generated completions and man pages).
pub fn add_config_arg(cmd: Command) -> Command {
    let arg = Arg::new("config")
        .long("config")
        .env("BTM_CONFIG")
        .value_name("FILE")
        .value_parser(clap::value_parser!(PathBuf))
        .help(format!(
            "TOML file with these flags' keys (default {DEFAULT_PATH} if present); flags and BTM_* variables win"
        ));
    let cmd = TARGETS
        .iter()
        .fold(cmd, |cmd, t| mut_path(cmd, t, &|c| c.arg(arg.clone())));
    SHARED.iter().fold(cmd, |cmd, s| {
        mut_path(cmd, &[s.verb], &|c| {
            c.arg(arg.clone().help(format!(
                "TOML file of `run` (default {DEFAULT_PATH} if present): {} come from it unless given",
                s.keys.join(", ")
            )))
        })
    })
}

fn with_defaults(cmd: Command, target: &[&str], values: &BTreeMap<String, Vec<String>>) -> Command {
    mut_path(cmd, target, &|mut c| {
        for (k, v) in values {
            c = c.mut_arg(k.as_str(), |a| a.required(false).default_values(v.clone()));
        }
        c
    })
}

fn mut_path(cmd: Command, path: &[&str], f: &dyn Fn(Command) -> Command) -> Command {
    match path.split_first() {
        None => f(cmd),
        Some((first, rest)) => {
            if cmd.find_subcommand(first).is_none() {
                return cmd;
            }
            cmd.mut_subcommand(*first, |c| mut_path(c, rest, f))
        }
    }
}

fn subcommand<'a>(cmd: &'a Command, path: &[&str]) -> &'a Command {
    path.iter()
        .fold(cmd, |c, name| c.find_subcommand(name).unwrap_or(c))
}

fn descend<'a>(m: &'a ArgMatches, path: &[&str]) -> Option<&'a ArgMatches> {
    path.iter().try_fold(m, |m, name| match m.subcommand() {
        Some((n, sub)) if n == *name => Some(sub),
        _ => None,
    })
}

fn entry(
    arg: &Arg,
    m: &ArgMatches,
    file: Option<&Path>,
    values: &BTreeMap<String, Vec<String>>,
) -> Entry {
    let id = arg.get_id().as_str();
    let raw = m.get_raw(id).map(|v| {
        v.map(|v| v.to_string_lossy().into_owned())
            .collect::<Vec<_>>()
            .join("\n")
    });
    let source = match (m.value_source(id), file) {
        (None, _) => Source::Unset,
        (Some(ValueSource::CommandLine), _) => Source::Flag,
        (Some(ValueSource::EnvVariable), _) => Source::Env(
            arg.get_env()
                .map(|e| e.to_string_lossy().into_owned())
                .unwrap_or_default(),
        ),
        (Some(_), Some(f)) if values.contains_key(id) => Source::File(f.to_path_buf()),
        (Some(_), _) => Source::Default,
    };
    let kind = if matches!(arg.get_action(), ArgAction::SetTrue | ArgAction::SetFalse) {
        Kind::Bool
    } else if matches!(arg.get_action(), ArgAction::Append) {
        Kind::List
    } else {
        let t = arg.get_value_parser().type_id();
        if t == std::any::TypeId::of::<u64>() || t == std::any::TypeId::of::<usize>() {
            Kind::Int
        } else {
            Kind::Str
        }
    };
    Entry {
        key: id.to_string(),
        raw,
        source,
        kind,
    }
}
