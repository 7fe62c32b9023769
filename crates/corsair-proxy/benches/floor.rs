//! The least work an HTTP/1.1 CORS proxy on tokio can do per request: a measuring instrument,
//! not a product.
//!
//! It does corsair's job with none of hyper's machinery and no header map: the client's head is
//! parsed in place with httparse, corsair's engine decides on the policy file, a preflight is
//! answered from bytes, and a GET's head goes to the upstream as the client wrote it, with
//! `X-Forwarded-*` lines added; the upstream's answer comes back with its `Access-Control-*` and
//! hop-by-hop lines dropped and the decided ones added. What a real proxy could not skip is kept:
//! every read is bounded by a timer and every request counted. One kept-alive upstream
//! connection per client connection, one current-thread runtime per worker on a `SO_REUSEPORT`
//! listener, as corsair runs. It refuses what the benchmark never sends (request bodies, chunked
//! or unframed responses) by closing the connection, and has no logs, reload, h2c or checks
//! beyond httparse's.
//!
//! So its requests/s beside nginx's bound what a tokio HTTP/1.1 design without hyper could reach
//! on this machine. Run it beside corsair and nginx with `FLOOR=1 bash benches/proxy/run.sh`; it
//! takes `corsair proxy`'s flags (`--policy`, `--listen`, `--upstream`, `--worker-threads`;
//! `--admin` is accepted and ignored).

use std::io::{self, Write as _};
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use corsair_policy::{Action, Engine, RequestInfo, ResponseHeaders};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// Requests answered here and requests forwarded, as a metrics endpoint would count them.
static ANSWERED: AtomicU64 = AtomicU64::new(0);
static FORWARDED: AtomicU64 = AtomicU64::new(0);
/// The bound on every read, as corsair's header read and upstream timeouts.
const READ_TIMEOUT: Duration = Duration::from_secs(30);
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
    policy: std::path::PathBuf,
    listen: SocketAddr,
    upstream: SocketAddr,
    workers: usize,
}

fn args() -> Result<Option<Args>, String> {
    let mut policy = None;
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
            "--policy" => policy = Some(value()?.into()),
            "--admin" => {
                value()?;
            }
            // `cargo bench` runs every bench target with `--bench`: this one is a server.
            "--bench" => {}
            other => return Err(format!("unknown argument {other}")),
        }
    }
    Ok(match (policy, listen, upstream) {
        (Some(policy), Some(listen), Some(upstream)) => Some(Args {
            policy,
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
    let engine = match compile(&args.policy) {
        Ok(engine) => Arc::new(engine),
        Err(e) => {
            eprintln!("floor: {}: {e}", args.policy.display());
            std::process::exit(2);
        }
    };
    let threads: Vec<_> = (0..args.workers)
        .map(|_| {
            let (listen, upstream, engine) = (args.listen, args.upstream, engine.clone());
            std::thread::spawn(move || worker(listen, upstream, engine))
        })
        .collect();
    for t in threads {
        if let Ok(Err(e)) = t.join() {
            eprintln!("floor: {e}");
            std::process::exit(1);
        }
    }
}

fn compile(path: &std::path::Path) -> Result<Engine, String> {
    let text = std::fs::read_to_string(path).map_err(|e| e.to_string())?;
    let document = corsair_policy::load_document(&text).map_err(|e| e.to_string())?;
    Engine::compile(&document.spec)
        .map(|(engine, _)| engine)
        .map_err(|report| format!("{:?}", report.findings))
}

fn worker(listen: SocketAddr, upstream: SocketAddr, engine: Arc<Engine>) -> io::Result<()> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_io()
        .enable_time()
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
            let engine = engine.clone();
            tokio::spawn(async move {
                // A connection ends on any error: this is a measuring instrument.
                let _ = serve(client, peer.ip(), upstream, &engine).await;
            });
        }
    })
}

