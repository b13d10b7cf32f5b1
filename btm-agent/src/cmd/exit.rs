//! `btm-agent`'s exit codes, in one place: what each means, how an error maps to one
//! ([`classify`]), how it is printed (text on stderr, or `{"v":1,"error":{...}}` on stdout
//! under `--json`), and the table `--help` shows (docs/OPERATIONS.md has the same table).
//!
//! The numbers follow sysexits.h where a meaning fits (65 data error, 66 no input, 69
//! unavailable, 75 temporary failure), clap's 2 for usage, and the shell's 128 + SIGINT for an
//! interruption. They are stable: scripts may test them.
use std::sync::atomic::{AtomicBool, Ordering};

use crate::log::LogError;
use crate::snapshot::SnapshotError;
use crate::volume::VolumeLocked;
use btm_client::ClientError;

/// Why a command failed, as its exit status says it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Code {
    /// Anything not named below.
    Failure,
    /// Wrong flags, a bad configuration file, a missing argument.
    Usage,
    /// The log (or a height's data) is damaged: `verify` found a bad hash, a replay read one.
    Damage,
    /// There is no log at the given path (or no native snapshots to use instead).
    NoLog,
    /// The height asked for is not recorded (or was removed by retention, or the log is empty).
    HeightNotFound,
    /// No agent listens on the socket.
    AgentNotRunning,
    /// Another process holds the log or the volume (an agent, a compaction); retry later.
    Locked,
    /// The offsite store and `--remote-key` do not go together: an encrypted store without
    /// its key, a plaintext store with one, or another key than the store's.
    RemoteKey,
    /// Stopped by SIGINT or SIGTERM before it finished (push, replay and rollback resume or
    /// rewrite only what differs when run again).
    Interrupted,
}

impl Code {
    pub const ALL: [Code; 9] = [
        Code::Failure,
        Code::Usage,
        Code::Damage,
        Code::NoLog,
        Code::HeightNotFound,
        Code::AgentNotRunning,
        Code::Locked,
        Code::RemoteKey,
        Code::Interrupted,
    ];

    /// The process exit status.
    pub fn status(self) -> i32 {
        match self {
            Code::Failure => 1,
            Code::Usage => 2,
            Code::Damage => 65,
            Code::NoLog => 66,
            Code::HeightNotFound => 67,
            Code::AgentNotRunning => 69,
            Code::Locked => 75,
            // sysexits' EX_CONFIG: the key given (or not) does not fit the store.
            Code::RemoteKey => 78,
            Code::Interrupted => 130,
        }
    }

    /// The name `--json` errors carry as `error.code`.
    pub fn name(self) -> &'static str {
        match self {
            Code::Failure => "failure",
            Code::Usage => "usage",
            Code::Damage => "damage",
            Code::NoLog => "no_log",
            Code::HeightNotFound => "height_not_found",
            Code::AgentNotRunning => "agent_not_running",
            Code::Locked => "locked",
            Code::RemoteKey => "remote_key",
            Code::Interrupted => "interrupted",
        }
    }

    /// One line for `--help` and the docs.
    pub fn meaning(self) -> &'static str {
        match self {
            Code::Failure => "any other error",
            Code::Usage => "wrong flags or arguments, bad configuration file",
            Code::Damage => "the log is damaged (verify, replay, rollback)",
            Code::NoLog => "no log at --log (or no native snapshots of the volume)",
            Code::HeightNotFound => "the height is not recorded, or the log is empty",
            Code::AgentNotRunning => "no agent listens on the socket (status, snapshot)",
            Code::Locked => "another process holds the log or the volume; retry later",
            Code::RemoteKey => {
                "the offsite store and --remote-key do not go together (encrypted store, no \
                 key; plaintext store, a key; another key)"
            }
            Code::Interrupted => "stopped by SIGINT or SIGTERM before finishing; run it again",
        }
    }
}

/// An error that names its exit code, for conditions no typed error of the library covers.
#[derive(Debug, thiserror::Error)]
#[error("{message}")]
pub struct Coded {
    pub code: Code,
    pub message: String,
}

/// An error with exit code `code`.
pub fn coded(code: Code, message: impl Into<String>) -> anyhow::Error {
    anyhow::Error::new(Coded {
        code,
        message: message.into(),
    })
}

/// A usage error (exit 2): a flag or argument is missing or does not fit.
pub fn usage(message: impl Into<String>) -> anyhow::Error {
    coded(Code::Usage, message)
}

/// The exit code of an error: the first cause in its chain that names one.
pub fn classify(e: &anyhow::Error) -> Code {
    e.chain().find_map(code_of).unwrap_or(Code::Failure)
}

