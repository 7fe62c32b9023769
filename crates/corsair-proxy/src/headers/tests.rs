use super::*;

fn map(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
    let mut headers = HeaderMap::new();
    for (name, value) in pairs {
        headers.append(
            HeaderName::from_static(name),
            HeaderValue::from_static(value),
        );
    }
    headers
}

fn values<'a>(headers: &'a HeaderMap, name: &str) -> Vec<&'a str> {
    headers
        .get_all(name)
        .iter()
        .map(|v| v.to_str().unwrap_or("<non-utf8>"))
        .collect()
}

#[test]
fn hop_by_hop_and_connection_named_headers_are_removed() {
    let mut headers = map(&[
        ("connection", "keep-alive, X-Secret"),
        ("connection", "close ,  x-other"),
        ("keep-alive", "timeout=5"),
        ("proxy-connection", "keep-alive"),
        ("te", "trailers"),
        ("trailer", "x-checksum"),
        ("transfer-encoding", "chunked"),
        ("upgrade", "websocket"),
        ("proxy-authorization", "Basic Zm9vOmJhcg=="),
        ("x-secret", "1"),
        ("x-other", "2"),
        ("x-kept", "3"),
        ("accept", "*/*"),
    ]);
    let mut response = headers.clone();
    strip_hop_by_hop(&mut headers, Direction::ToUpstream, None);
    let mut names: Vec<&str> = headers.keys().map(HeaderName::as_str).collect();
    names.sort_unstable();
    assert_eq!(names, ["accept", "x-kept"]);
    // A response keeps `Trailer`, which declares the trailers passed on with it.
    strip_hop_by_hop(&mut response, Direction::ToClient, None);
    let mut names: Vec<&str> = response.keys().map(HeaderName::as_str).collect();
    names.sort_unstable();
    assert_eq!(names, ["accept", "trailer", "x-kept"]);
    assert_eq!(values(&response, "trailer"), ["x-checksum"]);
}

#[test]
fn an_upgrade_keeps_upgrade_and_connection_upgrade_only() {
    let mut headers = map(&[
        ("connection", "Upgrade, x-hop"),
        ("upgrade", "websocket"),
        ("x-hop", "1"),
        ("sec-websocket-key", "dGhlIHNhbXBsZSBub25jZQ=="),
    ]);
    let protocol = upgrade_protocol(&headers);
    assert_eq!(protocol, Some(HeaderValue::from_static("websocket")));
    strip_hop_by_hop(&mut headers, Direction::ToUpstream, protocol.as_ref());
    assert_eq!(values(&headers, "connection"), ["upgrade"]);
    assert_eq!(values(&headers, "upgrade"), ["websocket"]);
    assert!(!headers.contains_key("x-hop"));
    assert!(headers.contains_key("sec-websocket-key"));
}

#[test]
fn upgrade_needs_the_connection_token() {
    let headers = map(&[("upgrade", "websocket"), ("connection", "keep-alive")]);
    assert_eq!(upgrade_protocol(&headers), None);
    let headers = map(&[("connection", "upgrade")]);
    assert_eq!(upgrade_protocol(&headers), None);
}

#[test]
fn forwarded_for_is_appended_to_every_existing_line() {
    let mut headers = map(&[
        ("x-forwarded-for", "203.0.113.7"),
        ("x-forwarded-for", "198.51.100.1, 10.0.0.2"),
    ]);
    add_forwarded(
        &mut headers,
        &forwarded_for("10.1.2.3".parse().expect("literal IP")),
        Some(&HeaderValue::from_static("api.example.com")),
    );
    assert_eq!(
        values(&headers, "x-forwarded-for"),
        ["203.0.113.7, 198.51.100.1, 10.0.0.2, 10.1.2.3"]
    );
    assert_eq!(values(&headers, "x-forwarded-proto"), ["http"]);
    assert_eq!(values(&headers, "x-forwarded-host"), ["api.example.com"]);
}

#[test]
fn forwarded_proto_and_host_from_an_ingress_are_kept() {
    let mut headers = map(&[
        ("x-forwarded-proto", "https"),
        ("x-forwarded-host", "www.example.com"),
    ]);
    add_forwarded(
        &mut headers,
        &forwarded_for("::ffff:192.0.2.9".parse().expect("literal IP")),
        Some(&HeaderValue::from_static("internal:8080")),
    );
    assert_eq!(values(&headers, "x-forwarded-for"), ["192.0.2.9"]);
    assert_eq!(values(&headers, "x-forwarded-proto"), ["https"]);
    assert_eq!(values(&headers, "x-forwarded-host"), ["www.example.com"]);
}

