//! One request: ask the engine, then answer here or stream it to the upstream and back.
//!
//! The path of an allowed request allocates nothing of its own (`handler/tests.rs` counts): the
//! decision borrows the request, its headers are values the policy rendered when it loaded or
//! the request's own values cloned, a preflight is answered in the request's own header map,
//! and the metrics series are resolved once.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use corsair_policy::http::{Echo, HeaderValues};
use corsair_policy::{
    Action, Decision, DenyReason, Engine, Mode, RequestInfo, RequestKind, Verdict,
};
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Method, Request, Response, StatusCode, Uri, Version};
use http_body_util::{Either, Full};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use tokio::io::AsyncWriteExt;

use crate::headers;
use crate::metrics::{RequestLabels, status_class};
use crate::server::{Activity, Conn, State};
use crate::upstream::{Failed, Switched, UpstreamBody};

/// The response body: the upstream's, streamed, or a small one made here.
pub type ProxyBody = Either<UpstreamBody, Full<Bytes>>;

static ACRM: HeaderName = header::ACCESS_CONTROL_REQUEST_METHOD;
static ACRH: HeaderName = header::ACCESS_CONTROL_REQUEST_HEADERS;
static ACRPN: HeaderName = HeaderName::from_static("access-control-request-private-network");
static TEXT_PLAIN: HeaderValue = HeaderValue::from_static("text/plain; charset=utf-8");

/// `Access-Control-Request-Headers` lines read without allocating; more spill into a `Vec`.
const INLINE_ACRH: usize = 4;

pub async fn handle(
    state: Arc<State>,
    conn: Arc<Conn>,
    req: Request<Incoming>,
) -> Result<Response<ProxyBody>, Infallible> {
    let started = Instant::now();
    let request = conn.requests.start(req.version() == Version::HTTP_2);
    let plan = {
        let policy = state.store.current();
        Plan::new(&policy.engine, &req)
    };
    let mut labels = plan.labels.clone();
    let response = if req.method() == Method::CONNECT {
        // Not a method of the application's resources but a tunnel the gateway does not
        // offer: 501 (RFC 9110 §15.6.2); a 405 would have to list the resource's methods in
        // `Allow`, which only the application knows.
        text(StatusCode::NOT_IMPLEMENTED, "CONNECT is not supported\n")
    } else if let Some(why) = plan.bad_host {
        text(StatusCode::BAD_REQUEST, why)
    } else if req
        .uri()
        .authority()
        .is_some_and(|a| a.as_str().contains('@'))
    {
        // Userinfo has no place in an HTTP target (RFC 9110 §4.2.4); refused before the host
        // it would hide is judged or sent on.
        text(StatusCode::BAD_REQUEST, "userinfo in the request target\n")
    } else if let Some(status) = plan.respond {
        plan.answer(status, req)
    } else {
        let mut response = forward(&state, &conn, req).await;
        plan.finish(response.headers_mut());
        response
    };
    labels.status = status_class(response.status());
    state.metrics.request(&labels, started.elapsed());
    request.answered();
    Ok(response)
}

/// The engine's decision, turned into owned values so that the request can be taken apart.
pub(crate) struct Plan {
    /// Answer here with this status instead of forwarding.
    respond: Option<StatusCode>,
    values: HeaderValues,
    strip_upstream_cors: bool,
    labels: RequestLabels,
    /// Why the request's `Host` makes it a 400 (RFC 9112 §3.2): more than one line (the proxy
    /// and the upstream could each pick a different one), or none on an HTTP/1.1 request
    /// without an authority in its target.
    bad_host: Option<&'static str>,
}