fn code_of(cause: &(dyn std::error::Error + 'static)) -> Option<Code> {
    if let Some(c) = cause.downcast_ref::<Coded>() {
        return Some(c.code);
    }
    if let Some(e) = cause.downcast_ref::<LogError>() {
        return match e {
            LogError::NoLog { .. } => Some(Code::NoLog),
            LogError::Locked { .. } | LogError::Compacting { .. } => Some(Code::Locked),
            LogError::Corrupt { .. }
            | LogError::CorruptExtent { .. }
            | LogError::UnsafePath { .. } => Some(Code::Damage),
            LogError::UnknownHeight { .. }
            | LogError::Dropped { .. }
            | LogError::NoHeightAtOrBelow { .. }
            | LogError::Empty => Some(Code::HeightNotFound),
            _ => None,
        };
    }
    if let Some(e) = cause.downcast_ref::<SnapshotError>() {
        return match e {
            SnapshotError::NoSuchHeight { .. } | SnapshotError::NoTarget { .. } => {
                Some(Code::HeightNotFound)
            }
            _ => None,
        };
    }
    if let Some(e) = cause.downcast_ref::<crate::remote::RemoteError>() {
        use crate::remote::RemoteError as R;
        return match e {
            R::Log(l) => code_of(l),
            R::Locked(_) => Some(Code::Locked),
            R::Damaged(_) | R::Missing(_) => Some(Code::Damage),
            R::NotFound(_) => Some(Code::HeightNotFound),
            R::KeyMismatch(_) => Some(Code::RemoteKey),
            _ => None,
        };
    }
    if let Some(ClientError::NotRunning { .. }) = cause.downcast_ref::<ClientError>() {
        return Some(Code::AgentNotRunning);
    }
    if cause.is::<VolumeLocked>() {
        return Some(Code::Locked);
    }
    None
}

/// Whether errors are printed as JSON (set once the command line is parsed).
static JSON: AtomicBool = AtomicBool::new(false);

/// Print errors as `{"v":1,"error":{...}}` on stdout from now on (the verb has `--json`).
pub fn set_json(on: bool) {
    JSON.store(on, Ordering::SeqCst);
}

/// The JSON form of an error (`"v": 1`, like every `--json` output).
pub fn json_error(code: Code, message: &str) -> serde_json::Value {
    serde_json::json!({ "v": 1, "error": { "code": code.name(), "message": message } })
}

/// Prints the error and exits with its code: on stderr always (a person, a log, and scripts
/// that read stderr keep working), and under `--json` also as one object on stdout.
pub fn fail(code: Code, message: &str) -> ! {
    if JSON.load(Ordering::SeqCst) {
        println!("{}", json_error(code, message));
    }
    eprintln!("error: {message}");
    std::process::exit(code.status())
}

/// Exits with [`Code::Interrupted`] on SIGINT or SIGTERM instead of dying of the signal, so
/// that every caller (a shell, systemd, a Python script) sees the same status. Call before any
/// thread starts: the signals are blocked here and threads inherit that (child processes do
/// not: `std::process::Command` resets the mask).
pub fn exit_on_signals() {
    use nix::sys::signal::{SigSet, Signal};
    let mut set = SigSet::empty();
    set.add(Signal::SIGINT);
    set.add(Signal::SIGTERM);
    if set.thread_block().is_err() {
        return;
    }
    std::thread::spawn(move || {
        if let Ok(sig) = set.wait() {
            fail(
                Code::Interrupted,
                &format!("interrupted by {sig} before finishing; run it again to finish"),
            );
        }
    });
}

/// The table of exit codes `--help` ends with.
pub fn help() -> String {
    let mut s = String::from("Exit codes:\n");
    for c in Code::ALL {
        s += &format!("  {:>3}  {:<18} {}\n", c.status(), c.name(), c.meaning());
    }
    s += "  Under --json an error is also printed on stdout as \
          {\"v\":1,\"error\":{\"code\":NAME,\"message\":...}}.";
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_key_that_does_not_fit_the_store_has_its_own_code() {
        let e = anyhow::Error::new(crate::remote::RemoteError::KeyMismatch("wrong key".into()))
            .context("listing");
        assert_eq!(classify(&e), Code::RemoteKey);
        assert_eq!(
            (Code::RemoteKey.status(), Code::RemoteKey.name()),
            (78, "remote_key")
        );
        let statuses: std::collections::HashSet<i32> =
            Code::ALL.iter().map(|c| c.status()).collect();
        assert_eq!(statuses.len(), Code::ALL.len(), "codes are distinct");
        assert!(help().contains("remote_key"));
    }
}
