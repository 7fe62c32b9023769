use proptest::prelude::*;

use super::*;
use crate::decision::{DenyReason, Verdict};
use crate::model::CorsPolicySpec;

fn compile(spec: CorsPolicySpec) -> Engine {
    match Engine::compile(&spec) {
        Ok((engine, _)) => engine,
        Err(report) => panic!("refused: {:?}", report.findings),
    }
}

fn origins(list: &[&str]) -> CorsPolicySpec {
    CorsPolicySpec {
        allow_origins: Some(list.iter().map(|s| (*s).to_owned()).collect()),
        ..CorsPolicySpec::default()
    }
}

fn allowed(engine: &Engine, origin: &str) -> bool {
    let req = RequestInfo {
        method: "GET",
        path: "/",
        host: Some("api.internal"),
        origin: Some(origin),
        ..RequestInfo::default()
    };
    matches!(engine.decide(&req).verdict, Verdict::Allowed(_))
}

#[test]
fn prefixes_match_whole_segments() {
    let table = [
        ("/", "/anything", true),
        ("/api", "/api", true),
        ("/api", "/api/", true),
        ("/api", "/api/x", true),
        ("/api", "/apix", false),
        ("/api", "/ap", false),
        ("/api/v1", "/api/v1/x", true),
        ("/api/v1", "/api/v10", false),
    ];
    for (prefix, path, want) in table {
        assert_eq!(
            prefix_matches(normalize_prefix(prefix), path),
            want,
            "{prefix} {path}"
        );
    }
    assert_eq!(normalize_prefix("/api/"), "/api");
    assert_eq!(normalize_prefix("/"), "/");
    assert_eq!(normalize_prefix("//"), "/");
}

#[test]
fn a_path_spelled_otherwise_gets_the_rules_of_the_route_it_names() {
    let engine = compile(CorsPolicySpec {
        allow_origins: Some(vec!["https://partner.test".to_owned()]),
        routes: vec![crate::model::RouteSpec {
            path_prefix: "/internal".to_owned(),
            allow_origins: Some(vec!["https://app.test".to_owned()]),
            ..crate::model::RouteSpec::default()
        }],
        ..CorsPolicySpec::default()
    });
    let route = |path: &'static str| {
        let req = RequestInfo {
            method: "GET",
            path,
            host: Some("api.internal"),
            origin: Some("https://partner.test"),
            ..RequestInfo::default()
        };
        engine.decide(&req).route
    };
    for path in [
        "/internal",
        "/internal/data",
        "/%69nternal/data",
        "/%2finternal/data",
        "/internal;jsessionid=1/data",
        "//internal/data",
        "/./internal/data",
        "/public/../internal/data",
        "/public/%2e%2e/internal/data",
        "/public%2F..%2Finternal",
    ] {
        assert_eq!(route(path), Some("/internal"), "{path}");
    }
    for path in [
        "/",
        "/internalx",
        "/Internal/data",
        "/public/data",
        "/%zz/internal",
        "/.well-known/x",
    ] {
        assert_eq!(route(path), None, "{path}");
    }
    assert_eq!(canonical_path("/a//b/./c/../d;p=1/%41%zz"), "/a/b/d/A%zz");
    assert_eq!(canonical_path("/../.."), "/");
}

/// A page at `https://shop.example.com./` sends its origin with the trailing dot. It is another
/// origin than the one without: `*` allows it, a list of names or a wildcard does not.
#[test]
fn an_origin_with_a_trailing_dot_is_an_origin_of_its_own() {
    let any = compile(origins(&["*"]));
    assert!(allowed(&any, "https://shop.example.com."));
    assert!(allowed(&any, "https://shop.example.com.:8443"));
    assert!(!allowed(&any, "https://shop.example.com.."));
    let listed = compile(origins(&[
        "https://shop.example.com",
        "https://*.example.com",
    ]));
    assert!(allowed(&listed, "https://shop.example.com"));
    assert!(!allowed(&listed, "https://shop.example.com."));
    assert!(!allowed(&listed, "https://a.shop.example.com."));
    let req = RequestInfo {
        method: "GET",
        path: "/",
        host: Some("api.internal"),
        origin: Some("https://shop.example.com."),
        ..RequestInfo::default()
    };
    assert!(matches!(
        listed.decide(&req).verdict,
        Verdict::Denied(DenyReason::OriginNotAllowed)
    ));
}

/// Found by `fuzz/origin` (its oracle, not the engine, was wrong): a wildcard's suffix can also
/// end an unrelated-looking name, which is then a genuine subdomain.
#[test]
fn wildcard_suffix_covers_every_name_ending_in_it() {
    let engine = compile(origins(&["ts://*.test"]));
    assert!(allowed(&engine, "ts://sub.test.evil.test"));
    assert!(allowed(&engine, "ts://a.b.test"));
    assert!(!allowed(&engine, "ts://test"));
    assert!(!allowed(&engine, "ts://sub.test.evil.tes"));
    assert!(!allowed(&engine, "ts://eviltest"));
}

fn label() -> impl Strategy<Value = String> {
    "[a-z0-9]([a-z0-9-]{0,4}[a-z0-9])?"
}

fn host() -> impl Strategy<Value = String> {
    prop::collection::vec(label(), 1..4).prop_map(|l| l.join("."))
}

fn scheme() -> impl Strategy<Value = &'static str> {
    prop::sample::select(vec!["http", "https"])
}

