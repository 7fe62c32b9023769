//! The allocation-free claim: deciding an allowed simple request allocates nothing.
//!
//! `allocation-counter` replaces the global allocator of this test binary only (no other test
//! file links it) and counts the allocations of the current thread inside `measure`.

mod support;

use corsair_policy::{Action, RequestInfo, Verdict};

const POLICY: &str = "\
allowOrigins: [\"https://app.example.com\", \"https://*.example.org\"]
allowOriginRegexes: ['https://pr-[0-9]+\\.preview\\.test']
allowCredentials: true
exposeHeaders: [X-Total]
routes:
- pathPrefix: /api
  allowMethods: [GET, PUT]
- pathPrefix: /public
  allowOrigins: [\"*\"]
  allowCredentials: false
";

fn simple(origin: &'static str, path: &'static str) -> RequestInfo<'static> {
    RequestInfo {
        method: "GET",
        path,
        host: Some("api.test"),
        origin: Some(origin),
        ..RequestInfo::default()
    }
}

#[test]
fn allowed_simple_requests_allocate_nothing() {
    let engine = support::engine(POLICY);
    let cases = [
        simple("https://app.example.com", "/"),
        simple("https://a.b.example.org", "/api/items"),
        simple("https://pr-42.preview.test", "/api"),
        simple("https://anyone.test", "/public/x"),
    ];
    for req in &cases {
        // The regex engine fills its per-thread cache on first use; count from the second call.
        let _ = engine.decide(req);
        let mut rendered = 0usize;
        let info = allocation_counter::measure(|| {
            let decision = engine.decide(req);
            assert!(matches!(decision.verdict, Verdict::Allowed(_)), "{req:?}");
            if let Action::Forward { headers, .. } = decision.action() {
                headers.for_each(|name, _| rendered += name.len());
            }
        });
        assert_eq!(info.count_total, 0, "{req:?} allocated {info:?}");
        assert!(rendered > 0, "{req:?}: no header to set");
    }
}

/// The counter does count: a decision that builds a `String` is seen.
#[test]
fn the_counter_sees_allocations() {
    let engine = support::engine(POLICY);
    let req = simple("https://app.example.com", "/");
    let info = allocation_counter::measure(|| {
        let decision = engine.decide(&req);
        let mut text = String::new();
        if let Action::Forward { headers, .. } = decision.action() {
            headers.for_each(|name, value| text.push_str(&format!("{name}: {value}\n")));
        }
        assert!(text.contains("access-control-allow-origin: https://app.example.com"));
    });
    assert!(info.count_total > 0);
}
