//! Header rewriting: hop-by-hop removal (RFC 9110 §7.6.1), `X-Forwarded-*`, and applying the
//! engine's CORS headers to a response.

use std::fmt::Write as _;
use std::net::IpAddr;

use corsair_policy::{ResponseHeaders, Vary};
use http::header::{self, HeaderMap, HeaderName, HeaderValue};

/// Headers that describe one connection, not the message: never forwarded. `Proxy-*` are
/// included because the proxy authenticates nobody and the application must not see them.
const HOP_BY_HOP: [HeaderName; 9] = [
    header::CONNECTION,
    HeaderName::from_static("proxy-connection"),
    HeaderName::from_static("keep-alive"),
    header::TE,
    header::TRAILER,
    header::TRANSFER_ENCODING,
    header::UPGRADE,
    header::PROXY_AUTHORIZATION,
    header::PROXY_AUTHENTICATE,
];

static X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
static X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
static X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");

/// The protocol an HTTP/1.1 request asks to switch to (`Connection: upgrade` plus `Upgrade`).
pub fn upgrade_protocol(headers: &HeaderMap) -> Option<HeaderValue> {
    let wants_upgrade = connection_tokens(headers).any(|t| t.eq_ignore_ascii_case("upgrade"));
    if wants_upgrade {
        headers.get(header::UPGRADE).cloned()
    } else {
        None
    }
}

/// Removes the hop-by-hop headers and every header named in `Connection`. When `upgrade` is
/// set, the request or 101 response is an upgrade: `Upgrade` and `Connection: upgrade` are
/// put back, since the tunnel only works if both hops agree on it.
pub fn strip_hop_by_hop(headers: &mut HeaderMap, upgrade: Option<&HeaderValue>) {
    let named: Vec<HeaderName> = connection_tokens(headers)
        .filter_map(|t| HeaderName::from_bytes(t.as_bytes()).ok())
        .collect();
    for name in named {
        headers.remove(name);
    }
    for name in &HOP_BY_HOP {
        headers.remove(name);
    }
    if let Some(protocol) = upgrade {
        headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
        headers.insert(header::UPGRADE, protocol.clone());
    }
}

/// The comma-separated tokens of every `Connection` field line.
fn connection_tokens(headers: &HeaderMap) -> impl Iterator<Item = &str> {
    headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(str::trim)
        .filter(|t| !t.is_empty())
}

/// Appends the client address to `X-Forwarded-For`, and adds `X-Forwarded-Proto` and
/// `X-Forwarded-Host` when absent. Values already present (set by an ingress in front of the
/// pod) are kept: they describe the original request better than this last hop does.
pub fn add_forwarded(headers: &mut HeaderMap, client: IpAddr, host: Option<&HeaderValue>) {
    let client = client.to_canonical().to_string();
    let mut chain = String::new();
    for value in headers.get_all(&X_FORWARDED_FOR) {
        if let Ok(value) = value.to_str() {
            let value = value.trim();
            if !value.is_empty() {
                chain.push_str(value);
                chain.push_str(", ");
            }
        }
    }
    chain.push_str(&client);
    if let Ok(value) = HeaderValue::from_str(&chain) {
        headers.insert(X_FORWARDED_FOR.clone(), value);
    }
    if !headers.contains_key(&X_FORWARDED_PROTO) {
        headers.insert(X_FORWARDED_PROTO.clone(), HeaderValue::from_static("http"));
    }
    if let Some(host) = host
        && !headers.contains_key(&X_FORWARDED_HOST)
    {
        headers.insert(X_FORWARDED_HOST.clone(), host.clone());
    }
}

/// Removes every `Access-Control-*` header (the proxy owns CORS in Enforce mode).
pub fn strip_access_control(headers: &mut HeaderMap) {
    let names: Vec<HeaderName> = headers
        .keys()
        .filter(|name| name.as_str().starts_with("access-control-"))
        .cloned()
        .collect();
    for name in names {
        headers.remove(name);
    }
}

/// Sets the engine's CORS headers, except `Vary`, which is merged separately ([`merge_vary`]).
pub fn set_cors(headers: &mut HeaderMap, cors: &ResponseHeaders<'_>) {
    let mut buf = String::new();
    cors.for_each(|name, value| {
        if name.eq_ignore_ascii_case("vary") {
            return;
        }
        buf.clear();
        if write!(buf, "{value}").is_err() {
            return;
        }
        match (
            HeaderName::from_bytes(name.as_bytes()),
            HeaderValue::from_bytes(buf.as_bytes()),
        ) {
            (Ok(name), Ok(value)) => {
                headers.insert(name, value);
            }
            _ => tracing::warn!(header = name, value = %buf, "engine produced an invalid header; skipped"),
        }
    });
}

/// Merges `add` into the `Vary` field lines, leaving a single line when anything changes.
pub fn merge_vary(headers: &mut HeaderMap, add: Vary) {
    if add == Vary::default() {
        return;
    }
    let lines: Vec<&str> = headers
        .get_all(header::VARY)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .collect();
    let merged = corsair_policy::merge_vary(lines.iter().copied(), add);
    if let Some(merged) = merged
        && let Ok(value) = HeaderValue::from_str(&merged)
    {
        headers.insert(header::VARY, value);
    }
}

#[cfg(test)]
mod tests;
