//! Readiness for systemd (`Type=notify`): one datagram to `$NOTIFY_SOCKET`, the whole of
//! sd_notify(3) the agent needs, in std. With it, units ordered after btm-agent.service (the
//! node's) start only once the socket accepts heights.
use std::os::unix::net::UnixDatagram;

/// Tells systemd the agent is ready; does nothing outside a notify unit. Failures only warn:
/// the agent works without a service manager.
pub fn ready() {
    if let Err(e) = send("READY=1") {
        tracing::warn!("telling systemd the agent is ready failed: {e}");
    }
}

/// Tells systemd the agent is stopping (a cut in progress finishes first).
pub fn stopping() {
    let _ = send("STOPPING=1");
}

fn send(state: &str) -> std::io::Result<()> {
    let Some(path) = std::env::var_os("NOTIFY_SOCKET") else {
        return Ok(());
    };
    let sock = UnixDatagram::unbound()?;
    // `@name` is a socket in the abstract namespace.
    let addr = match path.as_encoded_bytes().strip_prefix(b"@") {
        Some(name) => {
            use std::os::linux::net::SocketAddrExt;
            std::os::unix::net::SocketAddr::from_abstract_name(name)?
        }
        None => std::os::unix::net::SocketAddr::from_pathname(&path)?,
    };
    sock.send_to_addr(state.as_bytes(), &addr)?;
    Ok(())
}
