//! One request: ask the engine, then answer here or stream it to the upstream and back.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use corsair_policy::{Action, Decision, DenyReason, Mode, RequestInfo, RequestKind, Vary, Verdict};
use http::header::{self, HeaderMap, HeaderValue};
use http::{Method, Request, Response, StatusCode, Version};
use http_body_util::{Either, Full};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;

use crate::headers;
use crate::metrics::{RequestLabels, status_class};
use crate::server::{Activity, State};
use crate::upstream::Failure;

/// The response body: the upstream's, streamed, or a small one made here.
pub type ProxyBody = Either<Incoming, Full<Bytes>>;

static ACRM: header::HeaderName = header::ACCESS_CONTROL_REQUEST_METHOD;
static ACRH: header::HeaderName = header::ACCESS_CONTROL_REQUEST_HEADERS;
static ACRPN: header::HeaderName =
    header::HeaderName::from_static("access-control-request-private-network");

/// Why a request was denied, for its info log line.
struct Denied {
    reason: String,
    /// What Enforce mode does (or, in DryRun, would do) with it.
    enforced: &'static str,
}

/// The engine's decision, detached from the request so the request can be forwarded.
struct Prepared {
    /// Answer here with this status instead of forwarding.
    respond: Option<StatusCode>,
    /// CORS headers to set on the response.
    set: HeaderMap,
    vary: Vary,
    strip_upstream_cors: bool,
    labels: RequestLabels,
}

pub async fn handle(
    state: Arc<State>,
    peer: SocketAddr,
    activity: Activity,
    req: Request<Incoming>,
) -> Result<Response<ProxyBody>, Infallible> {
    let started = Instant::now();
    let (prepared, deny_reason) = decide(&state, &req);
    let mut labels = prepared.labels.clone();
    if let Some(denied) = &deny_reason {
        let message = if labels.mode == "dry_run" {
            "CORS request would be denied (dry run: forwarded unchanged)"
        } else {
            "CORS request denied"
        };
        tracing::info!(
            method = %req.method(),
            path = req.uri().path(),
            origin = origin_for_log(req.headers()),
            mode = labels.mode,
            reason = %denied.reason,
            enforced = denied.enforced,
            "{message}"
        );
    } else {
        tracing::debug!(
            method = %req.method(),
            path = req.uri().path(),
            kind = labels.kind,
            decision = labels.decision,
            mode = labels.mode,
            "request"
        );
    }
    let response = if req.method() == Method::CONNECT {
        text(StatusCode::METHOD_NOT_ALLOWED, "CONNECT is not supported\n")
    } else if let Some(status) = prepared.respond {
        let mut response = if status.is_success() {
            Response::new(Either::Right(Full::new(Bytes::new())))
        } else {
            text(status, "request rejected by the CORS policy\n")
        };
        *response.status_mut() = status;
        let headers = response.headers_mut();
        headers.extend(prepared.set);
        headers::merge_vary(headers, prepared.vary);
        response
    } else {
        let mut response = forward(&state, peer, activity, req).await;
        let headers = response.headers_mut();
        if prepared.strip_upstream_cors {
            headers::strip_access_control(headers);
        }
        headers.extend(prepared.set);
        headers::merge_vary(headers, prepared.vary);
        response
    };
    labels.status = status_class(response.status());
    state
        .metrics
        .request(&labels, started.elapsed().as_secs_f64());
    Ok(response)
}

