//! Origins, both ways: an arbitrary `allowOrigins` entry through validation and compilation, and
//! an arbitrary `Origin` header against a fixed policy, whose answer is checked against a
//! reference matcher written here independently of the engine.
//!
//! Input: the first byte picks the half; the rest is the text.
#![no_main]

use std::sync::LazyLock;

use corsair_policy::{CorsPolicySpec, Engine, RequestInfo, Verdict, validate};
use libfuzzer_sys::fuzz_target;

/// Exact origins, two wildcards (one with a port) and one anchored regex.
const EXACT: [&str; 3] = [
    "https://app.example.com",
    "http://localhost:3000",
    "https://[::1]:8443",
];

static ENGINE: LazyLock<Engine> = LazyLock::new(|| {
    let mut origins: Vec<String> = EXACT.iter().map(|o| (*o).to_owned()).collect();
    origins.push("https://*.example.org".to_owned());
    origins.push("https://*.example.net:8443".to_owned());
    let spec = CorsPolicySpec {
        allow_origins: Some(origins),
        allow_origin_regexes: Some(vec![r"https://pr-[0-9]+\.preview\.example\.io".to_owned()]),
        ..CorsPolicySpec::default()
    };
    match Engine::compile(&spec) {
        Ok((engine, _)) => engine,
        Err(report) => panic!("fuzz policy refused: {report:?}"),
    }
});

/// A cross-origin GET from `origin` to `host`.
fn request<'a>(origin: &'a str, host: Option<&'a str>) -> RequestInfo<'a> {
    RequestInfo {
        method: "GET",
        path: "/",
        host,
        origin: Some(origin),
        request_method: None,
        request_headers: &[],
        request_private_network: false,
    }
}

/// Whether the fixed policy's engine allows `origin` on a request to `api.example.com` (an
/// origin of that host is same-origin: not a CORS request, so not allowed either).
fn allowed(engine: &Engine, origin: &str) -> bool {
    matches!(
        engine
            .decide(&request(origin, Some("api.example.com")))
            .verdict,
        Verdict::Allowed(_)
    )
}

/// Whether an entry's engine allows `origin` on a request without a `Host`: an entry may name
/// any host, and one equal to the request's would make the request same-origin, not allowed.
fn allowed_anywhere(engine: &Engine, origin: &str) -> bool {
    matches!(
        engine.decide(&request(origin, None)).verdict,
        Verdict::Allowed(_)
    )
}

/// One or more non-empty labels of host characters, separated by single dots.
fn is_labels(s: &str) -> bool {
    !s.is_empty()
        && s.split('.').all(|label| {
            !label.is_empty()
                && label
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        })
}

/// `https://LABELS.suffix` followed by exactly `port` (`""` for none).
fn wildcard_ref(origin: &str, suffix: &str, port: &str) -> bool {
    let Some(authority) = origin.strip_prefix("https://") else {
        return false;
    };
    let Some(host) = authority.strip_suffix(port) else {
        return false;
    };
    let Some(labels) = host.strip_suffix(suffix) else {
        return false;
    };
    labels.strip_suffix('.').is_some_and(is_labels)
}

/// `https://pr-<ASCII digits>.preview.example.io`, nothing before or after.
fn regex_ref(origin: &str) -> bool {
    origin
        .strip_prefix("https://pr-")
        .and_then(|rest| rest.strip_suffix(".preview.example.io"))
        .is_some_and(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()))
}

fn reference(origin: &str) -> bool {
    EXACT.contains(&origin)
        || wildcard_ref(origin, "example.org", "")
        || wildcard_ref(origin, "example.net", ":8443")
        || regex_ref(origin)
}

/// A policy entry that validation accepts compiles, allows itself (exact) or a subdomain of its
/// suffix (wildcard), and never the bare suffix nor the suffix under another domain.
fn check_entry(entry: &str) {
    let spec = CorsPolicySpec {
        allow_origins: Some(vec![entry.to_owned()]),
        ..CorsPolicySpec::default()
    };
    let report = validate(&spec);
    let compiled = Engine::compile(&spec);
    assert_eq!(
        report.has_errors(),
        compiled.is_err(),
        "validate and compile disagree on {entry:?}: {report:?}"
    );
    let Ok((engine, _)) = compiled else {
        return;
    };
    if entry == "*" {
        return;
    }
    match entry.split_once("://*.") {
        None => {
            assert!(!entry.contains('*'), "{entry:?} accepted with a `*`");
            assert!(
                allowed_anywhere(&engine, entry),
                "exact entry {entry:?} does not allow itself"
            );
            assert!(
                !allowed_anywhere(&engine, &format!("{entry}.evil.test")),
                "{entry:?}"
            );
            assert!(!allowed_anywhere(&engine, "null"), "{entry:?} allows null");
        }
        Some((scheme, rest)) => {
            let (suffix, port) = match rest.rsplit_once(':') {
                Some((suffix, port)) => (suffix, format!(":{port}")),
                None => (rest, String::new()),
            };
            let sub = format!("{scheme}://sub.{suffix}{port}");
            assert!(
                allowed_anywhere(&engine, &sub),
                "{entry:?} does not allow {sub:?}"
            );
            let apex = format!("{scheme}://{suffix}{port}");
            assert!(
                !allowed_anywhere(&engine, &apex),
                "{entry:?} allows its apex {apex:?}"
            );
            // The suffix may itself end the other domain (`*.test` does cover
            // `sub.test.evil.test`): the answer must follow the name, not the position.
            let after_host = format!("sub.{suffix}.evil.test");
            let after = format!("{scheme}://{after_host}{port}");
            assert_eq!(
                allowed_anywhere(&engine, &after),
                after_host.ends_with(&format!(".{suffix}")),
                "{entry:?} on {after:?}"
            );
            let glued = format!("{scheme}://evil{suffix}{port}");
            assert!(
                !allowed_anywhere(&engine, &glued),
                "{entry:?} allows {glued:?}"
            );
        }
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((&which, rest)) = data.split_first() else {
        return;
    };
    let Ok(text) = std::str::from_utf8(rest) else {
        return;
    };
    if which % 2 == 0 {
        check_entry(text);
    } else {
        assert_eq!(
            allowed(&ENGINE, text),
            reference(text),
            "engine and reference disagree on {text:?}"
        );
    }
});
