//! The least work an HTTP/1.1 CORS proxy on tokio can do per request: a measuring instrument,
//! not a product.
//!
//! It answers the benchmark's requests (`benches/proxy/policy.yaml`, hard-coded) the way corsair
//! and nginx do, with none of hyper's machinery and no header map: the client's head is parsed
//! in place with httparse, a preflight is answered from bytes, and a GET's head goes to the
//! upstream as the client wrote it, with `X-Forwarded-*` lines added; the upstream's answer comes
//! back with its `Access-Control-*` and hop-by-hop lines dropped and the policy's added. One
//! kept-alive upstream connection per client connection, one current-thread runtime per worker
//! on a `SO_REUSEPORT` listener, as corsair runs. It refuses what the benchmark never sends
//! (request bodies, chunked or unframed responses) by closing the connection.
//!
//! So its requests/s beside nginx's bound what any tokio HTTP/1.1 design could reach on this
//! machine, whatever it saves over hyper. Run it beside corsair and nginx with
//! `FLOOR=1 bash benches/proxy/run.sh`; it takes `corsair proxy`'s flags
//! (`--listen`, `--upstream`, `--worker-threads`; `--policy` and `--admin` are accepted and
//! ignored).

use std::io;
use std::net::{IpAddr, SocketAddr};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

const ORIGINS: [&[u8]; 2] = [b"https://app.example.com", b"https://admin.example.com"];
const METHODS: [&[u8]; 3] = [b"GET", b"POST", b"PUT"];
const HEADERS: [&[u8]; 2] = [b"content-type", b"x-requested-with"];
const HOP_BY_HOP: [&str; 8] = [
    "connection",
    "keep-alive",
    "proxy-connection",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
    "proxy-authorization",
];
const BUF: usize = 16 * 1024;

struct Args {
    listen: SocketAddr,
    upstream: SocketAddr,
    workers: usize,
}

fn args() -> Result<Option<Args>, String> {
    let mut listen = None;
    let mut upstream = None;
    let mut workers = 1;
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let mut value = || it.next().ok_or_else(|| format!("{flag} needs a value"));
        match flag.as_str() {
            "--listen" => listen = Some(value()?.parse().map_err(|e| format!("--listen: {e}"))?),
            "--upstream" => {
                let url = value()?;
                let host = url.strip_prefix("http://").unwrap_or(&url);
                upstream = Some(
                    host.trim_end_matches('/')
                        .parse()
                        .map_err(|e| format!("--upstream {url}: {e}"))?,
                );
            }
            "--worker-threads" => {
                workers = value()?
                    .parse()
                    .map_err(|e| format!("--worker-threads: {e}"))?
            }
            "--policy" | "--admin" => {
                value()?;
            }
            // `cargo bench` runs every bench target with `--bench`: this one is a server.
            "--bench" => {}
            other => return Err(format!("unknown argument {other}")),
        }
    }
    Ok(match (listen, upstream) {
        (Some(listen), Some(upstream)) => Some(Args {
            listen,
            upstream,
            workers: workers.max(1),
        }),
        _ => None,
    })
}

fn main() {
    let args = match args() {
        Ok(Some(args)) => args,
        Ok(None) => {
            eprintln!("floor: a server for benches/proxy/run.sh (FLOOR=1), not a criterion bench");
            return;
        }
        Err(e) => {
            eprintln!("floor: {e}");
            std::process::exit(2);
        }
    };
    let threads: Vec<_> = (0..args.workers)
        .map(|_| {
            let (listen, upstream) = (args.listen, args.upstream);
            std::thread::spawn(move || worker(listen, upstream))
        })
        .collect();
    for t in threads {
        if let Ok(Err(e)) = t.join() {
            eprintln!("floor: {e}");
            std::process::exit(1);
        }
    }
}

