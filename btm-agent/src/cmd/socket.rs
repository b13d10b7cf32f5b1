//! Requests over the agent's socket. Each connection is read on its own thread, with a
//! deadline for the whole request line and a size cap, so a slow or huge client cannot hold
//! up other clients' heights. The run loop then handles complete requests one at a time.
use std::{
    io::{Read, Write},
    os::unix::net::{UnixListener, UnixStream},
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
        mpsc::{Receiver, sync_channel},
    },
    time::{Duration, Instant},
};

use super::proto::{ErrorCode, Request, Response};

/// How long a client may take to send its request line.
const REQUEST_DEADLINE: Duration = Duration::from_secs(10);
/// The longest request line (a request is a few dozen bytes).
const MAX_REQUEST: usize = 64 << 10;
/// Connections read at once; more are answered "busy" and closed.
const MAX_READERS: usize = 64;

/// A complete request, or why it could not be read, with the client's uid (`SO_PEERCRED`).
pub struct Incoming {
    /// The request, or the refusal to answer it with.
    pub req: Result<Request, Response>,
    pub peer_uid: Option<u32>,
    pub stream: UnixStream,
}

impl Incoming {
    /// Sends the response line; a client that went away is not an error.
    pub fn answer(mut self, resp: &Response) {
        let mut out = serde_json::to_string(resp).unwrap_or_default();
        out.push('\n');
        let _ = self.stream.set_write_timeout(Some(REQUEST_DEADLINE));
        let _ = self.stream.write_all(out.as_bytes());
    }
}

/// Accepts connections until the listener is shut down (see `stop_on_signals`); complete
/// requests arrive on the returned channel.
pub fn serve(listener: UnixListener, stop: Arc<AtomicBool>) -> Receiver<Incoming> {
    let (tx, rx) = sync_channel(MAX_READERS);
    std::thread::spawn(move || {
        let conns = listener
            .incoming()
            .take_while(|_| !stop.load(Ordering::SeqCst))
            .flatten();
        crate::conn::each_on_its_thread(
            conns,
            MAX_READERS,
            |s| {
                reject(
                    s,
                    ErrorCode::Busy,
                    "busy: too many connections are sending requests; retry",
                )
            },
            move |s| {
                if let Some(inc) = read_request(s) {
                    let _ = tx.send(inc);
                }
            },
        );
    });
    rx
}

fn reject(stream: UnixStream, code: ErrorCode, why: &str) {
    let resp = Response::err(code, why);
    Incoming {
        req: Err(Response::err(code, why)),
        peer_uid: None,
        stream,
    }
    .answer(&resp);
}

/// Reads one request line within [`REQUEST_DEADLINE`]; None when the client sent nothing
/// usable in time (it is dropped without an answer) or too much (answered, then dropped).
fn read_request(mut stream: UnixStream) -> Option<Incoming> {
    let peer_uid =
        nix::sys::socket::getsockopt(&stream, nix::sys::socket::sockopt::PeerCredentials)
            .ok()
            .map(|c| c.uid());
    let deadline = Instant::now() + REQUEST_DEADLINE;
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    let end = loop {
        if let Some(i) = buf.iter().position(|&b| b == b'\n') {
            break i;
        }
        if buf.len() > MAX_REQUEST {
            reject(
                stream,
                ErrorCode::TooLarge,
                "request too large: one JSON line of at most 64 KiB",
            );
            return None;
        }
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() || stream.set_read_timeout(Some(left)).is_err() {
            return None;
        }
        match stream.read(&mut chunk) {
            Ok(0) => break buf.len(),
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(_) => return None,
        }
    };
    let req = Request::parse_line(&buf[..end])?;
    Some(Incoming {
        req,
        peer_uid,
        stream,
    })
}
