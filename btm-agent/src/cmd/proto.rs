//! The agent's unix-socket protocol: one JSON request line, one JSON response line.
//!
//! This is what an unprivileged node (or `btm-agent snapshot`) uses to hand heights to the
//! privileged agent. [`snapshot`] is the small client API a node can embed.
use std::{
    io::{BufRead, BufReader, Write},
    os::unix::net::UnixStream,
    path::Path,
    time::Duration,
};

use serde::{Deserialize, Serialize};

pub const DEFAULT_SOCKET: &str = "/run/btm/btm.sock";

#[derive(Debug, Serialize, Deserialize)]
#[serde(tag = "cmd", rename_all = "snake_case")]
pub enum Request {
    /// Cut at this height; answered once it is durable.
    Snapshot {
        height: u64,
    },
    /// Roll the volume back in place (the node must be stopped).
    Rollback {
        height: Option<u64>,
        exact: bool,
    },
    Status,
}

#[derive(Debug, Serialize, Deserialize)]
pub struct Response {
    pub ok: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    #[serde(default)]
    pub detail: serde_json::Value,
}

impl Response {
    pub fn ok(detail: serde_json::Value) -> Self {
        Response {
            ok: true,
            error: None,
            detail,
        }
    }
    pub fn err(e: impl std::fmt::Display) -> Self {
        Response {
            ok: false,
            error: Some(e.to_string()),
            detail: serde_json::Value::Null,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error(
        "no btm agent is listening on {socket}: {source}. Start it with `btm-agent run --volume DIR \
         --log LOGDIR` (or `cargo xtask run -- run ...`), or pass --socket"
    )]
    NotRunning {
        socket: String,
        source: std::io::Error,
    },
    #[error("talking to the agent on {socket}: {source}")]
    Io {
        socket: String,
        source: std::io::Error,
    },
    #[error("the agent refused: {0}")]
    Refused(String),
    #[error("the agent sent a malformed answer: {0}")]
    Malformed(String),
}

/// Sends one request and waits (up to `timeout`) for the answer.
pub fn call(
    socket: &Path,
    req: &Request,
    timeout: Duration,
) -> Result<serde_json::Value, ClientError> {
    let s = socket.display().to_string();
    let io = |source| ClientError::Io {
        socket: s.clone(),
        source,
    };
    let mut stream = UnixStream::connect(socket).map_err(|source| ClientError::NotRunning {
        socket: s.clone(),
        source,
    })?;
    stream.set_read_timeout(Some(timeout)).map_err(io)?;
    let mut line = serde_json::to_string(req).expect("serializable");
    line.push('\n');
    stream.write_all(line.as_bytes()).map_err(io)?;
    let mut answer = String::new();
    BufReader::new(&stream).read_line(&mut answer).map_err(io)?;
    let resp: Response = serde_json::from_str(&answer)
        .map_err(|e| ClientError::Malformed(format!("{e}: {answer:?}")))?;
    if resp.ok {
        Ok(resp.detail)
    } else {
        Err(ClientError::Refused(resp.error.unwrap_or_default()))
    }
}

/// Asks the agent to cut at `height`; returns once the height is durable in the log.
pub fn snapshot(
    socket: &Path,
    height: u64,
    timeout: Duration,
) -> Result<serde_json::Value, ClientError> {
    call(socket, &Request::Snapshot { height }, timeout)
}