fn worker(listen: SocketAddr, upstream: SocketAddr) -> io::Result<()> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_io()
        .build()?;
    runtime.block_on(async move {
        let socket = socket2::Socket::new(
            socket2::Domain::for_address(listen),
            socket2::Type::STREAM,
            None,
        )?;
        socket.set_reuse_address(true)?;
        socket.set_reuse_port(true)?;
        socket.set_nonblocking(true)?;
        socket.bind(&listen.into())?;
        socket.listen(4096)?;
        let listener = TcpListener::from_std(socket.into())?;
        loop {
            let (client, peer) = listener.accept().await?;
            tokio::spawn(async move {
                // A connection ends on any error: this is a measuring instrument.
                let _ = serve(client, peer.ip(), upstream).await;
            });
        }
    })
}

/// One client connection: requests one after the other, each answered before the next is read.
async fn serve(mut client: TcpStream, peer: IpAddr, upstream: SocketAddr) -> io::Result<()> {
    client.set_nodelay(true)?;
    let forwarded = format!("x-forwarded-for: {peer}\r\nx-forwarded-proto: http\r\n");
    let mut up: Option<TcpStream> = None;
    let mut buf = vec![0u8; BUF];
    let mut filled = 0;
    let mut ubuf = vec![0u8; BUF];
    let mut out = Vec::with_capacity(BUF);
    loop {
        let mut lines = [httparse::EMPTY_HEADER; 32];
        let mut req = httparse::Request::new(&mut lines);
        let head_len = match req.parse(&buf[..filled]) {
            Ok(httparse::Status::Complete(n)) => n,
            Ok(httparse::Status::Partial) if filled < BUF => {
                let n = client.read(&mut buf[filled..]).await?;
                if n == 0 {
                    return Ok(());
                }
                filled += n;
                continue;
            }
            _ => return Err(io::ErrorKind::InvalidData.into()),
        };
        let (mut origin, mut request_method, mut request_headers, mut host) =
            (None, None, None, None);
        for h in req.headers.iter() {
            let name = h.name.as_bytes();
            if name.eq_ignore_ascii_case(b"origin") {
                origin = Some(h.value);
            } else if name.eq_ignore_ascii_case(b"access-control-request-method") {
                request_method = Some(h.value);
            } else if name.eq_ignore_ascii_case(b"access-control-request-headers") {
                request_headers = Some(h.value);
            } else if name.eq_ignore_ascii_case(b"host") {
                host = Some(h.value);
            } else if name.eq_ignore_ascii_case(b"content-length") && h.value != b"0"
                || name.eq_ignore_ascii_case(b"transfer-encoding")
            {
                return Err(io::ErrorKind::Unsupported.into());
            }
        }
        let allowed = origin.filter(|o| ORIGINS.contains(o));
        out.clear();
        if req.method == Some("OPTIONS") && origin.is_some() && request_method.is_some() {
            let ok = allowed.is_some()
                && request_method.is_some_and(|m| METHODS.contains(&m))
                && request_headers.is_none_or(headers_allowed);
            preflight(&mut out, allowed.filter(|_| ok));
        } else {
            // The head as the client wrote it, less its hop-by-hop lines and its blank line.
            out.extend_from_slice(req.method.unwrap_or("GET").as_bytes());
            out.push(b' ');
            out.extend_from_slice(req.path.unwrap_or("/").as_bytes());
            out.extend_from_slice(b" HTTP/1.1\r\n");
            for h in req.headers.iter() {
                if !HOP_BY_HOP.iter().any(|n| h.name.eq_ignore_ascii_case(n)) {
                    line(&mut out, h.name.as_bytes(), h.value);
                }
            }
            out.extend_from_slice(forwarded.as_bytes());
            if let Some(host) = host {
                line(&mut out, b"x-forwarded-host", host);
            }
            out.extend_from_slice(b"\r\n");
            let conn = match &mut up {
                Some(conn) => conn,
                None => {
                    let conn = TcpStream::connect(upstream).await?;
                    conn.set_nodelay(true)?;
                    up.insert(conn)
                }
            };
            conn.write_all(&out).await?;
            out.clear();
            answer(conn, &mut ubuf, &mut out, allowed).await?;
        }
        client.write_all(&out).await?;
        buf.copy_within(head_len..filled, 0);
        filled -= head_len;
    }
}

/// Whether every name listed in `Access-Control-Request-Headers` is allowed.
fn headers_allowed(value: &[u8]) -> bool {
    value.split(|b| *b == b',').all(|name| {
        let name = name.trim_ascii();
        name.is_empty() || HEADERS.iter().any(|h| h.eq_ignore_ascii_case(name))
    })
}

