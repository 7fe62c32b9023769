//! Listening sockets.
//!
//! Every server listens on `[::]` by default, so that one socket takes IPv4 and IPv6 clients
//! alike: pods of IPv6-only and dual-stack clusters are reached on their IPv6 address, which a
//! socket on `0.0.0.0` refuses. The socket is made dual-stack whatever the host's
//! `net.ipv6.bindv6only` says; IPv4 clients then appear as `::ffff:a.b.c.d`, which [`canonical`]
//! turns back into `a.b.c.d` as each connection is accepted. On a host
//! without IPv6 at all (a kernel booted with `ipv6.disable=1`), `[::]` falls back to
//! `0.0.0.0` on the same port.

use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::time::Duration;

/// A listening socket on `addr` (non-blocking, backlog 1024, `SO_REUSEADDR`), with
/// `SO_REUSEPORT` when `reuse_port` (several sockets sharing one port, one per worker).
///
/// # Errors
///
/// The socket's own: the address is taken, not local, or not permitted.
pub fn std_listener(addr: SocketAddr, reuse_port: bool) -> io::Result<std::net::TcpListener> {
    with_ipv4_fallback(addr, |addr| open(addr, reuse_port))
}

/// Fails as [`std_listener`] would without `SO_REUSEPORT` when `addr` is taken. Linux lets any
/// later `SO_REUSEPORT` socket of the same user join a port, so a group of them is bound only
/// after this check: a second process on the port would otherwise share its connections.
///
/// # Errors
///
/// As [`std_listener`].
pub fn check_free(addr: SocketAddr) -> io::Result<()> {
    with_ipv4_fallback(addr, |addr| socket(addr, false)?.bind(&addr.into()))
}

/// [`std_listener`] for tokio, without `SO_REUSEPORT`. Must be called within a tokio runtime.
///
/// # Errors
///
/// As [`std_listener`].
pub fn tokio_listener(addr: SocketAddr) -> io::Result<tokio::net::TcpListener> {
    tokio::net::TcpListener::from_std(std_listener(addr, false)?)
}

/// `peer` as it should be shown: an IPv4 client of a dual-stack socket as `a.b.c.d:port`, not
/// `[::ffff:a.b.c.d]:port`.
pub fn canonical(peer: SocketAddr) -> SocketAddr {
    SocketAddr::new(peer.ip().to_canonical(), peer.port())
}

/// Opens `addr`; when that is `[::]` and the host has no IPv6, opens `0.0.0.0` on its port.
fn with_ipv4_fallback<T>(
    addr: SocketAddr,
    open: impl Fn(SocketAddr) -> io::Result<T>,
) -> io::Result<T> {
    match open(addr) {
        Err(err) if addr.ip() == IpAddr::V6(Ipv6Addr::UNSPECIFIED) && no_ipv6(&err) => {
            let v4 = SocketAddr::new(Ipv4Addr::UNSPECIFIED.into(), addr.port());
            tracing::info!(%addr, listen = %v4, error = %err, "no IPv6 on this host: listening on IPv4 only");
            open(v4)
        }
        other => other,
    }
}

/// The errors of an IPv6 socket on a host without IPv6: the address family is not supported,
/// or `::` cannot be assigned.
fn no_ipv6(err: &io::Error) -> bool {
    matches!(
        err.raw_os_error(),
        Some(libc::EAFNOSUPPORT | libc::EADDRNOTAVAIL)
    )
}

fn open(addr: SocketAddr, reuse_port: bool) -> io::Result<std::net::TcpListener> {
    let socket = socket(addr, reuse_port)?;
    socket.set_nonblocking(true)?;
    socket.bind(&addr.into())?;
    socket.listen(1024)?;
    Ok(socket.into())
}

/// A TCP socket for `addr`, not bound yet: dual-stack when IPv6, `SO_REUSEADDR`, and
/// `SO_REUSEPORT` when `reuse_port`.
fn socket(addr: SocketAddr, reuse_port: bool) -> io::Result<socket2::Socket> {
    let socket = socket2::Socket::new(
        socket2::Domain::for_address(addr),
        socket2::Type::STREAM,
        None,
    )?;
    if addr.is_ipv6() {
        socket.set_only_v6(false)?;
    }
    if reuse_port {
        socket.set_reuse_port(true)?;
    }
    socket.set_reuse_address(true)?;
    Ok(socket)
}

/// What a connection's first bytes say it speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Protocol {
    /// Anything but the HTTP/2 preface (which hyper then reads as HTTP/1.x, or refuses).
    Http1,
    /// The HTTP/2 preface: h2c with prior knowledge.
    Http2,
}