/// Whether `value` is an authority a `Host` header or a target may carry (RFC 9110 §7.2, RFC
/// 3986 §3.2): a host of the bytes a registered name or IPv4 address may hold, or a bracketed
/// IPv6 literal, and an optional port of at most 65535. No userinfo: a target's is refused
/// with its own message ([`handle`]), so its caller leaves it out.
fn is_authority(value: &[u8]) -> bool {
    let (host, port) = match value.iter().rposition(|&b| b == b':') {
        // A colon inside brackets belongs to an IPv6 literal, not to a port.
        Some(i) if !value[i..].contains(&b']') => (&value[..i], Some(&value[i + 1..])),
        _ => (value, None),
    };
    let port_ok = port.is_none_or(|p| {
        p.len() <= 5
            && p.iter().all(u8::is_ascii_digit)
            && p.iter().fold(0u32, |n, d| n * 10 + u32::from(d - b'0')) <= 65_535
    });
    let host_ok = match host {
        [b'[', literal @ .., b']'] => {
            literal.contains(&b':')
                && literal
                    .iter()
                    .all(|&b| b.is_ascii_hexdigit() || b == b':' || b == b'.')
        }
        _ => host.iter().all(|&b| {
            b.is_ascii_alphanumeric()
                || matches!(
                    b,
                    b'-' | b'.'
                        | b'_'
                        | b'~'
                        | b'%'
                        | b'!'
                        | b'$'
                        | b'&'
                        | b'\''
                        | b'('
                        | b')'
                        | b'*'
                        | b'+'
                        | b','
                        | b';'
                        | b'='
                )
        }),
    };
    port_ok && host_ok
}

/// The request headers CORS reads, found in one pass over the map.
#[derive(Default)]
struct Seen<'r> {
    host: Option<&'r HeaderValue>,
    host_repeated: bool,
    /// Every `Origin` line; a second one makes the origin malformed.
    origin: Option<&'r HeaderValue>,
    origin_repeated: bool,
    method: Option<&'r HeaderValue>,
    method_repeated: bool,
    headers: [Option<&'r HeaderValue>; INLINE_ACRH],
    headers_spilled: Vec<&'r HeaderValue>,
    private_network: bool,
}

