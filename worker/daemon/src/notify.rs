//! `sd_notify`: telling systemd (a `Type=notify` unit) that kilnd is ready,
//! reloading or stopping.
//!
//! The protocol is one datagram of `KEY=VALUE` lines to the unix socket
//! named by `NOTIFY_SOCKET` (a path, or `@name` for the abstract
//! namespace). Written here in a few lines rather than through a crate;
//! without `NOTIFY_SOCKET` every call does nothing.

use std::io;
use std::os::unix::net::UnixDatagram;

/// `READY=1`: every address is listening.
pub const READY: &str = "READY=1";
/// `STOPPING=1`: shutting down (builds are being cancelled).
pub const STOPPING: &str = "STOPPING=1";
/// `RELOADING=1`: SIGHUP is re-reading the configuration.
pub const RELOADING: &str = "RELOADING=1";

/// Sends `state` (one or more `KEY=VALUE` lines) to `NOTIFY_SOCKET`.
/// Returns whether a message was sent: `false` when kilnd was not started
/// with a notify socket.
pub fn notify(state: &str) -> io::Result<bool> {
    match std::env::var_os("NOTIFY_SOCKET") {
        Some(socket) if !socket.is_empty() => {
            send(&socket.to_string_lossy(), state)?;
            Ok(true)
        }
        _ => Ok(false),
    }
}

/// Logs instead of failing: readiness is a courtesy to the service
/// manager, never a reason to stop building.
pub fn notify_logged(state: &str) {
    match notify(state) {
        Ok(true) => tracing::debug!(state, "notified the service manager"),
        Ok(false) => {}
        Err(e) => tracing::warn!(state, error = %e, "cannot notify the service manager"),
    }
}

/// Sends one datagram to the socket `addr` (`@` means abstract).
fn send(addr: &str, state: &str) -> io::Result<()> {
    let socket = UnixDatagram::unbound()?;
    if let Some(name) = addr.strip_prefix('@') {
        use std::os::linux::net::SocketAddrExt;
        let to = std::os::unix::net::SocketAddr::from_abstract_name(name.as_bytes())?;
        socket.send_to_addr(state.as_bytes(), &to)?;
    } else {
        socket.send_to(state.as_bytes(), addr)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_datagram_reaches_a_path_socket() {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("notify.sock");
        let rx = UnixDatagram::bind(&path).expect("bind");
        send(path.to_str().expect("utf8"), READY).expect("send");
        let mut buf = [0u8; 64];
        let n = rx.recv(&mut buf).expect("recv");
        assert_eq!(&buf[..n], b"READY=1");
    }

    #[test]
    fn a_datagram_reaches_an_abstract_socket() {
        use std::os::linux::net::SocketAddrExt;
        let name = format!("kilnd-notify-test-{}", std::process::id());
        let addr =
            std::os::unix::net::SocketAddr::from_abstract_name(name.as_bytes()).expect("name");
        let rx = UnixDatagram::bind_addr(&addr).expect("bind");
        send(&format!("@{name}"), STOPPING).expect("send");
        let mut buf = [0u8; 64];
        let n = rx.recv(&mut buf).expect("recv");
        assert_eq!(&buf[..n], b"STOPPING=1");
    }
}
