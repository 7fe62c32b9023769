use super::*;

fn config(upstream: &str) -> ProxyConfig {
    ProxyConfig::new(
        "policy.yaml".into(),
        upstream.parse().expect("a URI"),
        "127.0.0.1:0".parse().expect("addr"),
        "127.0.0.1:0".parse().expect("addr"),
    )
}

fn reason(upstream: &str) -> Option<&'static str> {
    match Upstream::new(&config(upstream)) {
        Ok(_) => None,
        Err(ProxyError::Upstream { reason, .. }) => Some(reason),
        Err(other) => panic!("unexpected error {other}"),
    }
}

#[tokio::test]
async fn only_a_plain_http_authority_is_an_upstream() {
    assert_eq!(reason("http://127.0.0.1:8080"), None);
    assert_eq!(reason("http://app:8080/"), None);
    assert!(reason("https://127.0.0.1:8443").is_some_and(|r| r.contains("http://")));
    assert!(reason("/just/a/path").is_some_and(|r| r.contains("http://")));
    assert!(reason("http://user:pw@app:8080").is_some_and(|r| r.contains("userinfo")));
    assert!(reason("http://app:8080/api").is_some_and(|r| r.contains("path")));
    assert!(reason("http://app:8080/?x=1").is_some_and(|r| r.contains("query")));
}

#[test]
fn the_one_upstream_address_has_a_port() {
    let address = |uri: &str| Upstream::new(&config(uri)).map(|u| u.address);
    assert_eq!(
        address("http://127.0.0.1:8080").ok().as_deref(),
        Some("127.0.0.1:8080")
    );
    assert_eq!(address("http://app/").ok().as_deref(), Some("app:80"));
    assert_eq!(
        address("http://[::1]:9000").ok().as_deref(),
        Some("[::1]:9000")
    );
}

#[test]
fn failures_map_to_502_or_504_with_a_cause() {
    for failure in [Failure::Refused, Failure::Reset, Failure::Other] {
        assert_eq!(failure.status(), StatusCode::BAD_GATEWAY);
    }
    for failure in [Failure::ConnectTimeout, Failure::Timeout] {
        assert_eq!(failure.status(), StatusCode::GATEWAY_TIMEOUT);
    }
    let labels: std::collections::HashSet<_> = [
        Failure::Refused,
        Failure::ConnectTimeout,
        Failure::Timeout,
        Failure::Reset,
        Failure::Other,
    ]
    .iter()
    .map(|f| f.metric_label())
    .collect();
    assert_eq!(labels.len(), 5, "each cause has its own label");
}