impl<'r> Seen<'r> {
    fn read(map: &'r HeaderMap) -> Seen<'r> {
        let mut seen = Seen::default();
        let mut acrh = 0;
        for (name, value) in map {
            if name == header::ORIGIN {
                seen.origin_repeated = seen.origin.is_some();
                seen.origin = Some(value);
            } else if name == header::HOST {
                seen.host_repeated = seen.host.is_some();
                seen.host = Some(value);
            } else if name == ACRM {
                seen.method_repeated = seen.method.is_some();
                seen.method = Some(value);
            } else if name == ACRH {
                match seen.headers.get_mut(acrh) {
                    Some(slot) => *slot = Some(value),
                    None => seen.headers_spilled.push(value),
                }
                acrh += 1;
            } else if name == ACRPN {
                seen.private_network |= value.as_bytes().eq_ignore_ascii_case(b"true");
            }
        }
        seen
    }

    /// The value of a header that must appear at most once: a repeated or non-UTF-8 value is
    /// `Some("")`, which the engine never allows.
    fn single(value: Option<&'r HeaderValue>, repeated: bool) -> Option<&'r str> {
        let value = value?;
        if repeated {
            return Some("");
        }
        Some(value.to_str().unwrap_or(""))
    }

    fn acrh_values(&self) -> impl Iterator<Item = &'r HeaderValue> + '_ {
        self.headers
            .iter()
            .flatten()
            .copied()
            .chain(self.headers_spilled.iter().copied())
    }
}

impl Plan {
    /// Decides `req` against `engine`.
    pub(crate) fn new<B>(engine: &Engine, req: &Request<B>) -> Plan {
        let seen = Seen::read(req.headers());
        let mut inline: [&str; INLINE_ACRH] = [""; INLINE_ACRH];
        let mut spilled: Vec<&str> = Vec::new();
        // A name that is not UTF-8 is passed on as a name no policy lists, so it is refused.
        for (i, value) in seen.acrh_values().enumerate() {
            let text = value.to_str().unwrap_or("\u{fffd}");
            match inline.get_mut(i) {
                Some(slot) => *slot = text,
                None => spilled.push(text),
            }
        }
        let lines = seen.acrh_values().count();
        if lines > INLINE_ACRH {
            spilled.splice(0..0, inline);
        }
        let request_headers: &[&str] = if lines > INLINE_ACRH {
            &spilled
        } else {
            &inline[..lines]
        };
        let info = RequestInfo {
            method: req.method().as_str(),
            path: req.uri().path(),
            host: match req.uri().authority() {
                Some(authority) => Some(authority.as_str()),
                None => seen.host.and_then(|host| host.to_str().ok()),
            },
            origin: Seen::single(seen.origin, seen.origin_repeated),
            request_method: Seen::single(seen.method, seen.method_repeated),
            request_headers,
            request_private_network: seen.private_network,
        };
        let decision = engine.decide(&info);
        log(&decision, req);
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
        let echo = Echo {
            origin: seen.origin,
            request_method: seen.method,
            request_headers: &|| echo_lines(&seen),
        };
        Plan {
            respond,
            values: cors.to_values(echo),
            strip_upstream_cors,
            labels: labels(&decision),
            bad_host: if seen.host_repeated {
                Some("more than one Host header\n")
            } else if seen.host.is_none()
                && req.version() == Version::HTTP_11
                && req.uri().authority().is_none()
            {
                Some("no Host header\n")
            } else if seen.host.is_some_and(|h| !is_authority(h.as_bytes())) {
                Some("invalid Host header\n")
            } else if req.uri().scheme().is_none() && req.uri().authority().is_some() {
                // The authority form (`GET host:80`) is CONNECT's alone (RFC 9112 §3.2.3).
                Some("invalid request target: the authority form is for CONNECT only\n")
            } else if req.uri().authority().is_some_and(|a| {
                // After any userinfo, which `handle` refuses with a message of its own.
                let host_port = a.as_str().rsplit('@').next().unwrap_or_default();
                !is_authority(host_port.as_bytes())
            }) {
                Some("invalid request target: its authority is not a host and port\n")
            } else {
                None
            },
        }
    }

    /// The answer made here: an allowed preflight (empty body) or a rejection (403).
    ///
    /// An allowed preflight is answered in the request's own header map, emptied: hyper reuses
    /// that map's storage from one message of a connection to the next, so nothing is allocated.
    fn answer<B>(self, status: StatusCode, req: Request<B>) -> Response<ProxyBody> {
        let mut response = if status.is_success() {
            let (parts, _body) = req.into_parts();
            let mut headers = parts.headers;
            headers.clear();
            let mut response = Response::new(Either::Right(Full::new(Bytes::new())));
            *response.headers_mut() = headers;
            response
        } else {
            text(status, "request rejected by the CORS policy\n")
        };
        *response.status_mut() = status;
        let headers = response.headers_mut();
        let vary = self.values.vary();
        self.values.insert_into(headers);
        headers::merge_vary(headers, vary);
        response
    }

    /// Applies the decision to the upstream's response headers.
    pub(crate) fn finish(self, headers: &mut HeaderMap) {
        if self.strip_upstream_cors {
            headers::strip_access_control(headers);
        }
        let vary = self.values.vary();
        self.values.insert_into(headers);
        headers::merge_vary(headers, vary);
    }
}

/// `Access-Control-Request-Headers` as one value: the request's own when it sent one line,
/// joined (in the per-thread scratch buffer) when it sent several.
fn echo_lines(seen: &Seen<'_>) -> Option<HeaderValue> {
    let mut values = seen.acrh_values();
    let first = values.next()?;
    if seen.acrh_values().nth(1).is_none() {
        return Some(first.clone());
    }
    headers::build_value(|out| {
        for (i, value) in seen.acrh_values().enumerate() {
            if i > 0 {
                out.extend_from_slice(b", ");
            }
            out.extend_from_slice(value.as_bytes());
        }
        Ok(())
    })
}

fn labels(decision: &Decision<'_>) -> RequestLabels {
    RequestLabels {
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
        mode: mode_label(decision.mode),
        status: "",
    }
}

fn mode_label(mode: Mode) -> &'static str {
    match mode {
        Mode::Enforce => "enforce",
        Mode::DryRun => "dry_run",
        Mode::Disabled => "disabled",
    }
}

/// Denials are logged at info (what Enforce does, or in DryRun would do, with them); everything
/// else at debug, which the default filter skips without formatting anything.
fn log<B>(decision: &Decision<'_>, req: &Request<B>) {
    match decision.verdict {
        Verdict::Denied(reason) if decision.mode != Mode::Disabled => {
            let message = if decision.mode == Mode::DryRun {
                "CORS request would be denied (dry run: forwarded unchanged)"
            } else {
                "CORS request denied"
            };
            tracing::info!(
                method = %req.method(),
                path = %Clipped(req.uri().path()),
                origin = %Clipped(
                    req.headers()
                        .get(header::ORIGIN)
                        .and_then(|v| v.to_str().ok())
                        .unwrap_or("-")
                ),
                mode = mode_label(decision.mode),
                reason = %Clipped(&describe(reason)),
                enforced = match decision.enforced {
                    Action::Respond { .. } => "rejected",
                    Action::Forward { .. } => "forwarded",
                },
                "{message}"
            );
        }
        _ => tracing::debug!(
            method = %req.method(),
            path = req.uri().path(),
            kind = ?decision.kind,
            mode = mode_label(decision.mode),
            "request"
        ),
    }
}

/// At most this many bytes of a value the client chose go into a log line: denials are logged at
/// info, and a client must not make each line as long as its request's head (64 KiB).
const LOGGED_VALUE: usize = 200;

/// A client's value in a log line, cut at [`LOGGED_VALUE`] bytes with its length said.
struct Clipped<'a>(&'a str);

