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