#[test]
fn only_access_control_headers_are_stripped() {
    let mut headers = map(&[
        ("access-control-allow-origin", "*"),
        ("access-control-allow-credentials", "true"),
        ("access-control-expose-headers", "x-a"),
        ("access-control-expose-headers", "x-b"),
        ("content-type", "application/json"),
        ("x-access-control-note", "kept"),
    ]);
    strip_access_control(&mut headers);
    let mut names: Vec<&str> = headers.keys().map(HeaderName::as_str).collect();
    names.sort_unstable();
    assert_eq!(names, ["content-type", "x-access-control-note"]);
}

#[test]
fn access_control_names_no_standard_defines_are_stripped_too() {
    let mut headers = map(&[
        ("access-control-allow-methods", "GET"),
        ("access-control-foo", "1"),
        ("vary", "accept"),
    ]);
    strip_access_control(&mut headers);
    let names: Vec<&str> = headers.keys().map(HeaderName::as_str).collect();
    assert_eq!(names, ["vary"]);
}

#[test]
fn cookie_fields_are_joined_into_one_line() {
    let mut split = map(&[("cookie", "a=1"), ("accept", "*/*"), ("cookie", "b=2; c=3")]);
    join_cookies(&mut split);
    assert_eq!(values(&split, "cookie"), ["a=1; b=2; c=3"]);
    assert_eq!(values(&split, "accept"), ["*/*"]);
    let mut one = map(&[("cookie", "a=1")]);
    join_cookies(&mut one);
    assert_eq!(values(&one, "cookie"), ["a=1"]);
    let mut none = map(&[("accept", "*/*")]);
    join_cookies(&mut none);
    assert!(!none.contains_key("cookie"));
}

fn obs_text(line: &'static [u8]) -> HeaderValue {
    HeaderValue::from_bytes(line).expect("obs-text is a valid field value")
}

/// A field line with bytes outside ASCII (obs-text) is read token by token: the tokens it
/// holds still count, in requests and responses alike (RFC 9110 §7.6.1).
#[test]
fn a_connection_line_with_obs_text_still_names_its_fields() {
    for direction in [Direction::ToUpstream, Direction::ToClient] {
        let mut headers = map(&[("x-secret", "1"), ("x-kept", "2")]);
        headers.append(header::CONNECTION, obs_text(b"x-secret, caf\xe9, \xff"));
        strip_hop_by_hop(&mut headers, direction, None);
        let names: Vec<&str> = headers.keys().map(HeaderName::as_str).collect();
        assert_eq!(names, ["x-kept"], "{direction:?}");
    }
}

/// An `Upgrade` list that is not visible ASCII opens nothing: the request goes up plain.
#[test]
fn an_upgrade_with_obs_text_is_no_upgrade() {
    for protocols in [&b"h2c, \xff"[..], b"websocket\xe9"] {
        let mut headers = map(&[("connection", "upgrade")]);
        headers.append(header::UPGRADE, obs_text(protocols));
        assert_eq!(upgrade_protocol(&headers), None, "{protocols:?}");
    }
    // The `h2c` filter sees `h2c` beside obs-text too.
    let line = obs_text(b"h2c, \xff");
    assert_eq!(tokens(&line).collect::<Vec<_>>(), ["h2c"]);
}

/// The client's `X-Forwarded-For` goes on as it came, obs-text and all: one odd byte must not
/// erase the addresses an ingress recorded.
#[test]
fn forwarded_for_keeps_a_line_with_obs_text() {
    let mut headers = HeaderMap::new();
    headers.append(&X_FORWARDED_FOR, obs_text(b" caf\xe9, 198.51.100.1\t"));
    add_forwarded(
        &mut headers,
        &forwarded_for("10.1.2.3".parse().expect("literal IP")),
        None,
    );
    let chain: Vec<&[u8]> = headers
        .get_all(&X_FORWARDED_FOR)
        .iter()
        .map(HeaderValue::as_bytes)
        .collect();
    assert_eq!(chain, [&b"caf\xe9, 198.51.100.1, 10.1.2.3"[..]]);
}

/// An upstream `Vary` line with obs-text keeps its names (a cache needs them): it stays as it
/// came and the proxy's names go on a line of their own.
#[test]
fn a_vary_line_with_obs_text_is_kept_and_the_proxys_names_added_beside_it() {
    let mut headers = HeaderMap::new();
    headers.append(header::VARY, obs_text(b"Cookie, X-Caf\xe9"));
    merge_vary(
        &mut headers,
        Vary {
            origin: true,
            ..Vary::default()
        },
    );
    let lines: Vec<&[u8]> = headers
        .get_all(header::VARY)
        .iter()
        .map(HeaderValue::as_bytes)
        .collect();
    assert_eq!(lines, [&b"Cookie, X-Caf\xe9"[..], b"Origin"]);
}
