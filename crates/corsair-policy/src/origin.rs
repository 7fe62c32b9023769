//! Origins: checking the ones a policy lists, and splitting the ones a request carries.
//!
//! A serialized origin is `scheme "://" host [ ":" port ]` (RFC 6454 §6.1, WHATWG HTML
//! "serialization of an origin"). Browsers send it with a lowercase scheme and host and without
//! the scheme's default port, so a policy entry that differs from that form would never match:
//! validation refuses it instead of letting it silently allow nothing.

/// The parts of a well-formed origin, borrowed from its text.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct OriginParts<'a> {
    pub scheme: &'a str,
    /// The host as written: a DNS name, an IPv4 address, or `[IPv6]`.
    pub host: &'a str,
    pub port: Option<&'a str>,
}

/// One entry of `allowOrigins`, once checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum OriginPattern {
    /// `*`: every origin.
    Any,
    /// `https://app.example.com`.
    Exact,
    /// `https://*.example.com[:port]`: `suffix` is `example.com`.
    Wildcard {
        scheme: String,
        suffix: String,
        port: Option<String>,
    },
}

/// The port a scheme implies when none is written.
pub(crate) fn default_port(scheme: &str) -> Option<&'static str> {
    match scheme {
        "http" | "ws" => Some("80"),
        "https" | "wss" => Some("443"),
        _ => None,
    }
}

fn is_scheme(s: &str) -> bool {
    match s.as_bytes().split_first() {
        Some((first, rest)) => {
            first.is_ascii_alphabetic()
                && rest
                    .iter()
                    .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'+' | b'-' | b'.'))
        }
        None => false,
    }
}

fn is_port(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 5
        && s.bytes().all(|b| b.is_ascii_digit())
        && s.parse::<u16>().is_ok()
}

/// The bytes of a DNS name or IPv4 address, indexed by byte: one load per byte of a request's
/// origin.
const HOST_BYTE: [bool; 256] = {
    let mut table = [false; 256];
    let mut i = 0;
    while i < 256 {
        let b = i as u8;
        table[i] = b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_');
        i += 1;
    }
    table
};

/// A DNS name or IPv4 address with non-empty labels, or a bracketed IPv6 address.
fn is_host(host: &str) -> bool {
    if let Some(inner) = host.strip_prefix('[') {
        return match inner.strip_suffix(']') {
            Some(addr) => {
                !addr.is_empty()
                    && addr
                        .bytes()
                        .all(|b| b.is_ascii_hexdigit() || matches!(b, b':' | b'.'))
            }
            None => false,
        };
    }
    // One pass: only host bytes, and no empty label (no leading, trailing or doubled dot).
    let mut prev = b'.';
    for b in host.bytes() {
        if !HOST_BYTE[usize::from(b)] || (b == b'.' && prev == b'.') {
            return false;
        }
        prev = b;
    }
    prev != b'.'
}

/// Splits `host[:port]` (an authority without userinfo), handling `[IPv6]:port`. Anything but
/// `:port` after `]` leaves the whole authority as the host, which no host check accepts.
pub(crate) fn split_host_port(authority: &str) -> (&str, Option<&str>) {
    if authority.starts_with('[') {
        return match authority.find(']') {
            Some(end) => {
                let (host, rest) = authority.split_at(end + 1);
                match rest.strip_prefix(':') {
                    Some(port) => (host, Some(port)),
                    None if rest.is_empty() => (host, None),
                    None => (authority, None),
                }
            }
            None => (authority, None),
        };
    }
    match authority.rsplit_once(':') {
        Some((host, port)) => (host, Some(port)),
        None => (authority, None),
    }
}

/// Splits an `Origin` header value. `None` when it is not `scheme://host[:port]`; `null` is
/// handled by the caller.
pub(crate) fn parse_request_origin(origin: &str) -> Option<OriginParts<'_>> {
    // A scheme has no `:`, so the first `:` ends it (and a byte search is cheaper than a
    // substring search on this hot path).
    let colon = origin.bytes().position(|b| b == b':')?;
    let (scheme, rest) = origin.split_at(colon);
    let authority = rest.strip_prefix("://")?;
    if !is_scheme(scheme) {
        return None;
    }
    let (host, port) = split_host_port(authority);
    // Browsers keep a name's one trailing dot (a page at `https://example.com./` sends
    // `Origin: https://example.com.`): a valid origin, distinct from the one without, so it
    // stays in `host` and only `*` and regexes can allow it.
    let name = match host.strip_suffix('.') {
        Some(name) if !name.starts_with('[') => name,
        _ => host,
    };
    if !is_host(name) || port.is_some_and(|p| !is_port(p)) {
        return None;
    }
    Some(OriginParts { scheme, host, port })
}

