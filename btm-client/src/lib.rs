//! Hand block heights to a btm agent: the agent's unix-socket protocol (one JSON request line,
//! one JSON response line; docs/PROTOCOL.md) and [`snapshot`], the call a node embeds.
//!
//! Only std, serde and serde_json: a node depending on this crate pulls in nothing of the
//! agent (no eBPF, io_uring, object store or async runtime, no build script).
//!
//! ```no_run
//! use std::{path::Path, time::Duration};
//! // After the node has committed block 812345 to disk:
//! btm_client::snapshot(Path::new(btm_client::DEFAULT_SOCKET), 812_345, Duration::from_secs(60))
//!     .expect("height durable");
//! ```
use std::{
    io::{BufRead, BufReader, Write},
    os::unix::net::UnixStream,
    path::Path,
    time::Duration,
};

use serde::{Deserialize, Serialize};

pub const DEFAULT_SOCKET: &str = "/run/btm/btm.sock";

/// The protocol version this crate and the agent built with it speak. Every response carries it
/// as `"v"`; a request may carry it too, and an agent refuses a request of a newer version
/// (`unsupported_version`) instead of guessing what it means.
pub const PROTOCOL_VERSION: u32 = 1;

/// Why the agent refused or failed a request: stable names for programs to act on (the
/// message is for people and may change).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorCode {
    /// Not a request: bad JSON, an unknown command, a missing field.
    Malformed,
    /// The request carries a protocol version newer than the agent's.
    UnsupportedVersion,
    /// The request line is longer than 64 KiB.
    TooLarge,
    /// Too many connections are sending requests at once; retry.
    Busy,
    /// The caller may not ask this (a rollback from anyone but root, a height too far ahead).
    Forbidden,
    /// The height is not above the last kept one, and was never kept itself.
    NotAbove,
    /// No kept height satisfies a rollback.
    NoSuchHeight,
    /// A valid request that failed (I/O, the volume, the log): see the message.
    Failed,
    /// A code this client does not know (an agent of a newer version).
    #[serde(other)]
    Unknown,
}

#[derive(Debug, PartialEq, Eq, Serialize, Deserialize)]
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
        /// Globs of paths the rollback must leave as they are (`--preserve`).
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        preserve: Vec<String>,
    },
    Status,
}

impl Request {
    /// One request line as the agent reads it (without its newline): `None` for a blank line,
    /// which the agent ignores; otherwise the request, or the refusal to answer with.
    pub fn parse_line(line: &[u8]) -> Option<Result<Request, Response>> {
        if line.iter().all(u8::is_ascii_whitespace) {
            return None;
        }
        let malformed = |e: serde_json::Error| {
            Response::err(ErrorCode::Malformed, format!("malformed request: {e}"))
        };
        let v: serde_json::Value = match serde_json::from_slice(line) {
            Ok(v) => v,
            Err(e) => return Some(Err(malformed(e))),
        };
        if let Some(n) = v.get("v").and_then(serde_json::Value::as_u64)
            && n > PROTOCOL_VERSION as u64
        {
            return Some(Err(Response::err(
                ErrorCode::UnsupportedVersion,
                format!(
                    "request of protocol version {n}; this agent speaks version \
                     {PROTOCOL_VERSION}: upgrade the agent, or send version {PROTOCOL_VERSION}"
                ),
            )));
        }
        Some(serde_json::from_value(v).map_err(malformed))
    }
}

#[derive(Debug, PartialEq, Serialize, Deserialize)]
pub struct Response {
    /// The agent's protocol version (0 from agents that predate versions).
    #[serde(default)]
    pub v: u32,
    pub ok: bool,
    /// Why it failed, for people.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// Why it failed, for programs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub code: Option<ErrorCode>,
    #[serde(default)]
    pub detail: serde_json::Value,
}

impl Response {
    pub fn ok(detail: serde_json::Value) -> Self {
        Response {
            v: PROTOCOL_VERSION,
            ok: true,
            error: None,
            code: None,
            detail,
        }
    }

    pub fn err(code: ErrorCode, e: impl std::fmt::Display) -> Self {
        Response {
            v: PROTOCOL_VERSION,
            ok: false,
            error: Some(e.to_string()),
            code: Some(code),
            detail: serde_json::Value::Null,
        }
    }
}

/// Why a request did not get an answer from the agent.
#[derive(Debug)]
pub enum ClientError {
    /// Nothing listens on the socket (no agent, or another path).
    NotRunning {
        socket: String,
        source: std::io::Error,
    },
    /// The connection failed or timed out mid-request.
    Io {
        socket: String,
        source: std::io::Error,
    },
    /// The agent answered with an error (for example "heights must increase"); `code` is
    /// `None` from agents that predate error codes.
    Refused {
        code: Option<ErrorCode>,
        message: String,
    },
    /// The answer was not a response line.
    Malformed(String),
}

