//! Header rewriting on the request path: hop-by-hop removal (RFC 9110 §7.6.1),
//! `X-Forwarded-*`, stripping the upstream's `Access-Control-*`, and merging `Vary`.
//!
//! Everything here runs on every request and allocates nothing in the common cases: names are
//! constants, values are the request's own or were built once (per connection or per policy),
//! and the few values that must be assembled per request (an `X-Forwarded-For` chain, a merged
//! `Vary`) are carved out of a reused per-thread buffer ([`build_value`]).

use std::cell::RefCell;
use std::fmt::Write as _;
use std::net::IpAddr;

use bytes::BytesMut;
use corsair_policy::Vary;
use http::header::{self, HeaderMap, HeaderName, HeaderValue};

/// Headers that describe one connection, not the message: never forwarded. `Proxy-*` are
/// included because the proxy authenticates nobody and the application must not see them.
/// `Trailer` (last) goes from requests only: see [`Direction`].
const HOP_BY_HOP: [HeaderName; HOP_BY_HOP_COUNT] = [
    header::CONNECTION,
    HeaderName::from_static("proxy-connection"),
    HeaderName::from_static("keep-alive"),
    header::TE,
    header::TRANSFER_ENCODING,
    header::UPGRADE,
    header::PROXY_AUTHORIZATION,
    header::PROXY_AUTHENTICATE,
    header::TRAILER,
];

const HOP_BY_HOP_COUNT: usize = 9;

/// `Trailer`'s bit among [`HOP_BY_HOP`].
const TRAILER_BIT: u32 = 1 << (HOP_BY_HOP_COUNT - 1);

/// Which way a message goes through the proxy.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Direction {
    /// A request: its trailers are not sent on (the upstream hop sends a body without them), so
    /// its `Trailer` field, which would announce them, goes too.
    ToUpstream,
    /// A response: its trailers are passed on, so `Trailer`, which declares them end to end
    /// (RFC 9110 §6.6.2), stays. hyper's HTTP/1 server sends a client only the trailer fields
    /// it declares, and only to a client that sent `TE: trailers`.
    ToClient,
}

/// The `Access-Control-*` response headers of the Fetch standard and Private Network Access.
const ACCESS_CONTROL: [HeaderName; 7] = [
    header::ACCESS_CONTROL_ALLOW_ORIGIN,
    header::ACCESS_CONTROL_ALLOW_CREDENTIALS,
    header::ACCESS_CONTROL_ALLOW_METHODS,
    header::ACCESS_CONTROL_ALLOW_HEADERS,
    header::ACCESS_CONTROL_EXPOSE_HEADERS,
    header::ACCESS_CONTROL_MAX_AGE,
    HeaderName::from_static("access-control-allow-private-network"),
];

static X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
static X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
static X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");
static HTTP: HeaderValue = HeaderValue::from_static("http");
static UPGRADE: HeaderValue = HeaderValue::from_static("upgrade");

/// Field lines of one header read without allocating: up to this many are handled on the
/// stack, more (only hostile or broken peers send them) fall back to a `Vec`.
const INLINE_LINES: usize = 4;

/// The protocol an HTTP/1.1 request asks to switch to (`Connection: upgrade` plus `Upgrade`).
pub fn upgrade_protocol(headers: &HeaderMap) -> Option<HeaderValue> {
    let wants_upgrade = headers
        .get_all(header::CONNECTION)
        .iter()
        .flat_map(tokens)
        .any(|t| t.eq_ignore_ascii_case("upgrade"));
    // A protocol list that is not visible ASCII is not read as an upgrade: what it would open
    // could not be checked (an `h2c` tunnel would carry requests past every CORS decision).
    if wants_upgrade {
        headers
            .get(header::UPGRADE)
            .filter(|protocols| protocols.to_str().is_ok())
            .cloned()
    } else {
        None
    }
}