/// Whether the `Origin` value names the same host and port as the `Host` header (ASCII
/// case-insensitive, the scheme's default port being the same as no port).
///
/// Cross-origin requests, the common case here, are told apart by a byte comparison of the
/// authority with `Host`; only when one is a prefix of the other is the origin parsed.
pub(crate) fn is_same_origin(origin: &str, host_header: &str) -> bool {
    let Some(colon) = origin.bytes().position(|b| b == b':') else {
        return false;
    };
    let Some(authority) = origin[colon..].strip_prefix("://") else {
        return false;
    };
    let host_header = host_header.trim_matches([' ', '\t']);
    let (a, h) = (authority.as_bytes(), host_header.as_bytes());
    let n = a.len().min(h.len());
    if !a[..n].eq_ignore_ascii_case(&h[..n]) {
        return false;
    }
    parse_request_origin(origin).is_some_and(|parts| same_host_and_port(&parts, host_header))
}

fn same_host_and_port(origin: &OriginParts<'_>, host_header: &str) -> bool {
    let (host, port) = split_host_port(host_header.trim());
    let default = default_port(origin.scheme);
    origin.host.eq_ignore_ascii_case(host)
        && effective_port(origin.port, default) == effective_port(port, default)
}

fn effective_port<'a>(port: Option<&'a str>, default: Option<&str>) -> Option<&'a str> {
    port.filter(|p| Some(*p) != default)
}

/// Checks one `allowOrigins` entry; the error says why it can never be an origin a browser sends.
pub(crate) fn parse_config_origin(entry: &str) -> Result<OriginPattern, String> {
    if entry == "*" {
        return Ok(OriginPattern::Any);
    }
    if entry == "null" {
        return Err("is not an origin here: allow it with allowNullOrigin: true".to_owned());
    }
    let Some((scheme, rest)) = entry.split_once("://") else {
        return Err("is not an origin: it has no scheme (write it as https://host)".to_owned());
    };
    if !is_scheme(scheme) {
        return Err(format!("is not an origin: {scheme:?} is not a URL scheme"));
    }
    if scheme.bytes().any(|b| b.is_ascii_uppercase()) {
        return Err(
            "is not an origin: the scheme has uppercase letters, browsers send it in lowercase"
                .to_owned(),
        );
    }
    if rest.contains('@') {
        return Err("is not an origin: it has userinfo".to_owned());
    }
    if let Some(pos) = rest.find(['/', '?', '#']) {
        let what = match rest.as_bytes()[pos] {
            b'/' => "a path",
            b'?' => "a query",
            _ => "a fragment",
        };
        return Err(format!("is not an origin: it has {what}"));
    }
    let (host, port) = split_host_port(rest);
    if host.is_empty() {
        return Err("is not an origin: it has no host".to_owned());
    }
    if let Some(port) = port {
        if !is_port(port) {
            return Err(format!("is not an origin: {port:?} is not a port"));
        }
        if default_port(scheme) == Some(port) {
            return Err(format!(
                "is not an origin: :{port} is the default port of {scheme}, which browsers never send"
            ));
        }
    }
    if host.bytes().any(|b| b.is_ascii_uppercase()) {
        return Err("is not an origin: the host has uppercase letters, browsers send it in lowercase so it would never match".to_owned());
    }
    if host.contains('*') {
        return match host.strip_prefix("*.") {
            Some(suffix) if !suffix.contains('*') && is_host(suffix) && !suffix.starts_with('[') => {
                Ok(OriginPattern::Wildcard {
                    scheme: scheme.to_owned(),
                    suffix: suffix.to_owned(),
                    port: port.map(str::to_owned),
                })
            }
            _ => Err("is not a valid wildcard: `*` may only stand for the leftmost labels, as in https://*.example.com".to_owned()),
        };
    }
    if !is_host(host) {
        return Err("is not an origin: the host is not a valid host name or address".to_owned());
    }
    Ok(OriginPattern::Exact)
}

/// How a browser writes a host that [`parse_config_origin`] accepted, when that is not how the
/// policy wrote it. Browsers parse a host that ends in a number as an IPv4 address and a
/// bracketed one as IPv6 (WHATWG URL, "host parsing"), and send the address in one spelling.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum HostSpelling {
    /// Browsers send the host as written.
    AsWritten,
    /// Browsers send it as this.
    Browsers(String),
    /// No browser can send it: it is no valid address. The text says why.
    Never(&'static str),
}