/// A read bounded by [`READ_TIMEOUT`].
async fn read(io: &mut (impl AsyncRead + Unpin), buf: &mut [u8]) -> io::Result<usize> {
    tokio::time::timeout(READ_TIMEOUT, io.read(buf))
        .await
        .map_err(|_| io::Error::from(io::ErrorKind::TimedOut))?
}

/// One client connection: requests one after the other, each answered before the next is read.
async fn serve(
    mut client: TcpStream,
    peer: IpAddr,
    upstream: SocketAddr,
    engine: &Engine,
) -> io::Result<()> {
    client.set_nodelay(true)?;
    let forwarded = format!("x-forwarded-for: {peer}\r\nx-forwarded-proto: http\r\n");
    let mut up: Option<TcpStream> = None;
    let mut buf = vec![0u8; BUF];
    let mut filled = 0;
    let mut ubuf = vec![0u8; BUF];
    let mut out = Vec::with_capacity(BUF);
    let mut vary = String::new();
    loop {
        let mut lines = [httparse::EMPTY_HEADER; 32];
        let mut req = httparse::Request::new(&mut lines);
        let head_len = match req.parse(&buf[..filled]) {
            Ok(httparse::Status::Complete(n)) => n,
            Ok(httparse::Status::Partial) if filled < BUF => {
                let n = read(&mut client, &mut buf[filled..]).await?;
                if n == 0 {
                    return Ok(());
                }
                filled += n;
                continue;
            }
            _ => return Err(io::ErrorKind::InvalidData.into()),
        };
        let path = req.path.unwrap_or("/");
        let mut info = RequestInfo {
            method: req.method.unwrap_or("GET"),
            path: path.split_once('?').map_or(path, |(p, _)| p),
            ..RequestInfo::default()
        };
        let mut lines: [&str; 4] = [""; 4];
        let mut n = 0;
        let mut host = None;
        for h in req.headers.iter() {
            let name = h.name.as_bytes();
            let text = || std::str::from_utf8(h.value).unwrap_or("");
            if name.eq_ignore_ascii_case(b"origin") {
                info.origin = Some(text());
            } else if name.eq_ignore_ascii_case(b"access-control-request-method") {
                info.request_method = Some(text());
            } else if name.eq_ignore_ascii_case(b"access-control-request-headers") && n < 4 {
                lines[n] = text();
                n += 1;
            } else if name.eq_ignore_ascii_case(b"host") {
                host = Some(h.value);
                info.host = Some(text());
            } else if name.eq_ignore_ascii_case(b"content-length") && h.value != b"0"
                || name.eq_ignore_ascii_case(b"transfer-encoding")
            {
                return Err(io::ErrorKind::Unsupported.into());
            }
        }
        info.request_headers = &lines[..n];
        out.clear();
        match engine.decide(&info).action() {
            Action::Respond { status, headers } => {
                ANSWERED.fetch_add(1, Ordering::Relaxed);
                respond(&mut out, status, &headers)?;
            }
            Action::Forward {
                headers,
                strip_upstream_cors,
            } => {
                FORWARDED.fetch_add(1, Ordering::Relaxed);
                request_head(&mut out, &req, &forwarded, host);
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
                let strip = strip_upstream_cors;
                answer(conn, &mut ubuf, &mut out, &mut vary, &headers, strip).await?;
            }
        }
        client.write_all(&out).await?;
        buf.copy_within(head_len..filled, 0);
        filled -= head_len;
    }
}

/// The head as the client wrote it, less its hop-by-hop lines, with `X-Forwarded-*` added.
fn request_head(
    out: &mut Vec<u8>,
    req: &httparse::Request<'_, '_>,
    forwarded: &str,
    host: Option<&[u8]>,
) {
    out.extend_from_slice(req.method.unwrap_or("GET").as_bytes());
    out.push(b' ');
    out.extend_from_slice(req.path.unwrap_or("/").as_bytes());
    out.extend_from_slice(b" HTTP/1.1\r\n");
    for h in req.headers.iter() {
        if !HOP_BY_HOP.iter().any(|n| h.name.eq_ignore_ascii_case(n)) {
            line(out, h.name.as_bytes(), h.value);
        }
    }
    out.extend_from_slice(forwarded.as_bytes());
    if let Some(host) = host {
        line(out, b"x-forwarded-host", host);
    }
    out.extend_from_slice(b"\r\n");
}