/// Waits until the connection's first bytes decide its protocol (hyper's: the HTTP/2 preface, or
/// anything that departs from it), for at most `timeout`; `None` if they did not come in time,
/// or the client closed first.
///
/// Until then hyper-util's `auto` server runs no header timer, so a connection that sends
/// nothing, or only the start of the preface, would be held for as long as the client likes.
pub async fn protocol_known(stream: &tokio::net::TcpStream, timeout: Duration) -> Option<Protocol> {
    const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
    let deadline = tokio::time::Instant::now() + timeout;
    let mut seen = [0u8; PREFACE.len()];
    loop {
        let n = match tokio::time::timeout_at(deadline, stream.peek(&mut seen)).await {
            Ok(Ok(n)) => n,
            Ok(Err(_)) | Err(_) => return None,
        };
        if n == 0 {
            return None;
        }
        if seen[..n] != PREFACE[..n] {
            return Some(Protocol::Http1);
        }
        if n == PREFACE.len() {
            return Some(Protocol::Http2);
        }
        // The start of the preface and no more yet. A peek answers at once while bytes wait,
        // so look again shortly; a client sends its preface whole, so this is rare.
        if tokio::time::Instant::now() + PREFACE_POLL >= deadline {
            return None;
        }
        tokio::time::sleep(PREFACE_POLL).await;
    }
}

/// How often a connection that has sent part of the HTTP/2 preface is looked at again.
const PREFACE_POLL: Duration = Duration::from_millis(10);

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Write};
    use std::net::TcpStream;

    /// Accepts one connection from `client` and returns the peer address the server saw.
    fn accept_from(listener: &std::net::TcpListener, client: SocketAddr) -> SocketAddr {
        let mut stream = TcpStream::connect(client).expect("connect");
        stream.write_all(b"x").expect("write");
        listener.set_nonblocking(false).expect("blocking");
        let (mut accepted, peer) = listener.accept().expect("accept");
        let mut byte = [0u8; 1];
        accepted.read_exact(&mut byte).expect("read");
        assert_eq!(&byte, b"x");
        peer
    }

    #[test]
    fn the_unspecified_ipv6_address_takes_ipv4_and_ipv6_clients() {
        let listener = std_listener("[::]:0".parse().expect("addr"), false).expect("listen");
        let port = listener.local_addr().expect("local address").port();
        let peer = accept_from(&listener, SocketAddr::from((Ipv4Addr::LOCALHOST, port)));
        assert_eq!(canonical(peer).ip(), IpAddr::from(Ipv4Addr::LOCALHOST));
        assert_eq!(canonical(peer).port(), peer.port());
        // A host (or container) whose loopback has no IPv6 address cannot be the IPv6 client.
        if std::net::TcpListener::bind("[::1]:0").is_ok() {
            let peer = accept_from(&listener, SocketAddr::from((Ipv6Addr::LOCALHOST, port)));
            assert_eq!(peer.ip(), IpAddr::from(Ipv6Addr::LOCALHOST));
        } else {
            eprintln!("no IPv6 loopback on this host: the IPv6 client was not tried");
        }
    }

    #[test]
    fn without_ipv6_the_unspecified_address_falls_back_to_ipv4_on_the_same_port() {
        let refuse_v6 = |addr: SocketAddr| {
            if addr.is_ipv6() {
                Err(io::Error::from_raw_os_error(libc::EAFNOSUPPORT))
            } else {
                Ok(addr)
            }
        };
        let any6: SocketAddr = "[::]:15380".parse().expect("addr");
        assert_eq!(
            with_ipv4_fallback(any6, refuse_v6).expect("fallback"),
            "0.0.0.0:15380".parse::<SocketAddr>().expect("addr")
        );
        // A specific IPv6 address is what the user asked for: no fallback.
        let one6: SocketAddr = "[fd00::1]:15380".parse().expect("addr");
        let err = with_ipv4_fallback(one6, refuse_v6).expect_err("no fallback");
        assert_eq!(err.raw_os_error(), Some(libc::EAFNOSUPPORT));
        // Any other error, such as a port in use, is reported as it is.
        let in_use = |_: SocketAddr| -> io::Result<SocketAddr> {
            Err(io::Error::from_raw_os_error(libc::EADDRINUSE))
        };
        let err = with_ipv4_fallback(any6, in_use).expect_err("in use");
        assert_eq!(err.raw_os_error(), Some(libc::EADDRINUSE));
    }

    #[test]
    fn reuse_port_lets_workers_share_a_port() {
        let first = std_listener("[::]:0".parse().expect("addr"), true).expect("listen");
        let addr = first.local_addr().expect("local address");
        let second = std_listener(addr, true).expect("a second socket on the same port");
        assert_eq!(second.local_addr().expect("local address"), addr);
        assert!(
            std_listener(addr, false).is_err(),
            "a socket without SO_REUSEPORT may not join them"
        );
    }
}
