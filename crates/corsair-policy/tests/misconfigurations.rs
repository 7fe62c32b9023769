//! The CORS misconfiguration classes that scanners probe for, one test each: the validation rule
//! or lint that refuses or flags the policy, and what the engine answers the probing origin.
//! docs/security.md names these tests in its table.

use corsair_policy::{
    AllowOrigin, CorsPolicySpec, Engine, RequestInfo, Severity, Verdict, validate,
};
use serde_json::json;

fn spec(value: serde_json::Value) -> CorsPolicySpec {
    match serde_json::from_value(value) {
        Ok(spec) => spec,
        Err(e) => panic!("test spec does not parse: {e}"),
    }
}

/// The codes of the findings of `severity` at `path`.
fn codes(spec: &CorsPolicySpec, severity: Severity, path: &str) -> Vec<&'static str> {
    validate(spec)
        .findings
        .into_iter()
        .filter(|f| f.severity == severity && f.path == path)
        .map(|f| f.code)
        .collect()
}

fn engine(spec: &CorsPolicySpec) -> Engine {
    match Engine::compile(spec) {
        Ok((engine, _)) => engine,
        Err(report) => panic!("policy refused: {report:?}"),
    }
}

/// `Access-Control-Allow-Origin` for a simple GET from `origin`, or `None`.
fn allow_origin(engine: &Engine, origin: &str) -> Option<String> {
    let req = RequestInfo {
        method: "GET",
        path: "/",
        host: Some("api.example.com"),
        origin: Some(origin),
        ..RequestInfo::default()
    };
    let decision = engine.decide(&req);
    if !matches!(decision.verdict, Verdict::Allowed(_)) {
        return None;
    }
    match decision.enforced {
        corsair_policy::Action::Forward { headers, .. }
        | corsair_policy::Action::Respond { headers, .. } => {
            headers.allow_origin.map(|o| match o {
                AllowOrigin::Any => "*".to_owned(),
                AllowOrigin::Echo(o) => o.to_owned(),
            })
        }
    }
}

#[test]
fn origin_reflection() {
    // Only listed origins are echoed; any other gets no Access-Control-Allow-Origin at all.
    let e = engine(&spec(
        json!({"allowOrigins": ["https://app.example.com"], "allowCredentials": true}),
    ));
    assert_eq!(
        allow_origin(&e, "https://app.example.com").as_deref(),
        Some("https://app.example.com")
    );
    for probe in [
        "https://evil.test",
        "https://app.example.com.evil.test",
        "http://app.example.com",
    ] {
        assert_eq!(allow_origin(&e, probe), None, "{probe}");
    }
    // "Reflect everything with credentials" cannot be written: `*` with credentials is refused.
    let any = spec(json!({"allowOrigins": ["*"], "allowCredentials": true}));
    assert_eq!(
        codes(&any, Severity::Error, "spec.allowOrigins[0]"),
        ["wildcard-origin-with-credentials"]
    );
    assert!(Engine::compile(&any).is_err());
    // `*` without credentials answers `*`, never the request's origin.
    let e = engine(&spec(json!({"allowOrigins": ["*"]})));
    assert_eq!(allow_origin(&e, "https://evil.test").as_deref(), Some("*"));
}

#[test]
fn trusted_null_origin() {
    let listed = spec(json!({"allowOrigins": ["null"]}));
    assert_eq!(
        codes(&listed, Severity::Error, "spec.allowOrigins[0]"),
        ["invalid-origin"]
    );
    let opted = spec(json!({"allowOrigins": ["https://app.example.com"], "allowNullOrigin": true}));
    assert_eq!(
        codes(&opted, Severity::Warning, "spec.allowNullOrigin"),
        ["null-origin"]
    );
    // Not even `*` lets `null` in without allowNullOrigin.
    for policy in [
        json!({"allowOrigins": ["*"]}),
        json!({"allowOrigins": ["https://app.example.com"]}),
    ] {
        assert_eq!(allow_origin(&engine(&spec(policy)), "null"), None);
    }
}

#[test]
fn pre_domain_wildcard() {
    // `*example.com` (which would match `evilexample.com`) cannot be written.
    for entry in ["https://*example.com", "https://app-*.example.com"] {
        let s = spec(json!({"allowOrigins": [entry]}));
        assert_eq!(
            codes(&s, Severity::Error, "spec.allowOrigins[0]"),
            ["invalid-origin"],
            "{entry}"
        );
    }
    // `*.example.com` covers whole labels only.
    let e = engine(&spec(json!({"allowOrigins": ["https://*.example.com"]})));
    assert!(allow_origin(&e, "https://a.example.com").is_some());
    for probe in [
        "https://evilexample.com",
        "https://example.com",
        "https://a.evilexample.com",
    ] {
        assert_eq!(allow_origin(&e, probe), None, "{probe}");
    }
}