fn line(out: &mut Vec<u8>, name: &[u8], value: &[u8]) {
    out.extend_from_slice(name);
    out.extend_from_slice(b": ");
    out.extend_from_slice(value);
    out.extend_from_slice(b"\r\n");
}

/// The decided lines, `Vary` among them unless `skip_vary`.
fn decided(out: &mut Vec<u8>, headers: &ResponseHeaders<'_>, skip_vary: bool) -> io::Result<()> {
    let mut result = Ok(());
    headers.for_each(|name, value| {
        if result.is_ok() && !(skip_vary && name == "vary") {
            result = write!(out, "{name}: {value}\r\n");
        }
    });
    result
}

/// An answer of the proxy's own: a preflight's, or a refusal.
fn respond(out: &mut Vec<u8>, status: u16, headers: &ResponseHeaders<'_>) -> io::Result<()> {
    write!(out, "HTTP/1.1 {status} \r\n")?;
    decided(out, headers, false)?;
    if status != 204 {
        out.extend_from_slice(b"content-length: 0\r\n");
    }
    out.extend_from_slice(b"\r\n");
    Ok(())
}

/// Reads the upstream's answer into `ubuf` and writes the client's into `out`: its head less
/// hop-by-hop lines (and its `Access-Control-*` ones when `strip`), the decided lines with
/// `Vary` merged by the engine's own [`corsair_policy::write_merged_vary`] (in `vary`, a
/// buffer kept per connection), then the body.
async fn answer(
    conn: &mut TcpStream,
    ubuf: &mut [u8],
    out: &mut Vec<u8>,
    vary: &mut String,
    headers: &ResponseHeaders<'_>,
    strip: bool,
) -> io::Result<()> {
    let mut filled = 0;
    loop {
        let n = read(conn, &mut ubuf[filled..]).await?;
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
        let mut vary_lines: [&str; 4] = [""; 4];
        let mut n = 0;
        // The status line as the upstream wrote it.
        let status_end = ubuf[..head_len]
            .windows(2)
            .position(|w| w == b"\r\n")
            .unwrap_or(0);
        out.extend_from_slice(&ubuf[..status_end + 2]);
        for h in resp.headers.iter() {
            let name = h.name.as_bytes();
            if strip && name.len() > 15 && name[..15].eq_ignore_ascii_case(b"access-control-")
                || HOP_BY_HOP.iter().any(|n| h.name.eq_ignore_ascii_case(n))
            {
                continue;
            }
            if name.eq_ignore_ascii_case(b"content-length") {
                length = std::str::from_utf8(h.value)
                    .ok()
                    .and_then(|v| v.parse::<usize>().ok());
            }
            if name.eq_ignore_ascii_case(b"vary") && n < vary_lines.len() {
                vary_lines[n] = std::str::from_utf8(h.value)
                    .map_err(|_| io::Error::from(io::ErrorKind::InvalidData))?;
                n += 1;
                continue;
            }
            line(out, name, h.value);
        }
        decided(out, headers, true)?;
        vary.clear();
        let existing = vary_lines[..n].iter().copied();
        if corsair_policy::write_merged_vary(existing, headers.vary, vary)
            .map_err(io::Error::other)?
        {
            line(out, b"vary", vary.as_bytes());
        } else {
            for v in &vary_lines[..n] {
                line(out, b"vary", v.as_bytes());
            }
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
            let n = read(conn, &mut ubuf[filled..end]).await?;
            if n == 0 {
                return Err(io::ErrorKind::UnexpectedEof.into());
            }
            filled += n;
        }
        out.extend_from_slice(&ubuf[head_len..end]);
        return Ok(());
    }
}
