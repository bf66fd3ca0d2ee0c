//! Loopback networking for the harness: free ports for the servers it starts, and the small
//! HTTP/1.0 client its readiness probes use (std only, so probes work from any test, async or
//! not).

use std::io::{self, Read as _, Write as _};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::time::Duration;

use crate::HarnessError;

/// Timeout of one probe's connect, write or read.
const PROBE_TIMEOUT: Duration = Duration::from_secs(2);
/// Fresh-port attempts in [`on_free_ports`]: another process may take a port between our probe
/// and the server's bind.
const START_ATTEMPTS: usize = 5;

/// Returns a port on 127.0.0.1 that was free a moment ago (bind to port 0, read, release).
///
/// Another process can take it before you bind it; retry on failure, as
/// [`NatsServer::start`](crate::NatsServer::start) does.
///
/// # Panics
///
/// If no port can be bound on 127.0.0.1 at all, which means the machine has no loopback.
pub fn free_port() -> u16 {
    match reserve_ports::<1>() {
        Ok([port]) => port,
        Err(error) => panic!("cannot bind 127.0.0.1:0 to find a free port: {error}"),
    }
}

/// `N` distinct free ports: all listeners are held until every port is known.
pub(crate) fn reserve_ports<const N: usize>() -> io::Result<[u16; N]> {
    let mut listeners = Vec::with_capacity(N);
    let mut ports = [0; N];
    for port in &mut ports {
        let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0))?;
        *port = listener.local_addr()?.port();
        listeners.push(listener);
    }
    Ok(ports)
}

/// Runs `launch` on `N` distinct free ports, and again on fresh ones (up to [`START_ATTEMPTS`]
/// runs in all) while the server it starts exits at once, as one does when another process took
/// a port between the probe and its bind.
pub(crate) fn on_free_ports<const N: usize>(
    mut launch: impl FnMut([u16; N]) -> Result<(), HarnessError>,
) -> Result<(), HarnessError> {
    let mut attempt = 1;
    loop {
        match launch(reserve_ports().map_err(HarnessError::FreePort)?) {
            Err(HarnessError::Exited { .. }) if attempt < START_ATTEMPTS => attempt += 1,
            result => return result,
        }
    }
}

/// `GET path` over HTTP/1.0 on 127.0.0.1:`port`; returns the status code and the body.
pub(crate) fn http_get(port: u16, path: &str) -> io::Result<(u16, String)> {
    let mut stream = connect_loopback(port)?;
    write!(
        stream,
        "GET {path} HTTP/1.0\r\nHost: 127.0.0.1:{port}\r\nConnection: close\r\n\r\n"
    )?;
    let mut response = Vec::new();
    // HTTP/1.0: the server closes the connection after the response.
    stream.take(1 << 20).read_to_end(&mut response)?;
    let response = String::from_utf8_lossy(&response);
    let (head, body) = response.split_once("\r\n\r\n").unwrap_or((&response, ""));
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|code| code.parse().ok())
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidData, format!("not an HTTP response: {head:?}")))?;
    Ok((status, body.trim().to_owned()))
}

/// A TCP connection to 127.0.0.1:`port` with every operation bounded by [`PROBE_TIMEOUT`].
pub(crate) fn connect_loopback(port: u16) -> io::Result<TcpStream> {
    let address = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
    let stream = TcpStream::connect_timeout(&address, PROBE_TIMEOUT)?;
    stream.set_read_timeout(Some(PROBE_TIMEOUT))?;
    stream.set_write_timeout(Some(PROBE_TIMEOUT))?;
    Ok(stream)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn free_port_can_be_bound() {
        let port = free_port();
        assert_ne!(port, 0);
        TcpListener::bind((Ipv4Addr::LOCALHOST, port)).expect("the port is free");
    }
}