#[test]
fn post_domain_wildcard() {
    for entry in [
        "https://example.com.*",
        "https://app.example.*",
        "https://app.*.com",
    ] {
        let s = spec(json!({"allowOrigins": [entry]}));
        assert_eq!(
            codes(&s, Severity::Error, "spec.allowOrigins[0]"),
            ["invalid-origin"],
            "{entry}"
        );
    }
    // Exact entries and wildcards match the whole host: no suffix can be appended.
    let e = engine(&spec(
        json!({"allowOrigins": ["https://app.example.com", "https://*.example.org"]}),
    ));
    for probe in [
        "https://app.example.com.evil.test",
        "https://a.example.org.evil.test",
        "https://app.example.comevil.test",
    ] {
        assert_eq!(allow_origin(&e, probe), None, "{probe}");
    }
    // A regex is anchored at both ends, and cannot escape its anchors.
    let e = engine(&spec(
        json!({"allowOriginRegexes": ["https://app\\.example\\.com"]}),
    ));
    assert_eq!(allow_origin(&e, "https://app.example.com.evil.test"), None);
    let escape = spec(json!({"allowOriginRegexes": ["https://a\\.test)|(.*"]}));
    assert_eq!(
        codes(&escape, Severity::Error, "spec.allowOriginRegexes[0]"),
        ["invalid-regex"]
    );
}

#[test]
fn unescaped_regex_dot() {
    let s = spec(json!({"allowOriginRegexes": ["https://app.example.com"]}));
    assert_eq!(
        codes(&s, Severity::Warning, "spec.allowOriginRegexes[0]"),
        ["regex-unescaped-dot"]
    );
    // What the lint warns about: the dot matches any character.
    assert!(allow_origin(&engine(&s), "https://appXexample.com").is_some());
    let escaped = spec(json!({"allowOriginRegexes": ["https://app\\.example\\.com"]}));
    assert!(validate(&escaped).findings.is_empty());
    assert_eq!(
        allow_origin(&engine(&escaped), "https://appXexample.com"),
        None
    );
}

#[test]
fn http_origin_trusted_by_https_site() {
    let s = spec(
        json!({"allowOrigins": ["https://app.example.com", "http://app.example.com", "http://localhost:3000"]}),
    );
    assert_eq!(
        codes(&s, Severity::Warning, "spec.allowOrigins[1]"),
        ["mixed-scheme"]
    );
    // Loopback is potentially trustworthy: no warning.
    assert!(codes(&s, Severity::Warning, "spec.allowOrigins[2]").is_empty());
    // The schemes are distinct origins: https never covers http.
    let e = engine(&spec(
        json!({"allowOrigins": ["https://app.example.com", "https://*.example.org"]}),
    ));
    assert_eq!(allow_origin(&e, "http://app.example.com"), None);
    assert_eq!(allow_origin(&e, "http://a.example.org"), None);
}

#[test]
fn third_party_hosting_domains() {
    let cases = [
        ("https://*.github.io", "public-suffix-wildcard"),
        ("https://*.herokuapp.com", "public-suffix-wildcard"),
        ("https://*.amazonaws.com", "third-party-hosting"),
        ("https://*.core.windows.net", "third-party-hosting"),
    ];
    for (entry, code) in cases {
        let s = spec(json!({"allowOrigins": [entry]}));
        assert_eq!(
            codes(&s, Severity::Warning, "spec.allowOrigins[0]"),
            [code],
            "{entry}"
        );
    }
    let regex = spec(json!({"allowOriginRegexes": ["https://[a-z]+\\.github\\.io"]}));
    assert_eq!(
        codes(&regex, Severity::Warning, "spec.allowOriginRegexes[0]"),
        ["third-party-hosting"]
    );
    // One's own site on such a host is fine.
    let own = spec(json!({"allowOrigins": ["https://myorg.github.io"]}));
    assert!(validate(&own).findings.is_empty());
}

#[test]
fn special_characters_after_the_host() {
    // Browsers (Safari among them) send origins with characters a host cannot have; they are
    // malformed and never matched, even by a careless regex.
    let careless = spec(json!({"allowOriginRegexes": ["https://app\\.example\\.com.*"]}));
    assert_eq!(
        codes(&careless, Severity::Warning, "spec.allowOriginRegexes[0]"),
        ["regex-open-end"]
    );
    let e = engine(&careless);
    for probe in [
        "https://app.example.com`.evil.test",
        "https://app.example.com%60.evil.test",
        "https://app.example.com&.evil.test",
        "https://app.example.com'.evil.test",
        "https://app.example.com!.evil.test",
        "https://app.example.com$.evil.test",
        "https://app.example.com=.evil.test",
    ] {
        assert_eq!(allow_origin(&e, probe), None, "{probe}");
    }
    // `_` and `-` are host characters: only the lint above stops the careless regex there.
    assert!(allow_origin(&e, "https://app.example.com_.evil.test").is_some());
    let exact = engine(&spec(
        json!({"allowOrigins": ["https://app.example.com", "https://*.example.org"]}),
    ));
    assert_eq!(
        allow_origin(&exact, "https://app.example.com_.evil.test"),
        None
    );
    assert_eq!(
        allow_origin(&exact, "https://a.example.org_.evil.test"),
        None
    );
}