impl std::fmt::Display for ClientError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ClientError::NotRunning { socket, source } => write!(
                f,
                "no btm agent is listening on {socket}: {source}. Start it with `btm-agent run \
                 --volume DIR --log LOGDIR` (or `cargo xtask run -- run ...`), or pass --socket"
            ),
            ClientError::Io { socket, source } => {
                write!(f, "talking to the agent on {socket}: {source}")
            }
            ClientError::Refused { message, .. } => write!(f, "the agent refused: {message}"),
            ClientError::Malformed(what) => write!(f, "the agent sent a malformed answer: {what}"),
        }
    }
}

impl std::error::Error for ClientError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            ClientError::NotRunning { source, .. } | ClientError::Io { source, .. } => Some(source),
            _ => None,
        }
    }
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
    let mut v = serde_json::to_value(req).expect("serializable");
    v["v"] = PROTOCOL_VERSION.into();
    let mut line = v.to_string();
    line.push('\n');
    stream.write_all(line.as_bytes()).map_err(io)?;
    let mut answer = String::new();
    BufReader::new(&stream).read_line(&mut answer).map_err(io)?;
    let resp: Response = serde_json::from_str(&answer)
        .map_err(|e| ClientError::Malformed(format!("{e}: {answer:?}")))?;
    if resp.ok {
        Ok(resp.detail)
    } else {
        Err(ClientError::Refused {
            code: resp.code,
            message: resp.error.unwrap_or_default(),
        })
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

#[cfg(test)]
mod tests {
    use std::{io::Read, os::unix::net::UnixListener};

    use super::*;

    /// A one-shot agent: reads one request line, answers `answer`, returns the request.
    fn fake_agent(socket: &Path, answer: &'static str) -> std::thread::JoinHandle<String> {
        let l = UnixListener::bind(socket).unwrap();
        std::thread::spawn(move || {
            let (mut s, _) = l.accept().unwrap();
            let mut req = Vec::new();
            let mut b = [0u8; 1];
            while s.read(&mut b).unwrap() == 1 && b[0] != b'\n' {
                req.push(b[0]);
            }
            s.write_all(answer.as_bytes()).unwrap();
            String::from_utf8(req).unwrap()
        })
    }

    #[test]
    fn snapshot_sends_one_line_and_returns_the_detail() {
        let dir = tempfile::tempdir().unwrap();
        let sock = dir.path().join("s");
        let agent = fake_agent(&sock, "{\"ok\":true,\"detail\":{\"height\":7}}\n");
        let v = snapshot(&sock, 7, Duration::from_secs(5)).unwrap();
        assert_eq!(v["height"], 7);
        assert_eq!(
            agent.join().unwrap(),
            r#"{"cmd":"snapshot","height":7,"v":1}"#
        );
    }

    #[test]
    fn errors_name_the_socket_and_the_agents_reason() {
        let dir = tempfile::tempdir().unwrap();
        let sock = dir.path().join("s");
        let e = snapshot(&sock, 1, Duration::from_secs(1))
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("no btm agent is listening") && e.contains("btm-agent run"),
            "{e}"
        );
        // An agent that predates codes, then one that sends a code this client knows and one
        // it does not.
        for (answer, want) in [
            ("{\"ok\":false,\"error\":\"heights must increase\"}\n", None),
            (
                "{\"v\":1,\"ok\":false,\"error\":\"heights must increase\",\"code\":\"not_above\"}\n",
                Some(ErrorCode::NotAbove),
            ),
            (
                "{\"v\":9,\"ok\":false,\"error\":\"heights must increase\",\"code\":\"new\"}\n",
                Some(ErrorCode::Unknown),
            ),
        ] {
            let _ = std::fs::remove_file(&sock);
            let agent = fake_agent(&sock, answer);
            let e = snapshot(&sock, 1, Duration::from_secs(5)).unwrap_err();
            assert!(
                matches!(&e, ClientError::Refused { code, message }
                    if *code == want && message == "heights must increase"),
                "{e:?}"
            );
            agent.join().unwrap();
        }
    }

    #[test]
    fn request_lines_are_checked_for_version_and_shape() {
        let ok = Request::parse_line(br#"{"cmd":"snapshot","height":3,"v":1}"#);
        assert_eq!(ok, Some(Ok(Request::Snapshot { height: 3 })));
        let old = Request::parse_line(br#"{"cmd":"status"}"#);
        assert_eq!(old, Some(Ok(Request::Status)));
        assert_eq!(Request::parse_line(b"  "), None);
        let code = |line: &[u8]| Request::parse_line(line).unwrap().unwrap_err().code;
        assert_eq!(
            code(br#"{"cmd":"status","v":2}"#),
            Some(ErrorCode::UnsupportedVersion)
        );
        assert_eq!(code(br#"{"cmd":"reboot"}"#), Some(ErrorCode::Malformed));
        assert_eq!(code(b"{"), Some(ErrorCode::Malformed));
    }
}
