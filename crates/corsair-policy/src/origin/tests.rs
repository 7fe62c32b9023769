use proptest::prelude::*;

use super::*;

#[test]
fn request_origins_split_into_scheme_host_port() {
    let table = [
        (
            "https://a.example.com",
            Some(("https", "a.example.com", None)),
        ),
        (
            "http://127.0.0.1:8080",
            Some(("http", "127.0.0.1", Some("8080"))),
        ),
        ("https://[::1]:8443", Some(("https", "[::1]", Some("8443")))),
        ("https://[::1]", Some(("https", "[::1]", None))),
        ("https://a.test/", None),
        ("https://a.test:", None),
        ("https://a.test:99999", None),
        ("https://", None),
        ("a.test", None),
        ("://a.test", None),
        ("https://a..test", None),
        // A trailing dot is kept by browsers; two, or a dot alone, are no host.
        ("https://a.test.", Some(("https", "a.test.", None))),
        (
            "https://a.test.:8443",
            Some(("https", "a.test.", Some("8443"))),
        ),
        ("https://a.test..", None),
        // An address is no name: browsers never write a dot after one.
        ("https://[::1].", None),
        ("https://.", None),
        ("https://u@a.test", None),
        ("https://a test", None),
        ("https://[::1", None),
        // Found by the `origin` fuzz target: text after `]` that is not a port was ignored.
        ("https://[::1]evil", None),
        ("https://[::1]x:80", None),
        ("", None),
    ];
    for (text, want) in table {
        let got = parse_request_origin(text).map(|p| (p.scheme, p.host, p.port));
        assert_eq!(got, want, "{text:?}");
    }
}

/// Found by the `origin` fuzz target: `https://[::1]…` with anything but a port after `]` was
/// accepted as an exact `allowOrigins` entry.
#[test]
fn config_origins_with_text_after_an_ipv6_host_are_refused() {
    for entry in [
        "https://[::1]evil",
        "https://[::1]y*",
        "https://[::1]:8443x",
    ] {
        assert!(parse_config_origin(entry).is_err(), "{entry:?}");
    }
    assert_eq!(
        parse_config_origin("https://[::1]:8443"),
        Ok(OriginPattern::Exact)
    );
}

#[test]
fn same_origin_ignores_case_and_default_ports() {
    let table = [
        ("https://a.test", "a.test", true),
        ("https://a.test", "A.TEST", true),
        ("https://a.test", "a.test:443", true),
        ("http://a.test:80", "a.test", true),
        ("http://a.test", "a.test:80", true),
        ("https://a.test", "a.test:80", false),
        ("https://a.test:8443", "a.test", false),
        ("https://a.test:8443", "a.test:8443", true),
        ("https://[::1]:8443", "[::1]:8443", true),
        ("https://a.test", "b.test", false),
        ("https://a.test", "a.test.evil", false),
        ("https://a.test.evil", "a.test", false),
        ("https://a.test:8443", "a.test:844", false),
    ];
    for (origin, host, same) in table {
        let parts = parse_request_origin(origin).expect("test origin is well-formed");
        assert_eq!(
            same_host_and_port(&parts, host),
            same,
            "{origin} vs Host {host}"
        );
        assert_eq!(
            is_same_origin(origin, host),
            same,
            "{origin} vs Host {host}"
        );
    }
}

#[test]
fn config_wildcards_keep_scheme_suffix_and_port() {
    assert_eq!(
        parse_config_origin("https://*.example.com:8443"),
        Ok(OriginPattern::Wildcard {
            scheme: "https".into(),
            suffix: "example.com".into(),
            port: Some("8443".into()),
        })
    );
    assert_eq!(parse_config_origin("*"), Ok(OriginPattern::Any));
    assert_eq!(
        parse_config_origin("https://a.test"),
        Ok(OriginPattern::Exact)
    );
    for bad in [
        "https://*",
        "https://*.",
        "https://*.*.a.test",
        "https://a*.test",
        "HTTPS://a.test",
        "null",
    ] {
        assert!(parse_config_origin(bad).is_err(), "{bad}");
    }
}

fn label() -> impl Strategy<Value = String> {
    "[a-z0-9]([a-z0-9-]{0,6}[a-z0-9])?"
}

fn host() -> impl Strategy<Value = String> {
    prop::collection::vec(label(), 1..4).prop_map(|l| l.join("."))
}

proptest! {
    /// Every origin a policy accepts as exact is one a request can carry, split the same way.
    #[test]
    fn accepted_config_origins_parse_as_request_origins(
        scheme in prop::sample::select(vec!["http", "https", "ws"]),
        host in host(),
        port in prop::option::of(1u16..),
    ) {
        let text = match port {
            Some(p) => format!("{scheme}://{host}:{p}"),
            None => format!("{scheme}://{host}"),
        };
        match parse_config_origin(&text) {
            Ok(OriginPattern::Exact) => {
                let parts = parse_request_origin(&text).expect("request form");
                prop_assert_eq!(parts.scheme, scheme);
                prop_assert_eq!(parts.host, host.as_str());
            }
            Ok(other) => prop_assert!(false, "{text}: {other:?}"),
            // Only the default port is refused among these.
            Err(_) => {
                let port = port.map(|p| p.to_string());
                prop_assert_eq!(port.as_deref(), default_port(scheme));
            }
        }
    }

    /// Garbage never panics and is either refused or a well-formed split of the input.
    #[test]
    fn request_origin_parsing_is_total(text in ".{0,40}") {
        if let Some(p) = parse_request_origin(&text) {
            let port = p.port.map(|p| format!(":{p}")).unwrap_or_default();
            prop_assert_eq!(format!("{}://{}{}", p.scheme, p.host, port), text);
        }
    }
}