fn line(out: &mut Vec<u8>, name: &[u8], value: &[u8]) {
    out.extend_from_slice(name);
    out.extend_from_slice(b": ");
    out.extend_from_slice(value);
    out.extend_from_slice(b"\r\n");
}

fn preflight(out: &mut Vec<u8>, allowed: Option<&[u8]>) {
    let Some(origin) = allowed else {
        out.extend_from_slice(b"HTTP/1.1 403 Forbidden\r\ncontent-length: 0\r\n\r\n");
        return;
    };
    out.extend_from_slice(b"HTTP/1.1 204 No Content\r\n");
    line(out, b"access-control-allow-origin", origin);
    out.extend_from_slice(
        b"access-control-allow-credentials: true\r\n\
          access-control-allow-methods: GET, POST, PUT\r\n\
          access-control-allow-headers: Content-Type, X-Requested-With\r\n\
          access-control-max-age: 600\r\n\
          vary: origin, access-control-request-method, access-control-request-headers\r\n\r\n",
    );
}

/// Reads the upstream's answer into `ubuf` and writes the client's into `out`: its head less the
/// upstream's `Access-Control-*` and hop-by-hop lines, the policy's lines, then the body.
async fn answer(
    conn: &mut TcpStream,
    ubuf: &mut [u8],
    out: &mut Vec<u8>,
    allowed: Option<&[u8]>,
) -> io::Result<()> {
    let mut filled = 0;
    loop {
        let n = conn.read(&mut ubuf[filled..]).await?;
        if n == 0 {
            return Err(io::ErrorKind::UnexpectedEof.into());
        }
        filled += n;
        let mut lines = [httparse::EMPTY_HEADER; 32];
        let mut resp = httparse::Response::new(&mut lines);
        let head_len = match resp.parse(&ubuf[..filled]) {
            Ok(httparse::Status::Complete(n)) => n,
            Ok(httparse::Status::Partial) if filled < ubuf.len() => continue,
            _ => return Err(io::ErrorKind::InvalidData.into()),
        };
        let mut length = None;
        let mut vary = false;
        // The status line as the upstream wrote it.
        let status_end = ubuf[..head_len]
            .windows(2)
            .position(|w| w == b"\r\n")
            .unwrap_or(0);
        out.extend_from_slice(&ubuf[..status_end + 2]);
        for h in resp.headers.iter() {
            let name = h.name.as_bytes();
            if name.len() > 15 && name[..15].eq_ignore_ascii_case(b"access-control-")
                || HOP_BY_HOP.iter().any(|n| h.name.eq_ignore_ascii_case(n))
            {
                continue;
            }
            if name.eq_ignore_ascii_case(b"content-length") {
                length = std::str::from_utf8(h.value)
                    .ok()
                    .and_then(|v| v.parse::<usize>().ok());
            }
            if name.eq_ignore_ascii_case(b"vary") {
                vary = true;
                out.extend_from_slice(b"vary: ");
                out.extend_from_slice(h.value);
                out.extend_from_slice(b", origin\r\n");
                continue;
            }
            line(out, name, h.value);
        }
        if let Some(origin) = allowed {
            line(out, b"access-control-allow-origin", origin);
            out.extend_from_slice(
                b"access-control-allow-credentials: true\r\n\
                  access-control-expose-headers: X-Request-Id\r\n",
            );
        }
        if !vary {
            out.extend_from_slice(b"vary: origin\r\n");
        }
        out.extend_from_slice(b"\r\n");
        let Some(length) = length else {
            return Err(io::ErrorKind::Unsupported.into());
        };
        let end = head_len + length;
        if end > ubuf.len() {
            return Err(io::ErrorKind::Unsupported.into());
        }
        while filled < end {
            let n = conn.read(&mut ubuf[filled..end]).await?;
            if n == 0 {
                return Err(io::ErrorKind::UnexpectedEof.into());
            }
            filled += n;
        }
        out.extend_from_slice(&ubuf[head_len..end]);
        return Ok(());
    }
}