fn port() -> impl Strategy<Value = Option<u16>> {
    prop::option::of(prop::sample::select(vec![8080u16, 8443, 3000]))
}

fn origin_text(scheme: &str, host: &str, port: Option<u16>) -> String {
    match port {
        Some(p) => format!("{scheme}://{host}:{p}"),
        None => format!("{scheme}://{host}"),
    }
}

proptest! {
    /// A wildcard allows exactly: same scheme, same port, and one or more whole labels before the suffix.
    #[test]
    fn wildcard_never_crosses_scheme_port_or_label(
        w_scheme in scheme(), suffix in host(), w_port in port(),
        r_scheme in scheme(), prefix in prop::option::of(host()), glue in prop::sample::select(vec![".", "", "-"]),
        r_host in host(), r_port in port(),
    ) {
        let pattern = origin_text(w_scheme, &format!("*.{suffix}"), w_port);
        let engine = compile(origins(&[&pattern]));
        // Either a host built around the suffix, or an unrelated one.
        let host = match &prefix {
            Some(p) => format!("{p}{glue}{suffix}"),
            None => r_host.clone(),
        };
        let origin = origin_text(r_scheme, &host, r_port);
        let expected = r_scheme == w_scheme
            && r_port == w_port
            && host.len() > suffix.len() + 1
            && host.ends_with(&format!(".{suffix}"));
        prop_assert_eq!(allowed(&engine, &origin), expected, "{} vs {}", pattern, origin);
    }

    /// The exact-origin hash set answers what a linear scan of the list answers.
    #[test]
    fn exact_set_equals_linear_scan(
        list in prop::collection::vec((scheme(), host(), port()), 1..20),
        probe in (scheme(), host(), port()),
        pick in any::<prop::sample::Index>(),
    ) {
        let texts: Vec<String> = list.iter().map(|(s, h, p)| origin_text(s, h, *p)).collect();
        let refs: Vec<&str> = texts.iter().map(String::as_str).collect();
        let engine = compile(origins(&refs));
        let listed = &texts[pick.index(texts.len())];
        prop_assert!(allowed(&engine, listed), "{} is listed", listed);
        let probe = origin_text(probe.0, &probe.1, probe.2);
        prop_assert_eq!(allowed(&engine, &probe), texts.contains(&probe), "{}", probe);
    }

    /// A regex entry matches the whole origin only: nothing may be added before or after.
    #[test]
    fn regexes_are_anchored(h in host(), before in "[a-z.:/]{1,5}", after in "[a-z.:/0-9]{1,5}") {
        let origin = format!("https://{h}");
        let spec = CorsPolicySpec {
            allow_origin_regexes: Some(vec![regex::escape(&origin)]),
            ..CorsPolicySpec::default()
        };
        let engine = compile(spec);
        prop_assert!(allowed(&engine, &origin));
        let prefixed = format!("{before}{origin}");
        let suffixed = format!("{origin}{after}");
        prop_assert!(!allowed(&engine, &prefixed), "{}", prefixed);
        prop_assert!(!allowed(&engine, &suffixed), "{}", suffixed);
    }

    /// Header lists: names come out trimmed, non-empty, in order, whatever the splitting into
    /// lines, the whitespace around commas and the empty elements.
    #[test]
    fn header_list_parsing(
        names in prop::collection::vec("[A-Za-z0-9-]{1,8}", 0..6),
        seps in prop::collection::vec(prop::sample::select(vec![",", ", ", " ,\t", ",,", " , , "]), 6),
        split_at in 0usize..7,
    ) {
        let mut joined = Vec::new();
        let mut line = String::new();
        for (i, name) in names.iter().enumerate() {
            if i == split_at && !line.is_empty() {
                joined.push(std::mem::take(&mut line));
            } else if i > 0 {
                line.push_str(seps[i]);
            }
            line.push_str(name);
        }
        joined.push(line);
        let lines: Vec<&str> = joined.iter().map(String::as_str).collect();
        let parsed: Vec<&str> = request_header_names(&lines).collect();
        prop_assert_eq!(parsed, names.iter().map(String::as_str).collect::<Vec<_>>());
    }

    /// A listed (lowercase) name matches a requested one exactly when they are equal lowercased.
    #[test]
    fn a_listed_name_matches_in_any_case(
        lower in "[a-z0-9-]{0,6}",
        name in "[A-Za-z0-9-]{0,6}",
        same in any::<bool>(),
    ) {
        // Half the cases derive the request's name from the listed one, so that matches occur.
        let name = if same {
            lower.chars().enumerate().map(|(i, c)| if i % 2 == 0 { c.to_ascii_uppercase() } else { c }).collect()
        } else {
            name
        };
        prop_assert_eq!(tokens::eq_lowercase(&lower, &name), name.to_ascii_lowercase() == lower);
    }
}

/// The proxy shares one compiled engine between its worker threads.
#[test]
fn engine_is_shareable_across_threads() {
    fn assert_send_sync<T: Send + Sync + 'static>() {}
    assert_send_sync::<Engine>();
    let engine = std::sync::Arc::new(compile(origins(&["https://a.test"])));
    let worker = {
        let engine = std::sync::Arc::clone(&engine);
        std::thread::spawn(move || allowed(&engine, "https://a.test"))
    };
    assert!(worker.join().expect("worker thread"));
}
