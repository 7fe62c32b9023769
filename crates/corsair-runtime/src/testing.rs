//! Helpers for tests of servers built on this crate (feature `test-util`, for dev-dependencies).

use std::collections::HashSet;
use std::io::{Read as _, Write as _};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

pub mod h2;
pub mod upstream;

/// One HTTP/1.1 GET with `Connection: close` over a plain socket, blocking; the whole response as
/// the server sent it (status line, head and body). `headers` is extra header lines, each ending
/// in `\r\n`. For black-box tests of a server in another process.
///
/// # Panics
///
/// When the connection, the write or a 10 s read fails.
pub fn http_get(addr: SocketAddr, path: &str, headers: &str) -> String {
    let mut stream = TcpStream::connect(addr).expect("connect");
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: api.test\r\nConnection: close\r\n{headers}\r\n"
    )
    .expect("write request");
    let mut response = String::new();
    stream.read_to_string(&mut response).expect("read response");
    response
}

/// Whether this process holds a listening TCP socket on `addr`'s port: an entry in state LISTEN
/// on that port in `/proc/net/tcp` or `tcp6` whose inode is one of this process's file
/// descriptors.
///
/// "Closed" checks should use this, not a failing `connect`: once a listener is dropped, its port
/// is free, and another process on the machine (or the kernel's choice of the same port as a
/// connect's source, a TCP self-connect) can make that connect succeed.
///
/// # Panics
///
/// When `/proc/self/fd` cannot be read: the check needs Linux.
pub fn listening_here(addr: SocketAddr) -> bool {
    let ours: HashSet<String> = std::fs::read_dir("/proc/self/fd")
        .expect("/proc/self/fd")
        .filter_map(|fd| std::fs::read_link(fd.ok()?.path()).ok())
        .filter_map(|target| {
            let target = target.to_string_lossy().into_owned();
            Some(
                target
                    .strip_prefix("socket:[")?
                    .strip_suffix(']')?
                    .to_owned(),
            )
        })
        .collect();
    // Both tables: a listener on `[::]` serves IPv4 too and is listed only in `tcp6`.
    let table: String = ["/proc/net/tcp", "/proc/net/tcp6"]
        .iter()
        .filter_map(|path| std::fs::read_to_string(path).ok())
        .collect();
    let local = format!(":{:04X}", addr.port());
    table.lines().any(|line| {
        let fields: Vec<&str> = line.split_whitespace().collect();
        // local_address is field 1 ("0100007F:1F90"), st field 3 ("0A" is LISTEN), inode field 9.
        // Each table's header line has no inode in field 9 that we hold.
        fields.len() > 9
            && fields[1].ends_with(&local)
            && fields[3] == "0A"
            && ours.contains(fields[9])
    })
}

#[cfg(test)]
mod tests {
    use super::{http_get, listening_here};
    use std::io::{Read as _, Write as _};

    #[test]
    fn http_get_sends_one_closing_request_and_returns_the_whole_answer() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let addr = listener.local_addr().expect("addr");
        let server = std::thread::spawn(move || {
            let (mut conn, _) = listener.accept().expect("accept");
            let mut request = Vec::new();
            while !request.ends_with(b"\r\n\r\n") {
                let mut byte = [0u8];
                conn.read_exact(&mut byte).expect("read");
                request.push(byte[0]);
            }
            conn.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok")
                .expect("write");
            String::from_utf8(request).expect("utf-8")
        });
        let response = http_get(addr, "/p?q=1", "Origin: https://a.test\r\n");
        let request = server.join().expect("server");
        assert_eq!(
            request,
            "GET /p?q=1 HTTP/1.1\r\nHost: api.test\r\nConnection: close\r\n\
             Origin: https://a.test\r\n\r\n"
        );
        assert_eq!(response, "HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok");
    }

    #[test]
    fn finds_a_listener_of_this_process_until_it_is_dropped() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let addr = listener.local_addr().expect("addr");
        assert!(listening_here(addr), "{addr} not found while bound");
        // A connected socket on the same port is not a listener.
        let client = std::net::TcpStream::connect(addr).expect("connect");
        let (accepted, _) = listener.accept().expect("accept");
        drop(listener);
        assert!(!listening_here(addr), "{addr} still listed after the drop");
        drop((client, accepted));
    }
}