/// Removes the hop-by-hop headers and every header named in `Connection`. When `upgrade` is
/// set, the request or 101 response is an upgrade: `Upgrade` and `Connection: upgrade` are
/// put back, since the tunnel only works if both hops agree on it.
pub fn strip_hop_by_hop(
    headers: &mut HeaderMap,
    direction: Direction,
    upgrade: Option<&HeaderValue>,
) {
    // One pass over the names finds which are present; only those are looked up to be removed
    // (a kept-alive upstream's response carries `Connection` and nothing else of the list).
    let (mut present, _) = present_of(headers, &HOP_BY_HOP, |_| false);
    if direction == Direction::ToClient {
        present &= !TRAILER_BIT;
    }
    if present == 0 {
        return;
    }
    if present & 1 != 0 {
        // `Connection` (HOP_BY_HOP[0]) names more headers to remove. Its lines are cloned (a
        // reference count each) so the map can be changed meanwhile.
        let mut inline: [Option<HeaderValue>; INLINE_LINES] = Default::default();
        let mut spilled = Vec::new();
        for (i, value) in headers.get_all(header::CONNECTION).iter().enumerate() {
            match inline.get_mut(i) {
                Some(slot) => *slot = Some(value.clone()),
                None => spilled.push(value.clone()),
            }
        }
        for value in inline.iter().flatten().chain(&spilled) {
            for token in tokens(value) {
                // A `&str` key is looked up without building a `HeaderName`.
                headers.remove(token);
            }
        }
    }
    remove_present(headers, &HOP_BY_HOP, present);
    if let Some(protocol) = upgrade {
        headers.insert(header::CONNECTION, UPGRADE.clone());
        headers.insert(header::UPGRADE, protocol.clone());
    }
}

/// Bit `i` is set when `names[i]` is in `headers`, and the flag when another name there
/// satisfies `other`: one pass over the map's names, comparisons only (a standard name compares
/// as an enum), no hashing.
fn present_of(
    headers: &HeaderMap,
    names: &[HeaderName],
    other: impl Fn(&HeaderName) -> bool,
) -> (u32, bool) {
    let mut present = 0;
    let mut others = false;
    for name in headers.keys() {
        match names.iter().position(|n| n == name) {
            Some(i) => present |= 1 << i,
            None => others |= other(name),
        }
    }
    (present, others)
}

/// Removes the `names` whose bit is set in `present` (they may be gone already: harmless).
fn remove_present(headers: &mut HeaderMap, names: &[HeaderName], present: u32) {
    for (i, name) in names.iter().enumerate() {
        if present & (1 << i) != 0 {
            headers.remove(name);
        }
    }
}

/// The comma-separated, non-empty tokens of one field line (`Connection`, `Upgrade`), split on
/// its bytes: a token with bytes outside ASCII (obs-text) is skipped alone, never the whole
/// line, so `x-secret, \xff` still names `x-secret`.
pub(crate) fn tokens(value: &HeaderValue) -> impl Iterator<Item = &str> {
    value
        .as_bytes()
        .split(|&b| b == b',')
        .map(<[u8]>::trim_ascii)
        .filter(|t| !t.is_empty() && t.is_ascii())
        .filter_map(|t| std::str::from_utf8(t).ok())
}

/// The `X-Forwarded-For` value of a client connection: its address, built once per connection.
pub fn forwarded_for(client: IpAddr) -> HeaderValue {
    let mut text = String::new();
    let _ = write!(text, "{}", client.to_canonical());
    // An IP address is always a valid header value.
    let value = HeaderValue::from_str(&text).unwrap_or_else(|_| HeaderValue::from_static(""));
    // The first clone of a `Bytes` made from a `Vec` allocates its shared header; do it now,
    // so that cloning the value per request is only a reference count.
    drop(value.clone());
    value
}

/// Joins a request's `Cookie` fields into one line, as an HTTP/2 request's must be before it
/// goes on as HTTP/1.1 (RFC 9113 §8.2.3): HTTP/2 clients may send each cookie as a field of
/// its own, and an application that reads one `Cookie` line would see only the first.
pub fn join_cookies(headers: &mut HeaderMap) {
    let lines = headers.get_all(header::COOKIE);
    if lines.iter().nth(1).is_none() {
        return;
    }
    let joined = build_value(|buf| {
        for (i, value) in lines.iter().enumerate() {
            if i > 0 {
                buf.extend_from_slice(b"; ");
            }
            buf.extend_from_slice(value.as_bytes());
        }
        Ok(())
    });
    // Valid values joined by `; ` make a valid value: `None` cannot happen.
    if let Some(joined) = joined {
        headers.insert(header::COOKIE, joined);
    }
}