/// Builds the engine's view of the request and turns its decision into owned headers.
/// Returns the deny reason when the request is logged at info level: denied in Enforce mode
/// (rejected, or forwarded without CORS headers), or would-be-denied in DryRun.
fn decide(state: &State, req: &Request<Incoming>) -> (Prepared, Option<Denied>) {
    let policy = state.store.current();
    let request_headers: Vec<&str> = req
        .headers()
        .get_all(&ACRH)
        .iter()
        // A name that is not UTF-8 is passed on as a name no policy lists, so it is refused.
        .map(|v| v.to_str().unwrap_or("\u{fffd}"))
        .collect();
    let info = RequestInfo {
        method: req.method().as_str(),
        path: req.uri().path(),
        host: host(req),
        origin: single_value(req.headers(), &header::ORIGIN),
        request_method: single_value(req.headers(), &ACRM),
        request_headers: &request_headers,
        request_private_network: req
            .headers()
            .get(&ACRPN)
            .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"true")),
    };
    let decision = policy.engine.decide(&info);
    let deny_reason = match decision.verdict {
        Verdict::Denied(reason) if decision.mode != Mode::Disabled => Some(Denied {
            reason: describe(reason),
            enforced: match decision.enforced {
                Action::Respond { .. } => "rejected",
                Action::Forward { .. } => "forwarded",
            },
        }),
        _ => None,
    };
    (prepare(&decision), deny_reason)
}

fn prepare(decision: &Decision<'_>) -> Prepared {
    let labels = RequestLabels {
        kind: match decision.kind {
            RequestKind::NotCors => "no_origin",
            RequestKind::SameOrigin => "same_origin",
            RequestKind::Preflight => "preflight",
            RequestKind::Actual => "actual",
        },
        decision: match decision.verdict {
            Verdict::NotApplicable => "not_applicable",
            Verdict::Allowed(_) => "allowed",
            Verdict::Denied(_) => "denied",
        },
        mode: match decision.mode {
            Mode::Enforce => "enforce",
            Mode::DryRun => "dry_run",
            Mode::Disabled => "disabled",
        },
        status: "",
    };
    let (respond, cors, strip_upstream_cors) = match decision.action() {
        Action::Respond { status, headers } => (
            Some(StatusCode::from_u16(status).unwrap_or(StatusCode::FORBIDDEN)),
            headers,
            false,
        ),
        Action::Forward {
            headers,
            strip_upstream_cors,
        } => (None, headers, strip_upstream_cors),
    };
    let mut set = HeaderMap::new();
    headers::set_cors(&mut set, &cors);
    Prepared {
        respond,
        set,
        vary: cors.vary,
        strip_upstream_cors,
        labels,
    }
}

fn describe(reason: DenyReason<'_>) -> String {
    match reason {
        DenyReason::OriginNotAllowed => "origin not allowed".to_owned(),
        DenyReason::MalformedOrigin => "malformed or repeated Origin".to_owned(),
        DenyReason::MethodNotAllowed(m) => format!("method {m:?} not allowed"),
        DenyReason::HeaderNotAllowed(h) => format!("header {h:?} not allowed"),
        DenyReason::AuthorizationNotCoveredByWildcard => {
            "Authorization requested but only \"*\" is listed".to_owned()
        }
        DenyReason::PrivateNetworkNotAllowed => "private network access not allowed".to_owned(),
    }
}

/// The value of a header that must appear at most once: a repeated or non-UTF-8 value is
/// `Some("")`, which the engine never allows.
fn single_value<'a>(headers: &'a HeaderMap, name: &header::HeaderName) -> Option<&'a str> {
    let mut values = headers.get_all(name).iter();
    let first = values.next()?;
    if values.next().is_some() {
        return Some("");
    }
    Some(first.to_str().unwrap_or(""))
}

/// `Host`, or the `:authority` of an HTTP/2 request.
fn host(req: &Request<Incoming>) -> Option<&str> {
    match req.headers().get(header::HOST) {
        Some(host) => host.to_str().ok(),
        None => req.uri().authority().map(|a| a.as_str()),
    }
}

fn origin_for_log(headers: &HeaderMap) -> &str {
    headers
        .get(header::ORIGIN)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("-")
}

fn text(status: StatusCode, body: &'static str) -> Response<ProxyBody> {
    let mut response = Response::new(Either::Right(Full::new(Bytes::from_static(
        body.as_bytes(),
    ))));
    *response.status_mut() = status;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    response
}

