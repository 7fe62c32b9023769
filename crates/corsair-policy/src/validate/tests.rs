use super::*;

#[test]
fn unescaped_dot_heuristic() {
    let table = [
        ("https://app.example.com", true),
        ("https://app\\.example\\.com", false),
        ("https://.*\\.example\\.com", false),
        ("https://[a-z.]+\\.example\\.com", false),
        ("https://(.+)\\.example\\.com", false),
        ("https://pr-[0-9]+\\.preview.test", true),
    ];
    for (src, want) in table {
        assert_eq!(has_unescaped_host_dot(src), want, "{src}");
    }
}

#[test]
fn findings_are_reported_once_for_an_inherited_mistake() {
    let spec: CorsPolicySpec = serde_json::from_str(
        r#"{"allowOrigins":["*"],"allowCredentials":true,"routes":[{"pathPrefix":"/a"},{"pathPrefix":"/b","maxAge":5}]}"#,
    )
    .expect("test JSON");
    let report = validate(&spec);
    let paths: Vec<_> = report.errors().map(|f| f.path.as_str()).collect();
    assert_eq!(paths, ["spec.allowOrigins[0]"]);
}

#[test]
fn prefixes_and_methods_that_never_match_are_said() {
    let spec: CorsPolicySpec = serde_json::from_str(
        r#"{"allowOrigins":["https://a.example.com"],"allowMethods":["delete","patch","PUT"],
            "routes":[{"pathPrefix":"/caf%C3%A9"},{"pathPrefix":"/a/../b"},{"pathPrefix":"/c;v=1"},
                      {"pathPrefix":"/my files"},{"pathPrefix":"/api/"},{"pathPrefix":"/x//y"}]}"#,
    )
    .expect("test JSON");
    let report = validate(&spec);
    let warned: Vec<_> = report
        .warnings()
        .filter(|f| f.code == "route-never-matches" || f.code == "method-never-matches")
        .map(|f| (f.path.as_str(), f.message.as_str()))
        .collect();
    let paths: Vec<_> = warned.iter().map(|(p, _)| *p).collect();
    assert_eq!(
        paths,
        [
            "spec.allowMethods[0]",
            "spec.routes[0].pathPrefix",
            "spec.routes[1].pathPrefix",
            "spec.routes[2].pathPrefix",
            "spec.routes[5].pathPrefix",
        ],
        "{warned:?}"
    );
    assert!(warned[0].1.contains("\"DELETE\""), "{warned:?}");
    assert!(warned[1].1.contains("\"/café\""), "{warned:?}");
    assert!(warned[2].1.contains("\"/b\""), "{warned:?}");
    assert!(warned[3].1.contains("\"/c\""), "{warned:?}");
    assert!(warned[4].1.contains("\"/x/y\""), "{warned:?}");
    assert!(!report.has_errors(), "warnings only: {report:?}");
}

#[test]
fn addresses_browsers_never_send_are_said() {
    let spec: CorsPolicySpec = serde_json::from_str(
        r#"{"allowOrigins":["http://127.1:8080","https://app.example.com","http://[0:0:0:0:0:0:0:1]",
                            "http://10.0.0.256","http://127.0.0.1","https://*.0.0.1","https://[::1]",
                            "https://*.1","app://127.1"]}"#,
    )
    .expect("test JSON");
    let report = validate(&spec);
    let warned: Vec<_> = report
        .warnings()
        .filter(|f| f.code == "origin-never-matches")
        .map(|f| (f.path.as_str(), f.message.as_str()))
        .collect();
    let paths: Vec<_> = warned.iter().map(|(p, _)| *p).collect();
    assert_eq!(
        paths,
        [
            "spec.allowOrigins[0]",
            "spec.allowOrigins[2]",
            "spec.allowOrigins[3]",
        ],
        "{warned:?}"
    );
    assert!(
        warned[0].1.contains("\"http://127.0.0.1:8080\""),
        "{warned:?}"
    );
    assert!(warned[1].1.contains("\"http://[::1]\""), "{warned:?}");
    assert!(warned[2].1.contains("IPv4"), "{warned:?}");
    // A wildcard over an address's end matches addresses, not names; the public-suffix lint
    // does not take `*.1` first.
    let wildcards: Vec<_> = report
        .warnings()
        .filter(|f| f.path == "spec.allowOrigins[5]" || f.path == "spec.allowOrigins[7]")
        .map(|f| f.code)
        .collect();
    assert_eq!(
        wildcards,
        ["wildcard-over-address", "wildcard-over-address"],
        "{report:?}"
    );
    assert!(!report.has_errors(), "warnings only: {report:?}");
}