/// How a browser writes the host of `http://{host}/`, from the `url` crate (WHATWG URL):
/// `None` when it cannot parse the URL.
fn whatwg_host(host: &str) -> Option<String> {
    let url = url::Url::parse(&format!("http://{host}/")).ok()?;
    url.host_str().map(str::to_owned)
}

fn spelled(host: &str) -> Option<String> {
    match browser_host("http", host) {
        HostSpelling::AsWritten => Some(host.to_owned()),
        HostSpelling::Browsers(h) => Some(h),
        HostSpelling::Never(_) => None,
    }
}

#[test]
fn addresses_are_spelled_as_browsers_send_them() {
    let table = [
        ("127.0.0.1", Some("127.0.0.1")),
        ("127.1", Some("127.0.0.1")),
        ("2130706433", Some("127.0.0.1")),
        ("0x7f.0.0.1", Some("127.0.0.1")),
        ("0177.0.0.1", Some("127.0.0.1")),
        ("10.0.0.0x", Some("10.0.0.0")),
        ("10.0.0.256", None),
        ("256.0.0.1", None),
        ("1.2.3.4.5", None),
        ("app.123", None),
        ("08.0.0.1", None),
        ("app.example.com", Some("app.example.com")),
        ("123.example", Some("123.example")),
        ("[::1]", Some("[::1]")),
        ("[0:0:0:0:0:0:0:1]", Some("[::1]")),
        ("[::ffff:1.2.3.4]", Some("[::ffff:102:304]")),
        ("[2001:db8:0:0:1:0:0:1]", Some("[2001:db8::1:0:0:1]")),
        ("[2001:0db8::1]", Some("[2001:db8::1]")),
        ("[1:0:2:3:4:5:6:7]", Some("[1:0:2:3:4:5:6:7]")),
        ("[::1::2]", None),
    ];
    for (host, want) in table {
        assert_eq!(spelled(host).as_deref(), want, "{host:?}");
        assert_eq!(
            whatwg_host(host).as_deref(),
            want,
            "the url crate on {host:?}"
        );
        // Another scheme's host is opaque to browsers, but for IPv6.
        if !host.starts_with('[') {
            assert_eq!(
                browser_host("app", host),
                HostSpelling::AsWritten,
                "{host:?}"
            );
        }
    }
}

fn ipv4_part() -> impl Strategy<Value = String> {
    prop_oneof![
        (0u32..300).prop_map(|n| n.to_string()),
        (0u32..300).prop_map(|n| format!("0x{n:x}")),
        (0u32..300).prop_map(|n| format!("0{n:o}")),
        Just("0x".to_owned()),
        Just("09".to_owned()),
        (0u64..1 << 33).prop_map(|n| n.to_string()),
    ]
}

fn ipv6_text() -> impl Strategy<Value = String> {
    // Pieces drawn mostly from zero, so that runs to compress are common.
    proptest::collection::vec(prop_oneof![3 => Just(0u16), 1 => any::<u16>()], 8).prop_flat_map(
        |pieces| {
            let full = pieces
                .iter()
                .map(|p| format!("{p:x}"))
                .collect::<Vec<_>>()
                .join(":");
            let padded = pieces
                .iter()
                .map(|p| format!("{p:04x}"))
                .collect::<Vec<_>>()
                .join(":");
            let mapped = format!(
                "::ffff:{}.{}.{}.{}",
                pieces[6] >> 8,
                pieces[6] & 0xff,
                pieces[7] >> 8,
                pieces[7] & 0xff
            );
            let segments: [u16; 8] = pieces.clone().try_into().expect("eight pieces");
            let addr = std::net::Ipv6Addr::from(segments);
            prop_oneof![
                Just(full),
                Just(padded),
                Just(mapped),
                Just(addr.to_string())
            ]
        },
    )
}

proptest! {
    /// Every IPv4 spelling, and every IPv6 one, is written as the `url` crate writes it, and
    /// refused where it refuses.
    #[test]
    fn address_spellings_agree_with_whatwg(
        v4 in proptest::collection::vec(ipv4_part(), 1..6),
        v6 in ipv6_text(),
    ) {
        let v4 = v4.join(".");
        prop_assert_eq!(spelled(&v4), whatwg_host(&v4), "{}", v4);
        let v6 = format!("[{v6}]");
        prop_assert_eq!(spelled(&v6), whatwg_host(&v6), "{}", v6);
    }
}