impl std::fmt::Display for Clipped<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let value = self.0;
        if value.len() <= LOGGED_VALUE {
            return f.write_str(value);
        }
        let mut end = LOGGED_VALUE;
        while !value.is_char_boundary(end) {
            end -= 1;
        }
        write!(f, "{}… ({} bytes)", &value[..end], value.len())
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

fn text(status: StatusCode, body: &'static str) -> Response<ProxyBody> {
    let mut response = Response::new(Either::Right(Full::new(Bytes::from_static(
        body.as_bytes(),
    ))));
    *response.status_mut() = status;
    response
        .headers_mut()
        .insert(header::CONTENT_TYPE, TEXT_PLAIN.clone());
    response
}

/// Rewrites a client request into the upstream request, in place: hop-by-hop headers out,
/// `X-Forwarded-*` in, origin-form target, HTTP/1.1. `None` when the target cannot be rewritten.
pub(crate) fn to_upstream<B>(
    req: Request<B>,
    conn: &Conn,
    upgrade: Option<&HeaderValue>,
) -> Option<Request<B>> {
    let (mut parts, body) = req.into_parts();
    // The target's authority (an absolute-form target, HTTP/2's `:authority`) is the host, and
    // the upstream's `Host` is made from it (RFC 9112 §3.2.2, RFC 9113 §8.3.1); else `Host`.
    // (`handle` has refused a target with userinfo.)
    let host = match parts.uri.authority() {
        Some(authority) => {
            let host = HeaderValue::from_str(authority.as_str()).ok()?;
            parts.headers.insert(header::HOST, host.clone());
            Some(host)
        }
        None => parts.headers.get(header::HOST).cloned(),
    };
    headers::strip_hop_by_hop(&mut parts.headers, headers::Direction::ToUpstream, upgrade);
    // hyper already answered `Expect: 100-continue` towards the client.
    parts.headers.remove(header::EXPECT);
    headers::add_forwarded(&mut parts.headers, &conn.forwarded_for, host.as_ref());
    if parts.version == Version::HTTP_2 {
        headers::join_cookies(&mut parts.headers);
    }
    // An HTTP/1.1 request must carry `Host` (RFC 9112 §3.2): again when the client's
    // `Connection` named it, and empty for an HTTP/1.0 request that had none (`handle` has
    // refused an HTTP/1.1 one without).
    if !parts.headers.contains_key(header::HOST) {
        let host = host.unwrap_or_else(|| HeaderValue::from_static(""));
        parts.headers.insert(header::HOST, host);
    }
    if parts.uri.scheme().is_some() || parts.uri.authority().is_some() {
        // The upstream gets the origin form whatever the client sent (absolute form, h2).
        parts.uri = match parts.uri.path_and_query() {
            Some(pq) if pq.as_str().starts_with('/') => Uri::from(pq.clone()),
            // `http://host?q`: the empty path is `/` (RFC 9110 §4.2.3).
            Some(pq) if pq.as_str().starts_with('?') => {
                Uri::try_from(format!("/{}", pq.as_str())).ok()?
            }
            // HTTP/2's `:path` of an `OPTIONS *` (RFC 9113 §8.3.1): the asterisk form upstream.
            Some(pq) if pq.as_str() == "*" && parts.method == Method::OPTIONS => {
                Uri::from_static("*")
            }
            Some(_) => return None,
            None => Uri::from_static("/"),
        };
    }
    parts.version = Version::HTTP_11;
    Some(Request::from_parts(parts, body))
}

const UNKNOWN_CODING: &str = "only the chunked transfer coding is supported\n";

