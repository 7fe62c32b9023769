//! HTTPS for the webhooks: rustls, HTTP/1.1 and HTTP/2, graceful shutdown.

use std::convert::Infallible;
use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode, header};
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use tokio::net::TcpListener;
use tokio::sync::{Semaphore, watch};
use tokio::task::JoinSet;
use tokio_rustls::TlsAcceptor;

use super::review::{Webhook, review};
use super::tls::{CertError, CertStore};
use super::{INJECT_PATH, VALIDATE_PATH, WebhookState};

/// A client that does not finish its TLS handshake, or its first request's head, in this time is
/// dropped: until a request arrives, hyper runs no timer of its own (it is still reading the first
/// bytes to tell HTTP/1.1 from HTTP/2), and a silent connection would hold a connection permit
/// for good.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// Why the webhook server could not start.
#[derive(Debug, thiserror::Error)]
pub enum WebhookError {
    #[error(transparent)]
    Tls(#[from] CertError),
}

/// Serves `POST /inject` and `POST /validate` over HTTPS on `listener` until `shutdown`
/// completes, then stops accepting and waits for the requests in flight.
pub async fn serve(
    listener: TcpListener,
    certs: Arc<CertStore>,
    state: WebhookState,
    shutdown: impl Future<Output = ()>,
) -> Result<(), WebhookError> {
    let acceptor = TlsAcceptor::from(Arc::new(certs.server_config()?));
    let limits = *state.limits();
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(HANDSHAKE_TIMEOUT);
    builder
        .http2()
        .timer(TokioTimer::new())
        .max_concurrent_streams(limits.max_concurrent_streams);
    // The protocol is the one ALPN agreed (RFC 9113 §3.2), not a guess from the first bytes:
    // the idle check below depends on knowing it.
    let (h1_builder, h2_builder) = (builder.clone().http1_only(), builder.http2_only());
    // A permit per connection: at the cap, new connections wait in the listen backlog.
    let permits = Arc::new(Semaphore::new(limits.max_connections.max(1)));
    let (stop, stopping) = watch::channel(false);
    let mut connections = JoinSet::new();
    tokio::pin!(shutdown);
    loop {
        let permit = tokio::select! {
            () = &mut shutdown => break,
            permit = permits.clone().acquire_owned() => match permit {
                Ok(permit) => permit,
                Err(_) => break,
            },
        };
        tokio::select! {
            () = &mut shutdown => break,
            accepted = listener.accept() => match accepted {
                Ok((tcp, peer)) => {
                    let peer = corsair_runtime::listen::canonical(peer);
                    let _ = tcp.set_nodelay(true);
                    let acceptor = acceptor.clone();
                    let (h1_builder, h2_builder) = (h1_builder.clone(), h2_builder.clone());
                    let state = state.clone();
                    let mut stopping = stopping.clone();
                    connections.spawn(async move {
                        let _permit = permit;
                        let tls = match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
                            Ok(Ok(tls)) => tls,
                            Ok(Err(err)) => {
                                tracing::debug!(%peer, error = %err, "TLS handshake failed");
                                return;
                            }
                            Err(_) => {
                                tracing::debug!(%peer, "TLS handshake timed out");
                                return;
                            }
                        };
                        let h2 = tls.get_ref().1.alpn_protocol() == Some(b"h2");
                        // Over HTTP/1.1 hyper's header timeout closes a kept-alive connection
                        // waiting for its next request; this longer limit ends one whose answer
                        // the client does not read, which nothing else times out.
                        let idle_limit = if h2 { limits.idle_timeout } else { 2 * HANDSHAKE_TIMEOUT };
                        let builder = if h2 { h2_builder } else { h1_builder };
                        let activity = Arc::new(Activity::new());
                        let service = service_fn({
                            let activity = activity.clone();
                            move |req| {
                                let in_flight = activity.begin();
                                let state = state.clone();
                                async move {
                                    let response = handle(&state, req).await;
                                    drop(in_flight);
                                    Ok::<_, Infallible>(response)
                                }
                            }
                        });
                        let conn = builder.serve_connection(TokioIo::new(tls), service);
                        tokio::pin!(conn);
                        // The handshake timeout until the first request, then the idle limit.
                        let check = tokio::time::sleep(HANDSHAKE_TIMEOUT.min(idle_limit));
                        tokio::pin!(check);
                        let result = loop {
                            tokio::select! {
                                result = conn.as_mut() => break result,
                                () = &mut check => {
                                    let now = tokio::time::Instant::now();
                                    let next = match activity.idle_for() {
                                        _ if !activity.requested() => {
                                            let waited = activity.opened.elapsed();
                                            if waited >= HANDSHAKE_TIMEOUT {
                                                tracing::debug!(%peer, "no request in time; closing");
                                                return;
                                            }
                                            now + HANDSHAKE_TIMEOUT - waited
                                        }
                                        Some(idle) if idle >= idle_limit => {
                                            tracing::debug!(%peer, "idle; closing");
                                            conn.as_mut().graceful_shutdown();
                                            // HTTP/2 waits for the client's answer to a PING,
                                            // HTTP/1.1 for the answer being written.
                                            match tokio::time::timeout(HANDSHAKE_TIMEOUT, conn.as_mut()).await {
                                                Ok(result) => break result,
                                                Err(_) => return,
                                            }
                                        }
                                        idle => now + idle_limit - idle.unwrap_or_default(),
                                    };
                                    check.as_mut().reset(next);
                                }
                                () = async { let _ = stopping.wait_for(|stop| *stop).await; } => {
                                    conn.as_mut().graceful_shutdown();
                                    break conn.await;
                                }
                            }
                        };
                        if let Err(err) = result {
                            tracing::debug!(%peer, error = %err, "webhook connection ended with an error");
                        }
                    });
                }
                Err(err) => {
                    // Out of file descriptors and the like: back off instead of spinning.
                    tracing::warn!(error = %err, "accepting a webhook connection failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            },
        }
        while connections.try_join_next().is_some() {}
    }
    drop(listener);
    let _ = stop.send(true);
    while connections.join_next().await.is_some() {}
    Ok(())
}

/// The requests of one connection: how many are in flight, and when the last one ended.
struct Activity {
    opened: Instant,
    in_flight: AtomicUsize,
    requested: AtomicBool,
    /// Milliseconds from `opened` to the end of the last request.
    last_end_ms: AtomicU64,
}

/// One request in flight; dropped when its response is ready or when hyper drops the request
/// (a reset stream), so an abandoned request never keeps the connection busy.
struct InFlight(Arc<Activity>);

impl Activity {
    fn new() -> Self {
        Activity {
            opened: Instant::now(),
            in_flight: AtomicUsize::new(0),
            requested: AtomicBool::new(false),
            last_end_ms: AtomicU64::new(0),
        }
    }

    fn begin(self: &Arc<Self>) -> InFlight {
        self.requested.store(true, Ordering::Relaxed);
        self.in_flight.fetch_add(1, Ordering::AcqRel);
        InFlight(self.clone())
    }

    fn requested(&self) -> bool {
        self.requested.load(Ordering::Relaxed)
    }

    /// How long the connection has had no request in flight; `None` while one is.
    fn idle_for(&self) -> Option<Duration> {
        if self.in_flight.load(Ordering::Acquire) > 0 {
            return None;
        }
        let last_end = Duration::from_millis(self.last_end_ms.load(Ordering::Relaxed));
        Some(self.opened.elapsed().saturating_sub(last_end))
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        let ms = u64::try_from(self.0.opened.elapsed().as_millis()).unwrap_or(u64::MAX);
        self.0.last_end_ms.fetch_max(ms, Ordering::Relaxed);
        self.0.in_flight.fetch_sub(1, Ordering::AcqRel);
    }
}

/// Routes one request; every outcome is a response, never a panic.
async fn handle(state: &WebhookState, req: Request<Incoming>) -> Response<Full<Bytes>> {
    let webhook = match req.uri().path() {
        INJECT_PATH => Webhook::Inject,
        VALIDATE_PATH => Webhook::Validate,
        _ => return text(StatusCode::NOT_FOUND, "not found\n"),
    };
    if req.method() != Method::POST {
        return text(StatusCode::NOT_FOUND, "not found\n");
    }
    let limits = state.limits();
    let max = limits.max_body_bytes;
    let read = Limited::new(req.into_body(), max).collect();
    let body = match tokio::time::timeout(limits.body_timeout, read).await {
        Err(_) => {
            return text(
                StatusCode::REQUEST_TIMEOUT,
                format!(
                    "the AdmissionReview did not arrive within {} s\n",
                    limits.body_timeout.as_secs()
                ),
            );
        }
        Ok(Ok(body)) => body.to_bytes(),
        Ok(Err(err)) if err.is::<http_body_util::LengthLimitError>() => return too_large(max),
        Ok(Err(err)) => {
            return text(
                StatusCode::BAD_REQUEST,
                format!("cannot read the body: {err}\n"),
            );
        }
    };
    match review(state, webhook, &body) {
        Ok(json) => Response::builder()
            .status(StatusCode::OK)
            .header(header::CONTENT_TYPE, "application/json")
            .body(Full::new(Bytes::from(json)))
            .unwrap_or_else(|_| text(StatusCode::INTERNAL_SERVER_ERROR, "response error\n")),
        Err(err @ super::ReviewError::Encode(_)) => {
            tracing::error!(error = %err, "cannot encode an admission response");
            text(StatusCode::INTERNAL_SERVER_ERROR, format!("{err}\n"))
        }
        Err(err) => {
            tracing::debug!(error = %err, "bad admission request");
            text(StatusCode::BAD_REQUEST, format!("{err}\n"))
        }
    }
}

fn too_large(max: usize) -> Response<Full<Bytes>> {
    text(
        StatusCode::PAYLOAD_TOO_LARGE,
        format!("AdmissionReview larger than {max} bytes (--max-request-bytes)\n"),
    )
}

fn text(status: StatusCode, body: impl Into<Bytes>) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(body.into()));
    *response.status_mut() = status;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    response
}
