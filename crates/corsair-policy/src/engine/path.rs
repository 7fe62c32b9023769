//! The path routes are matched against.

/// The path a request's route is chosen by: `path` itself, or, when it could name a different
/// path to the application than it spells, that path ([`canonical_path`]).
pub fn route_path(path: &str) -> std::borrow::Cow<'_, str> {
    if needs_canonical(path) {
        std::borrow::Cow::Owned(canonical_path(path))
    } else {
        std::borrow::Cow::Borrowed(path)
    }
}

/// Whether `path` could name, to the application, a different path than it spells: a
/// percent-escape, a `;` parameter, an empty, `.` or `..` segment.
pub(crate) fn needs_canonical(path: &str) -> bool {
    let bytes = path.as_bytes();
    bytes.iter().enumerate().any(|(i, &b)| {
        b == b'%' || b == b';' || (b == b'/' && matches!(bytes.get(i + 1), Some(b'/' | b'.')))
    })
}

/// The path routes are matched against, as an application's router is likely to see it:
/// every percent-escape decoded (`%2F` too, as Go's and others' routers do), `;` parameters cut
/// from each segment (as Tomcat and Spring do), empty and `.` segments dropped and `..` resolved
/// (RFC 3986 §5.2.4). Browsers send all of these as written, so a route matched on the raw path
/// could be dodged: `/%69nternal` or `/internal;x/` reaching the application's `/internal`
/// under the top level's rules. Case is kept: prefixes match case-sensitively, as the Gateway
/// API's `PathPrefix` does. Allocates, so only for the paths [`needs_canonical`] picks.
pub(crate) fn canonical_path(path: &str) -> String {
    let raw = path.as_bytes();
    let mut decoded = Vec::with_capacity(raw.len());
    let mut i = 0;
    while i < raw.len() {
        let hex = |b: u8| char::from(b).to_digit(16);
        match (
            raw[i],
            raw.get(i + 1).copied().and_then(hex),
            raw.get(i + 2).copied().and_then(hex),
        ) {
            (b'%', Some(high), Some(low)) => {
                // Two hex digits: the value fits a byte.
                decoded.push(u8::try_from(high * 16 + low).unwrap_or(b'%'));
                i += 3;
            }
            (b, _, _) => {
                decoded.push(b);
                i += 1;
            }
        }
    }
    let mut segments: Vec<&[u8]> = Vec::new();
    for segment in decoded.split(|&b| b == b'/') {
        let segment = segment.split(|&b| b == b';').next().unwrap_or_default();
        match segment {
            b"" | b"." => {}
            b".." => {
                segments.pop();
            }
            name => segments.push(name),
        }
    }
    let mut canonical = String::with_capacity(decoded.len() + 1);
    for segment in segments {
        canonical.push('/');
        canonical.push_str(&String::from_utf8_lossy(segment));
    }
    if canonical.is_empty() {
        canonical.push('/');
    }
    canonical
}

/// `/api/` and `/api` are the same prefix, as in the Gateway API's `PathPrefix`.
pub(crate) fn normalize_prefix(prefix: &str) -> &str {
    let trimmed = prefix.trim_end_matches('/');
    if trimmed.is_empty() { "/" } else { trimmed }
}

/// Whole-segment prefix match: `/api` matches `/api` and `/api/x`, never `/apix`.
pub(crate) fn prefix_matches(prefix: &str, path: &str) -> bool {
    if prefix == "/" {
        return true;
    }
    match path.strip_prefix(prefix) {
        Some(rest) => rest.is_empty() || rest.starts_with('/'),
        None => false,
    }
}