/// Appends the client address to `X-Forwarded-For`, and adds `X-Forwarded-Proto` and
/// `X-Forwarded-Host` when absent. Values already present (set by an ingress in front of the
/// pod) are kept: they describe the original request better than this last hop does.
pub fn add_forwarded(headers: &mut HeaderMap, client: &HeaderValue, host: Option<&HeaderValue>) {
    let chain = if headers.contains_key(&X_FORWARDED_FOR) {
        build_value(|out| {
            // As bytes: a line with obs-text is passed on as it came, not dropped with the
            // addresses an ingress recorded on it.
            for value in headers.get_all(&X_FORWARDED_FOR) {
                let value = value.as_bytes().trim_ascii();
                if !value.is_empty() {
                    out.extend_from_slice(value);
                    out.extend_from_slice(b", ");
                }
            }
            out.extend_from_slice(client.as_bytes());
            Ok(())
        })
    } else {
        Some(client.clone())
    };
    if let Some(chain) = chain {
        headers.insert(X_FORWARDED_FOR.clone(), chain);
    }
    if !headers.contains_key(&X_FORWARDED_PROTO) {
        headers.insert(X_FORWARDED_PROTO.clone(), HTTP.clone());
    }
    if let Some(host) = host
        && !headers.contains_key(&X_FORWARDED_HOST)
    {
        headers.insert(X_FORWARDED_HOST.clone(), host.clone());
    }
}

/// Removes every `Access-Control-*` header (the proxy owns CORS in Enforce mode).
pub fn strip_access_control(headers: &mut HeaderMap) {
    let is_cors = |name: &HeaderName| name.as_str().starts_with("access-control-");
    // One pass finds the standard names present, and whether any other `access-control-*` is.
    let (present, others) = present_of(headers, &ACCESS_CONTROL, is_cors);
    remove_present(headers, &ACCESS_CONTROL, present);
    // Names no standard defines (`access-control-foo`) are rare enough to collect.
    if others {
        let names: Vec<HeaderName> = headers.keys().filter(|n| is_cors(n)).cloned().collect();
        for name in names {
            headers.remove(name);
        }
    }
}

/// Merges `add` into the `Vary` field lines, leaving a single line when anything changes.
pub fn merge_vary(headers: &mut HeaderMap, add: Vary) {
    let Some(fresh) = add.header_value() else {
        return;
    };
    let lines = headers.get_all(header::VARY).iter().count();
    if lines == 0 {
        headers.insert(header::VARY, fresh.clone());
        return;
    }
    // `None` when a line is not visible ASCII: it cannot be merged.
    let merged = 'merge: {
        let mut inline: [&str; INLINE_LINES] = [""; INLINE_LINES];
        let mut spilled: Vec<&str> = Vec::new();
        for (i, value) in headers.get_all(header::VARY).iter().enumerate() {
            let Ok(text) = value.to_str() else {
                break 'merge None;
            };
            match inline.get_mut(i) {
                Some(slot) => *slot = text,
                None => spilled.push(text),
            }
        }
        let existing = inline[..lines.min(INLINE_LINES)].iter().chain(&spilled);
        let mut changed = false;
        let value = build_value(|out| {
            changed = corsair_policy::write_merged_vary(existing.copied(), add, out)?;
            Ok(())
        });
        Some(value.filter(|_| changed))
    };
    match merged {
        Some(Some(merged)) => {
            headers.insert(header::VARY, merged);
        }
        Some(None) => {}
        // The unreadable line's names may still matter to a cache: it stays as it came, and
        // the proxy's names go on a line of their own.
        None => {
            headers.append(header::VARY, fresh.clone());
        }
    }
}

thread_local! {
    static SCRATCH: RefCell<BytesMut> = RefCell::new(BytesMut::new());
}

/// Room reserved in the scratch buffer at a time.
const SCRATCH_CHUNK: usize = 16 * 1024;
/// Values are built only when at least this much room is left.
const SCRATCH_MIN: usize = 1024;

/// Builds a header value in this thread's scratch buffer.
///
/// Each value is a view into one shared allocation. When the buffer runs low it asks for a new
/// chunk, and `BytesMut` hands back the old allocation itself once every value carved out of it
/// has been dropped (the requests that carried them are done), so in steady state nothing is
/// allocated. `None` when `write` fails or produces text that is not a valid header value.
pub fn build_value(write: impl FnOnce(&mut BytesMut) -> std::fmt::Result) -> Option<HeaderValue> {
    SCRATCH.with_borrow_mut(|buf| {
        if buf.capacity() - buf.len() < SCRATCH_MIN {
            buf.reserve(SCRATCH_CHUNK);
        }
        let written = write(buf);
        let bytes = buf.split().freeze();
        written.ok()?;
        HeaderValue::from_maybe_shared(bytes).ok()
    })
}

#[cfg(test)]
mod tests;