/// See [`HostSpelling`]. Names are left to the other checks: only addresses are spelled here.
/// Browsers read IPv4 addresses in the hosts of special schemes only (`http`, `https`, `ws`,
/// `wss`, `ftp`); another scheme's host is opaque to them, save a bracketed IPv6 address.
pub(crate) fn browser_host(scheme: &str, host: &str) -> HostSpelling {
    let written = |canonical: String| {
        if canonical == host {
            HostSpelling::AsWritten
        } else {
            HostSpelling::Browsers(canonical)
        }
    };
    if let Some(inner) = host.strip_prefix('[').and_then(|h| h.strip_suffix(']')) {
        return match inner.parse::<std::net::Ipv6Addr>() {
            Ok(addr) => written(format!("[{}]", ipv6_serialized(addr))),
            Err(_) => HostSpelling::Never("it is not an IPv6 address"),
        };
    }
    if !is_special(scheme) || !ends_in_number(host) {
        return HostSpelling::AsWritten;
    }
    match ipv4(host) {
        Some(addr) => written(std::net::Ipv4Addr::from(addr).to_string()),
        None => HostSpelling::Never(
            "a host that ends in a number is an IPv4 address to browsers, and this one is not one",
        ),
    }
}

/// The WHATWG URL Standard's special schemes that have hosts (`file` aside).
pub(crate) fn is_special(scheme: &str) -> bool {
    matches!(scheme, "http" | "https" | "ws" | "wss" | "ftp")
}

/// Whether the host's last label is a number, which makes browsers parse it as an IPv4 address.
pub(crate) fn ends_in_number(host: &str) -> bool {
    let last = host.rsplit('.').next().unwrap_or(host);
    match last.strip_prefix("0x").or_else(|| last.strip_prefix("0X")) {
        Some(hex) => hex.bytes().all(|b| b.is_ascii_hexdigit()),
        None => !last.is_empty() && last.bytes().all(|b| b.is_ascii_digit()),
    }
}

/// WHATWG's IPv4 parser: one to four parts, each decimal, octal (`0` first) or hex (`0x`), the
/// last filling the bytes the others leave.
fn ipv4(host: &str) -> Option<u32> {
    let parts: Vec<u64> = host.split('.').map(ipv4_number).collect::<Option<_>>()?;
    let (last, init) = parts.split_last()?;
    if parts.len() > 4 || init.iter().any(|&n| n > 255) {
        return None;
    }
    let room = 1u64 << (8 * (5 - parts.len()));
    if *last >= room {
        return None;
    }
    let high = init
        .iter()
        .enumerate()
        .fold(0u64, |acc, (i, n)| acc | n << (8 * (3 - i)));
    u32::try_from(high | last).ok()
}

fn ipv4_number(part: &str) -> Option<u64> {
    let (digits, radix) = match part.strip_prefix("0x").or_else(|| part.strip_prefix("0X")) {
        Some(hex) => (hex, 16),
        None if part.len() > 1 && part.starts_with('0') => (&part[1..], 8),
        None if part.is_empty() => return None,
        None => (part, 10),
    };
    if digits.is_empty() {
        return Some(0);
    }
    if !digits.chars().all(|c| c.is_digit(radix)) {
        return None;
    }
    // Only overflow is left to fail: a number that large is out of range anyway.
    Some(u64::from_str_radix(digits, radix).unwrap_or(u64::MAX))
}

/// WHATWG's IPv6 serialization: lowercase hex pieces, the first longest run of two or more zero
/// pieces written `::`, and never a dotted IPv4 tail (which `Ipv6Addr`'s `Display` writes for
/// `::ffff:a.b.c.d`).
fn ipv6_serialized(addr: std::net::Ipv6Addr) -> String {
    let pieces = addr.segments();
    let (mut best, mut run) = ((0, 0), (0, 0));
    for (i, &p) in pieces.iter().enumerate() {
        if p == 0 {
            run = if run.1 == 0 {
                (i, 1)
            } else {
                (run.0, run.1 + 1)
            };
            if run.1 > best.1 {
                best = run;
            }
        } else {
            run = (0, 0);
        }
    }
    let mut out = String::new();
    let mut i = 0;
    while i < pieces.len() {
        if best.1 >= 2 && i == best.0 {
            out.push_str(if i == 0 { "::" } else { ":" });
            i += best.1;
            continue;
        }
        out.push_str(&format!("{:x}", pieces[i]));
        if i + 1 < pieces.len() {
            out.push(':');
        }
        i += 1;
    }
    out
}

#[cfg(test)]
mod tests;