/// Sends the request to the upstream and returns its response, or a 502/504 naming the cause.
async fn forward(
    state: &State,
    peer: SocketAddr,
    activity: Activity,
    mut req: Request<Incoming>,
) -> Response<ProxyBody> {
    let upgrade = if req.version() <= Version::HTTP_11 {
        headers::upgrade_protocol(req.headers())
    } else {
        None
    };
    let client_upgrade = upgrade.as_ref().map(|_| hyper::upgrade::on(&mut req));
    let (mut parts, body) = req.into_parts();
    let host = parts.headers.get(header::HOST).cloned().or_else(|| {
        parts
            .uri
            .authority()
            .and_then(|a| HeaderValue::from_str(a.as_str()).ok())
    });
    headers::strip_hop_by_hop(&mut parts.headers, upgrade.as_ref());
    // hyper already answered `Expect: 100-continue` towards the client.
    parts.headers.remove(header::EXPECT);
    headers::add_forwarded(&mut parts.headers, peer.ip(), host.as_ref());
    if let Some(host) = host {
        parts.headers.entry(header::HOST).or_insert(host);
    }
    parts.uri = match state.upstream.uri_for(parts.uri.path_and_query()) {
        Ok(uri) => uri,
        Err(_) => return text(StatusCode::BAD_REQUEST, "invalid request target\n"),
    };
    parts.version = Version::HTTP_11;
    let request = Request::from_parts(parts, body);

    let sent = tokio::time::timeout(
        state.config.upstream_timeout,
        state.upstream.client.request(request),
    )
    .await;
    let mut response = match sent {
        Ok(Ok(response)) => response,
        Ok(Err(err)) => return failure(state, Failure::classify(&err), Some(&err)),
        Err(_) => return failure(state, Failure::Timeout, None),
    };

    let response_upgrade = if response.status() == StatusCode::SWITCHING_PROTOCOLS {
        let Some(client_upgrade) = client_upgrade else {
            tracing::warn!("upstream switched protocols without being asked to");
            return failure(state, Failure::Other, None);
        };
        let protocol = response.headers().get(header::UPGRADE).cloned();
        let upstream_upgrade = hyper::upgrade::on(&mut response);
        spawn_tunnel(state, activity, client_upgrade, upstream_upgrade);
        protocol
    } else {
        None
    };
    headers::strip_hop_by_hop(response.headers_mut(), response_upgrade.as_ref());
    response.map(Either::Left)
}

fn failure(
    state: &State,
    failure: Failure,
    err: Option<&hyper_util::client::legacy::Error>,
) -> Response<ProxyBody> {
    state.metrics.upstream_error(failure.metric_label());
    match err {
        Some(err) => {
            tracing::warn!(cause = failure.metric_label(), error = ?err, "upstream request failed")
        }
        None => tracing::warn!(cause = failure.metric_label(), "upstream request failed"),
    }
    text(failure.status(), failure.message())
}

/// Copies bytes both ways between the client and the upstream once both sides switched
/// protocols; stops when either side closes, nothing moved for the idle timeout (the client's
/// connection still records its bytes), or the drain deadline passes.
fn spawn_tunnel(
    state: &State,
    activity: Activity,
    client: hyper::upgrade::OnUpgrade,
    upstream: hyper::upgrade::OnUpgrade,
) {
    let abort = state.abort.clone();
    let idle_timeout = state.config.idle_timeout;
    state.tasks.spawn(async move {
        let tunnel = async {
            let (client, upstream) = match tokio::try_join!(client, upstream) {
                Ok(pair) => pair,
                Err(err) => {
                    tracing::debug!(error = %err, "upgrade failed");
                    return;
                }
            };
            let mut client = TokioIo::new(client);
            let mut upstream = TokioIo::new(upstream);
            tokio::select! {
                result = tokio::io::copy_bidirectional(&mut client, &mut upstream) => {
                    if let Err(err) = result {
                        tracing::debug!(error = %err, "tunnel closed with an error");
                    }
                }
                () = activity.idle_for(idle_timeout) => tracing::debug!("closing idle tunnel"),
            }
        };
        tokio::select! {
            () = tunnel => {}
            () = abort.cancelled() => {}
        }
    });
}
