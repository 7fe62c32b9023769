//! Access-Control-Request-Headers parsing: arbitrary field lines in a preflight. The engine must
//! never panic, and must allow exactly when every comma-separated, whitespace-trimmed, non-empty
//! element is a token other than `authorization` (the policy lists `*` without credentials).
#![no_main]

use std::sync::LazyLock;

use corsair_policy::{CorsPolicySpec, Engine, RequestInfo, Verdict};
use libfuzzer_sys::fuzz_target;

static ENGINE: LazyLock<Engine> = LazyLock::new(|| {
    let spec = CorsPolicySpec {
        allow_origins: Some(vec!["https://app.example.com".to_owned()]),
        allow_methods: Some(vec!["*".to_owned()]),
        allow_headers: Some(vec!["*".to_owned()]),
        ..CorsPolicySpec::default()
    };
    match Engine::compile(&spec) {
        Ok((engine, _)) => engine,
        Err(report) => panic!("fuzz policy refused: {report:?}"),
    }
});

fn is_token(s: &str) -> bool {
    !s.is_empty()
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b))
}

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let lines: Vec<&str> = text.split('\n').collect();
    let req = RequestInfo {
        method: "OPTIONS",
        path: "/",
        host: Some("api.example.com"),
        origin: Some("https://app.example.com"),
        request_method: Some("GET"),
        request_headers: &lines,
        request_private_network: false,
    };
    let decision = ENGINE.decide(&req);
    let expected = lines
        .iter()
        .flat_map(|l| l.split(','))
        .map(|n| n.trim_matches([' ', '\t']))
        .filter(|n| !n.is_empty())
        .all(|n| is_token(n) && !n.eq_ignore_ascii_case("authorization"));
    assert_eq!(
        matches!(decision.verdict, Verdict::Allowed(_)),
        expected,
        "{lines:?}"
    );
});