/// Sends the request to the upstream and returns its response, or a 502/504 naming the cause.
async fn forward(state: &State, conn: &Conn, mut req: Request<Incoming>) -> Response<ProxyBody> {
    // hyper upgrades HTTP/1.1 connections only (an HTTP/1.0 request's `Upgrade` is dropped as
    // hop-by-hop), and `h2c` is not tunnelled: its HTTP/2 requests would pass no CORS decision.
    let upgrade = if req.version() == Version::HTTP_11 {
        headers::upgrade_protocol(req.headers())
            .filter(|protocol| !headers::tokens(protocol).any(|t| t.eq_ignore_ascii_case("h2c")))
    } else {
        None
    };
    // hyper decodes one `chunked` alone: a body under any other coding, or chunked twice, would
    // reach the upstream still coded, with nothing saying so (RFC 9112 §6.1, §7).
    let mut chunked = 0;
    for value in req.headers().get_all(header::TRANSFER_ENCODING) {
        let Ok(codings) = value.to_str() else {
            return text(StatusCode::NOT_IMPLEMENTED, UNKNOWN_CODING);
        };
        for coding in codings.split(',').map(str::trim).filter(|c| !c.is_empty()) {
            if !coding.eq_ignore_ascii_case("chunked") {
                return text(StatusCode::NOT_IMPLEMENTED, UNKNOWN_CODING);
            }
            chunked += 1;
        }
    }
    if chunked > 1 {
        return text(StatusCode::BAD_REQUEST, "chunked applied more than once\n");
    }
    let client_upgrade = upgrade.as_ref().map(|_| hyper::upgrade::on(&mut req));
    let http1 = req.version() < Version::HTTP_2;
    let Some(request) = to_upstream(req, conn, upgrade.as_ref()) else {
        return text(StatusCode::BAD_REQUEST, "invalid request target\n");
    };
    let sent = tokio::time::timeout(
        state.config.upstream_timeout,
        state.upstream.send(&conn.lane, &conn.activity, request),
    )
    .await;
    let mut response = match sent {
        Ok(Ok(response)) => response,
        Ok(Err(failed)) => return failure(state, failed),
        Err(_) => {
            return failure(
                state,
                Failed {
                    failure: crate::upstream::Failure::Timeout,
                    error: None,
                },
            );
        }
    };

    let response_upgrade = if response.status() == StatusCode::SWITCHING_PROTOCOLS {
        let Some(client_upgrade) = client_upgrade else {
            tracing::warn!("upstream switched protocols without being asked to");
            return failure(
                state,
                Failed {
                    failure: crate::upstream::Failure::Other,
                    error: None,
                },
            );
        };
        let protocol = response.headers().get(header::UPGRADE).cloned();
        if let Some(upstream) = response.body_mut().take_switched() {
            spawn_tunnel(state, conn.activity.clone(), client_upgrade, upstream);
        }
        protocol
    } else {
        None
    };
    if http1 {
        response.body_mut().fail_after(&conn.flush);
    }
    headers::strip_hop_by_hop(
        response.headers_mut(),
        headers::Direction::ToClient,
        response_upgrade.as_ref(),
    );
    response.map(Either::Left)
}

fn failure(state: &State, failed: Failed) -> Response<ProxyBody> {
    let failure = failed.failure;
    let Some(cause) = failure.metric_label() else {
        // The client's own body: at debug level, so that no client fills the log at will.
        tracing::debug!(error = ?failed.error, "the request body could not be read");
        return text(failure.status(), failure.message());
    };
    state.metrics.upstream_error(cause);
    match &failed.error {
        Some(err) => tracing::warn!(cause, error = %err, "upstream request failed"),
        None => tracing::warn!(cause, "upstream request failed"),
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
    upstream: Switched,
) {
    let abort = state.abort.clone();
    let idle_timeout = state.config.idle_timeout;
    state.tasks.spawn(async move {
        let tunnel = async {
            let client = match client.await {
                Ok(client) => client,
                Err(err) => {
                    tracing::debug!(error = %err, "upgrade failed");
                    return;
                }
            };
            let mut client = TokioIo::new(client);
            // What the upstream sent right behind its 101 head is the tunnel's first bytes.
            if !upstream.read.is_empty()
                && let Err(err) = client.write_all(&upstream.read).await
            {
                tracing::debug!(error = %err, "tunnel closed with an error");
                return;
            }
            let mut upstream = upstream.io;
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

#[cfg(test)]
mod tests;
