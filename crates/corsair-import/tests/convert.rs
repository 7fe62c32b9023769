//! Table-driven conversions: real-looking manifests of each source, the policy they become and
//! the findings that explain every change.

use corsair_import::{Converted, Finding, Import, Severity, import, render};
use corsair_policy::{Engine, Mode, UnmatchedPreflights, load_document};

fn fixture(name: &str) -> Import {
    let path = format!(
        "{}/../../tests/fixtures/import/{name}",
        env!("CARGO_MANIFEST_DIR")
    );
    let bytes = std::fs::read(&path).unwrap_or_else(|e| panic!("{path}: {e}"));
    import(&bytes).unwrap_or_else(|e| panic!("{path}: {e}"))
}

fn inline(yaml: &str) -> Import {
    import(yaml.as_bytes()).unwrap_or_else(|e| panic!("{e}\n{yaml}"))
}

/// An Ingress `i` with CORS enabled and these `nginx.ingress.kubernetes.io/` annotations, each
/// value written as YAML.
fn ingress(annotations: &[(&str, &str)]) -> Import {
    let lines: String = annotations
        .iter()
        .map(|(key, value)| format!("    nginx.ingress.kubernetes.io/{key}: {value}\n"))
        .collect();
    inline(&format!(
        "apiVersion: networking.k8s.io/v1\nkind: Ingress\nmetadata:\n  name: i\n  annotations:\n    nginx.ingress.kubernetes.io/enable-cors: \"true\"\n{lines}spec: {{}}\n"
    ))
}

/// A VirtualService `v` with one route whose `corsPolicy` is `cors` (lines indented by six).
fn virtual_service(cors: &str) -> Import {
    inline(&format!(
        "apiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {{name: v}}\nspec:\n  http:\n  - corsPolicy:\n{cors}"
    ))
}

fn policy<'a>(out: &'a Import, name: &str) -> &'a Converted {
    out.policies
        .iter()
        .find(|p| p.document.metadata.name.as_deref() == Some(name))
        .unwrap_or_else(|| panic!("no policy {name}: {:#?}", out))
}

fn codes(c: &Converted) -> Vec<&'static str> {
    c.findings.iter().map(|f| f.code).collect()
}

/// The first finding of `c` with `code`; the test fails without one.
fn finding<'c>(c: &'c Converted, code: &str) -> &'c Finding {
    c.findings
        .iter()
        .find(|f| f.code == code)
        .unwrap_or_else(|| panic!("no {code} finding in {:?}", codes(c)))
}

fn has(c: &Converted, code: &str) -> bool {
    c.findings.iter().any(|f| f.code == code)
}

fn strs(v: &[&str]) -> Option<Vec<String>> {
    Some(v.iter().map(|s| (*s).to_owned()).collect())
}

/// Every policy that is not incomplete compiles, and its rendered YAML loads back as the same
/// document; incomplete ones are refused and say so.
fn assert_usable(out: &Import) {
    for c in &out.policies {
        let compiled = Engine::compile(&c.document.spec);
        if c.incomplete {
            let report = compiled.expect_err("an incomplete policy must be refused");
            assert!(
                report.errors().any(|f| f.code == "no-origins"),
                "{report:?}"
            );
            assert!(
                c.findings.iter().any(|f| f.severity == Severity::Incomplete
                    && f.code == "wildcard-credentials-refused"),
                "{:?}",
                codes(c)
            );
        } else {
            let report = compiled.unwrap_or_else(|r| panic!("{}: {r:?}", c.source)).1;
            assert!(!report.has_errors());
            assert!(!codes(c).contains(&"check-error"), "{:?}", codes(c));
        }
        let text = render(c, "test.yaml").expect("renders");
        assert!(text.starts_with("---\n"));
        let loaded = load_document(&text).unwrap_or_else(|e| panic!("{e}\n{text}"));
        assert_eq!(loaded, c.document, "{text}");
    }
}

#[test]
fn ingress_nginx() {
    let out = fixture("ingress-nginx.yaml");
    assert_usable(&out);
    assert_eq!(out.policies.len(), 2);
    assert!(
        out.skipped.iter().any(|s| s.finding.code == "skipped"
            && s.source.as_ref().is_some_and(|r| r.kind == "Service"))
    );

    let web = policy(&out, "web");
    let spec = &web.document.spec;
    assert_eq!(web.document.metadata.namespace.as_deref(), Some("shop"));
    assert_eq!(
        spec.allow_origins,
        strs(&["https://shop.example.com", "https://admin.example.com"])
    );
    // One label exactly, as ingress-nginx's `[A-Za-z0-9\-]+`.
    assert_eq!(
        spec.allow_origin_regexes,
        strs(&[r"https://[a-z0-9-]+\.preview\.example\.com"])
    );
    assert_eq!(spec.allow_credentials, Some(true)); // ingress-nginx's default
    assert_eq!(
        spec.allow_methods,
        strs(&["PUT", "DELETE", "PATCH", "GET", "HEAD", "POST"])
    );
    assert_eq!(spec.expose_headers, strs(&["X-Request-Id"]));
    assert_eq!(spec.max_age, Some(7200));
    assert_eq!(
        spec.unmatched_preflights,
        Some(UnmatchedPreflights::Forward)
    );
    for code in [
        "one-label-wildcard",
        "origin-lowercased",
        "safelisted-methods-added",
        "max-age-capped",
    ] {
        assert!(has(web, code), "{code} missing: {:?}", codes(web));
    }
    let capped = finding(web, "max-age-capped");
    assert_eq!(
        capped.field,
        "metadata.annotations[nginx.ingress.kubernetes.io/cors-max-age]"
    );
    assert!(capped.message.contains("kept 7200"), "{}", capped.message);
    match &web.opt_in {
        corsair_import::OptIn::Note(lines) => {
            assert!(
                lines
                    .iter()
                    .any(|l| l.contains("kubectl get service web -n shop"))
            );
            assert!(lines.iter().any(|l| l.contains("corsair.dev/policy=web")));
        }
        other => panic!("{other:?}"),
    }

    // Defaults: `*` with credentials, which browsers refused: `*` without credentials.
    let assets = policy(&out, "assets");
    assert_eq!(assets.document.spec.allow_origins, strs(&["*"]));
    assert_eq!(assets.document.spec.allow_credentials, None);
    let dropped = finding(assets, "wildcard-credentials-dropped");
    assert_eq!(dropped.severity, Severity::Warning);
    assert!(dropped.message.contains("list the origins"));
    assert_eq!(assets.document.spec.max_age, Some(7200)); // default 1728000, capped
    // `*` also let `Origin: null` read; a Corsair `*` does not, and says so.
    assert!(has(assets, "null-origin-not-covered"));
    assert_eq!(assets.document.spec.allow_null_origin, None);
}

/// The list annotations pass or fail as ingress-nginx v1.9 and later check them: the header list
/// against `parser.HeadersVariable`, every list after its lines are trimmed, with line breaks
/// refused by the annotation validator; empty items between commas are dropped.
#[test]
fn ingress_nginx_lists_are_checked_as_ingress_nginx_does() {
    let with = |annotation: &str, value: &str| {
        ingress(&[
            ("cors-allow-origin", "https://a.example.com"),
            (annotation, value),
        ])
    };
    for value in [
        r#""Content-Type ,X-Api-Key""#,
        r#""Content-Type,  X-Api-Key""#,
        r#""Content-Type,,X-Api-Key""#,
    ] {
        let out = with("cors-allow-headers", value);
        assert_usable(&out);
        let p = policy(&out, "i");
        assert_eq!(
            p.document.spec.allow_headers,
            strs(&["Content-Type", "X-Api-Key"]),
            "{value}"
        );
        assert!(!has(p, "invalid-value"), "{value}: {:?}", codes(p));
    }
    let p = &with("cors-allow-headers", r#""Content-Type ,X-Api-Key""#).policies[0];
    let older = finding(p, "version-dependent");
    assert_eq!(
        older.field,
        "metadata.annotations[nginx.ingress.kubernetes.io/cors-allow-headers]"
    );
    // A value every version accepts says nothing about versions.
    let p = &with("cors-allow-headers", r#""Content-Type, X-Api-Key""#).policies[0];
    assert!(!has(p, "version-dependent"), "{:?}", codes(p));

    // Leading and trailing blanks are trimmed before the check.
    let p = &with("cors-allow-methods", r#"" PUT, DELETE ""#).policies[0];
    assert_eq!(
        p.document.spec.allow_methods,
        strs(&["PUT", "DELETE", "GET", "HEAD", "POST"])
    );
    let p = &with("cors-expose-headers", r#"" X-Request-Id""#).policies[0];
    assert_eq!(p.document.spec.expose_headers, strs(&["X-Request-Id"]));
    // A line break fails the validator: the default list.
    let p = &with("cors-allow-methods", r#""PUT,\nDELETE""#).policies[0];
    assert!(has(p, "invalid-value"), "{:?}", codes(p));
    assert_eq!(
        p.document.spec.allow_methods,
        strs(&["GET", "PUT", "POST", "DELETE", "PATCH", "OPTIONS", "HEAD"])
    );
}

/// `"X-A X-B"` passes ingress-nginx's patterns (and Istio checks nothing), but browsers cannot
/// parse the list it makes: with such an allow list every preflight failed, with such an
/// expose list nothing was exposed. The policy does as browsers did, says so naming the
/// field, and `corsair check` accepts it.
#[test]
fn unparsable_lists_do_what_browsers_did_with_a_warning() {
    let with = |annotation: &str, value: &str, expose: &str| {
        ingress(&[
            ("cors-allow-origin", "https://a.example.com"),
            ("cors-expose-headers", expose),
            (annotation, value),
        ])
    };
    for (annotation, value) in [
        ("cors-allow-headers", r#""X-A X-B, Content-Type""#),
        ("cors-allow-methods", r#""PUT DELETE""#),
    ] {
        let out = with(annotation, value, "X-Id");
        assert_usable(&out);
        let p = policy(&out, "i");
        let spec = &p.document.spec;
        assert_eq!(
            (&spec.allow_methods, &spec.allow_headers),
            (&None, &None),
            "{value}"
        );
        assert_eq!(spec.expose_headers, strs(&["X-Id"]), "{value}");
        let found = finding(p, "unparsable-list");
        assert_eq!(found.severity, Severity::Warning);
        assert_eq!(
            found.field,
            format!("metadata.annotations[nginx.ingress.kubernetes.io/{annotation}]")
        );
        assert!(
            found.message.contains("every preflight failed"),
            "{}",
            found.message
        );
    }
    let out = with(
        "cors-allow-headers",
        "X-A",
        r#""X-Request-Id X-Trace, X-Id""#,
    );
    assert_usable(&out);
    let p = policy(&out, "i");
    assert_eq!(p.document.spec.expose_headers, None);
    assert_eq!(p.document.spec.allow_headers, strs(&["X-A"]));
    assert!(
        finding(p, "unparsable-list")
            .message
            .contains("exposed none")
    );
    // Istio takes list items as they are; a name that is fine alone says nothing.
    let vs = |headers: &str| {
        virtual_service(&format!(
            "      allowOrigins: [{{exact: \"https://a.example.com\"}}]\n      allowMethods: [PUT]\n      allowHeaders: {headers}\n"
        ))
    };
    let out = vs(r#"["X-A;B"]"#);
    assert_usable(&out);
    let p = policy(&out, "v");
    assert_eq!(p.document.spec.routes[0].allow_methods, None);
    assert_eq!(
        finding(p, "unparsable-list").field,
        "spec.http[0].corsPolicy.allowHeaders"
    );
    let p = &vs(r#"["X-A", "*"]"#).policies[0];
    assert!(!has(p, "unparsable-list"), "{:?}", codes(p));
}

/// An empty `cors-allow-origin` is an error to ingress-nginx's parser, which then allows `*`,
/// as when the annotation is absent.
#[test]
fn ingress_nginx_empty_origin_is_the_default() {
    for value in [r#""""#, r#""  ""#] {
        let out = ingress(&[("cors-allow-origin", value)]);
        assert_usable(&out);
        let p = policy(&out, "i");
        assert_eq!(p.document.spec.allow_origins, strs(&["*"]), "{value}");
        let default = finding(p, "default-origin");
        assert_eq!(
            default.field,
            "metadata.annotations[nginx.ingress.kubernetes.io/cors-allow-origin]"
        );
        // ingress-nginx's default credentials `true` beside `*`, as for an absent annotation.
        assert!(has(p, "wildcard-credentials-dropped"), "{:?}", codes(p));
    }
}

#[test]
fn gateway_api() {
    let out = fixture("gateway-api.yaml");
    assert_usable(&out);
    let api = policy(&out, "api");
    let routes = &api.document.spec.routes;
    assert_eq!(api.document.spec.allow_origins, None);
    let prefixes: Vec<&str> = routes.iter().map(|r| r.path_prefix.as_str()).collect();
    assert_eq!(prefixes, ["/api", "/public", "/api/internal"]);
    assert_eq!(
        routes[0].allow_origins,
        strs(&["https://app.example.com", "https://*.example.org"])
    );
    assert_eq!(routes[0].allow_credentials, Some(true));
    assert_eq!(routes[0].max_age, Some(600));
    assert_eq!(routes[1].allow_origins, strs(&["*"]));
    assert_eq!(routes[1].max_age, None); // the default 5 s is what browsers assume
    // The rule without CORS under /api keeps getting no CORS.
    assert_eq!(routes[2].mode, Some(Mode::Disabled));
    assert!(has(api, "no-cors-path-kept"));

    let legacy = policy(&out, "legacy");
    assert!(legacy.incomplete);
    assert_eq!(legacy.document.spec.routes[0].allow_origins, Some(vec![]));
    assert_eq!(legacy.document.spec.routes[0].allow_credentials, Some(true));
    let refused = finding(legacy, "wildcard-credentials-refused");
    assert_eq!(refused.field, "spec.rules[0].filters[0].cors.allowOrigins");
    assert!(refused.message.contains("any web site could read"));
    // With credentials, `*` in allowHeaders echoed Authorization too.
    assert_eq!(
        legacy.document.spec.routes[0].allow_headers,
        strs(&["*", "Authorization"])
    );
}

/// Envoy-based gateways answer `allowHeaders: ["*"]` by echoing the requested headers with or
/// without credentials, so `Authorization` passed; a Corsair `*` never covers it.
#[test]
fn gateway_api_star_headers_without_credentials_keep_authorization() {
    let out = inline(
        "apiVersion: gateway.networking.k8s.io/v1\nkind: HTTPRoute\nmetadata: {name: r}\nspec:\n  rules:\n  - filters: [{type: CORS, cors: {allowOrigins: [\"https://a.example.com\"], allowHeaders: [\"*\"]}}]\n",
    );
    assert_usable(&out);
    let p = policy(&out, "r");
    assert_eq!(
        p.document.spec.routes[0].allow_headers,
        strs(&["*", "Authorization"])
    );
    assert_eq!(p.document.spec.routes[0].allow_credentials, None);
    let added = finding(p, "authorization-added");
    assert_eq!(added.field, "spec.rules[0].filters[0].cors.allowHeaders");
    // The Gateway API also allows sending `*` literally there: said, with how to undo it.
    let assumed = finding(p, "wildcard-headers-echo-assumed");
    assert!(assumed.message.contains("literally"), "{}", assumed.message);
}

/// `https://host:443` means `https://host` to the Gateway API, but Envoy-based gateways compared
/// the bytes and never matched it: the translation stays, with a warning.
#[test]
fn gateway_api_default_port_is_dropped_with_a_warning() {
    let out = inline(
        "apiVersion: gateway.networking.k8s.io/v1\nkind: HTTPRoute\nmetadata: {name: r}\nspec:\n  rules:\n  - filters: [{type: CORS, cors: {allowOrigins: [\"https://a.example.com:443\", \"http://b.example.com:80\"]}}]\n",
    );
    assert_usable(&out);
    let p = policy(&out, "r");
    assert_eq!(
        p.document.spec.routes[0].allow_origins,
        strs(&["https://a.example.com", "http://b.example.com"])
    );
    let dropped: Vec<&Finding> = p
        .findings
        .iter()
        .filter(|f| f.code == "default-port-dropped")
        .collect();
    assert_eq!(dropped.len(), 2, "{:?}", codes(p));
    for f in dropped {
        assert_eq!(f.severity, Severity::Warning);
        assert_eq!(f.field, "spec.rules[0].filters[0].cors.allowOrigins");
        assert!(f.message.contains("byte for byte"), "{}", f.message);
    }
}

/// Two rules of one path, one with CORS and one without: the Gateway API picks between them by
/// match type and conditions, which a route cannot; the one kept is named, in either order.
#[test]
fn gateway_api_rules_of_one_path_are_never_dropped_silently() {
    let route = |first: &str, second: &str| {
        format!(
            "apiVersion: gateway.networking.k8s.io/v1\nkind: HTTPRoute\nmetadata: {{name: r}}\nspec:\n  rules:\n{first}{second}"
        )
    };
    let with_cors = "  - matches: [{path: {type: PathPrefix, value: /api}}]\n    filters: [{type: CORS, cors: {allowOrigins: [\"https://a.example.com\"]}}]\n";
    let without = "  - matches: [{path: {type: Exact, value: /api}}]\n";
    // CORS first: the Exact rule without CORS is not converted, and a warning says so.
    let out = inline(&route(with_cors, without));
    let p = policy(&out, "r");
    let same: Vec<&Finding> = p
        .findings
        .iter()
        .filter(|f| f.code == "same-path-rules")
        .collect();
    assert_eq!(same.len(), 1, "{:?}", codes(p));
    assert_eq!(same[0].severity, Severity::Warning);
    assert_eq!(same[0].field, "spec.rules[1].matches[0].path");
    assert!(
        same[0]
            .message
            .contains("keeps spec.rules[0].matches[0].path (its CORS rules)"),
        "{}",
        same[0].message
    );
    assert!(
        same[0].message.contains("absence of CORS is not converted"),
        "{}",
        same[0].message
    );
    // Without CORS first: the CORS rule is the one not converted, and no "never reached" claim.
    let out = inline(&route(without, with_cors));
    let findings: Vec<&Finding> = out
        .policies
        .iter()
        .flat_map(|p| &p.findings)
        .chain(out.skipped.iter().map(|s| &s.finding))
        .collect();
    let same: Vec<&&Finding> = findings
        .iter()
        .filter(|f| f.code == "same-path-rules")
        .collect();
    assert_eq!(same.len(), 1);
    assert!(
        same[0].message.contains("(no CORS)")
            && same[0]
                .message
                .contains("CORS configuration is not converted"),
        "{}",
        same[0].message
    );
    assert!(!findings.iter().any(|f| f.code == "shadowed-route"));
    // Two matches of one rule (GET and POST on /api) share its CORS: nothing to say.
    let out = inline(&route(
        "  - matches: [{path: {value: /api}, method: GET}, {path: {value: /api}, method: POST}]\n    filters: [{type: CORS, cors: {allowOrigins: [\"https://a.example.com\"]}}]\n",
        "",
    ));
    let p = policy(&out, "r");
    assert!(!has(p, "same-path-rules"), "{:?}", codes(p));
}

/// A match that also needs a header (a canary) takes only the requests that carry it; the
/// others fall to the rules after it. So it neither shadows those rules nor takes their path:
/// the match without conditions decides the route, and a warning names what is not converted.
#[test]
fn matches_with_conditions_do_not_take_the_path_from_the_rules_after_them() {
    let cors = "{allowOrigins: [{exact: \"https://app.example.com\"}], allowMethods: [GET, PUT]}";
    let istio = |first: &str, second: &str| {
        inline(&format!(
            "apiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {{name: api, namespace: shop}}\nspec:\n  http:\n{first}{second}"
        ))
    };
    let canary = "  - match: [{headers: {x-canary: {exact: \"true\"}}}]\n    route: [{destination: {host: api-canary}}]\n";
    let main = format!("  - route: [{{destination: {{host: api}}}}]\n    corsPolicy: {cors}\n");
    // The canary first, without CORS: every other request got the main route's CORS.
    let out = istio(canary, &main);
    assert_usable(&out);
    let p = policy(&out, "api");
    assert_eq!(p.document.spec.routes.len(), 1, "{:#?}", p.document.spec);
    let route = &p.document.spec.routes[0];
    assert_eq!(route.path_prefix, "/");
    assert_eq!(route.mode, None);
    assert_eq!(route.allow_origins, strs(&["https://app.example.com"]));
    assert!(
        !has(p, "shadowed-route") && !has(p, "no-origin-left"),
        "{:?}",
        codes(p)
    );
    let not = finding(p, "conditional-match-not-converted");
    assert_eq!(not.severity, Severity::Warning);
    assert_eq!(not.field, "spec.http[0].match[0]");
    assert!(not.message.contains("headers"), "{}", not.message);
    assert!(not.message.contains("MORE open"), "{}", not.message);
    // The canary after the main route is never reached.
    let out = istio(&main, canary);
    let p = policy(&out, "api");
    assert_eq!(p.document.spec.routes.len(), 1);
    assert!(!has(p, "conditional-match-not-converted"), "{:?}", codes(p));
    // A canary with CORS of its own before a main route without: the main route decides, and
    // the canary's requests lose their CORS headers, as the warning says.
    let canary_cors = format!("{canary}    corsPolicy: {cors}\n");
    let out = istio(&canary_cors, "  - route: [{destination: {host: api}}]\n");
    assert!(out.policies.is_empty(), "{:#?}", out.policies);
    let warned = out
        .skipped
        .iter()
        .find(|s| s.finding.code == "conditional-match-not-converted")
        .unwrap_or_else(|| panic!("{:#?}", out.skipped));
    assert!(
        warned
            .finding
            .message
            .contains("lose the CORS headers they had"),
        "{}",
        warned.finding.message
    );
    // And the policy-less outcome says why, not that no origin was ever allowed.
    let none = out
        .skipped
        .iter()
        .find(|s| s.finding.code == "no-origin-left")
        .unwrap_or_else(|| panic!("{:#?}", out.skipped));
    assert!(
        none.finding
            .message
            .contains("only matches with conditions"),
        "{}",
        none.finding.message
    );
    // The canary on /api/ also took its requests from a later /api/public/ with CORS: that
    // path now gives them CORS, and a warning says so for it too.
    let out = istio(
        "  - match: [{uri: {prefix: /api/}, headers: {x-canary: {exact: \"true\"}}}]\n    route: [{destination: {host: api-canary}}]\n",
        &format!(
            "  - match: [{{uri: {{prefix: /api/public/}}}}]\n    route: [{{destination: {{host: api}}}}]\n    corsPolicy: {cors}\n  - route: [{{destination: {{host: api}}}}]\n"
        ),
    );
    let p = policy(&out, "api");
    let about: Vec<&str> = p
        .findings
        .iter()
        .filter(|f| f.code == "conditional-match-not-converted")
        .map(|f| f.message.as_str())
        .collect();
    assert!(
        about
            .iter()
            .any(|m| m.contains("every request under \"/api/public/\"") && m.contains("MORE open")),
        "{about:?}"
    );
    // Alone, a conditional match is the only source of its path's answers: it is converted,
    // and the warning says that its CORS now covers every request there.
    let out = istio(&canary_cors, "");
    let p = policy(&out, "api");
    assert_eq!(p.document.spec.routes[0].path_prefix, "/");
    assert!(has(p, "match-conditions-ignored"), "{:?}", codes(p));

    // The Gateway API: a header-matched rule on / without CORS, then a CORS rule on /.
    let out = inline(
        "apiVersion: gateway.networking.k8s.io/v1\nkind: HTTPRoute\nmetadata: {name: r}\nspec:\n  rules:\n  - matches: [{path: {value: /}, headers: [{name: x-canary, value: \"true\"}]}]\n  - matches: [{path: {value: /}}]\n    filters: [{type: CORS, cors: {allowOrigins: [\"https://app.example.com\"]}}]\n",
    );
    assert_usable(&out);
    let p = policy(&out, "r");
    assert_eq!(p.document.spec.routes.len(), 1, "{:#?}", p.document.spec);
    assert_eq!(p.document.spec.routes[0].mode, None);
    assert!(!has(p, "same-path-rules"), "{:?}", codes(p));
    assert_eq!(
        finding(p, "conditional-match-not-converted").field,
        "spec.rules[0].matches[0].path"
    );
    // An empty condition (`headers: []`, as templates write) is no condition.
    let out = inline(
        "apiVersion: gateway.networking.k8s.io/v1\nkind: HTTPRoute\nmetadata: {name: r}\nspec:\n  rules:\n  - matches: [{path: {value: /}}]\n  - matches: [{path: {value: /api}, headers: []}]\n    filters: [{type: CORS, cors: {allowOrigins: [\"https://app.example.com\"]}}]\n",
    );
    let p = policy(&out, "r");
    assert!(
        p.document
            .spec
            .routes
            .iter()
            .any(|r| r.path_prefix == "/api" && r.mode.is_none()),
        "{:#?}",
        p.document.spec
    );
    assert!(!has(p, "conditional-match-not-converted"), "{:?}", codes(p));
    // A header-matched /api without CORS under a CORS rule on /: no route with mode off, which
    // would take CORS from every request to /api.
    let out = inline(
        "apiVersion: gateway.networking.k8s.io/v1\nkind: HTTPRoute\nmetadata: {name: r}\nspec:\n  rules:\n  - matches: [{path: {value: /api}, headers: [{name: x-canary, value: \"true\"}]}]\n  - matches: [{path: {value: /}}]\n    filters: [{type: CORS, cors: {allowOrigins: [\"https://app.example.com\"]}}]\n",
    );
    let p = policy(&out, "r");
    assert_eq!(p.document.spec.routes.len(), 1, "{:#?}", p.document.spec);
    assert_eq!(p.document.spec.routes[0].path_prefix, "/");
    assert!(has(p, "conditional-match-not-converted"), "{:?}", codes(p));
}

/// A CORS filter on a backendRef acts only on what the rule sends to that backend: the policy is
/// for that Service alone, and a second, different backend filter is reported, not merged.
#[test]
fn gateway_api_backend_filters() {
    let out = inline(
        r#"apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: split, namespace: shop}
spec:
  rules:
  - matches: [{path: {type: PathPrefix, value: /api}}]
    backendRefs:
    - name: api-v2
      weight: 10
      filters: [{type: CORS, cors: {allowOrigins: ["https://app.example.com"]}}]
    - name: api-v1
      weight: 90
    - name: api-v3
      filters: [{type: CORS, cors: {allowOrigins: ["https://beta.example.com"]}}]
"#,
    );
    assert_usable(&out);
    let p = policy(&out, "split");
    assert_eq!(
        p.document.spec.routes[0].allow_origins,
        strs(&["https://app.example.com"])
    );
    let scoped = finding(p, "backend-filter");
    assert_eq!(scoped.field, "spec.rules[0].backendRefs[0].filters[0].cors");
    let other = finding(p, "backend-filter-not-converted");
    assert_eq!(other.field, "spec.rules[0].backendRefs[2].filters[0].cors");
    let corsair_import::OptIn::Note(lines) = &p.opt_in else {
        panic!("{:?}", p.opt_in)
    };
    let text = lines.join("\n");
    assert!(text.contains("api-v2"), "{text}");
    assert!(
        !text.contains("api-v1") && !text.contains("api-v3"),
        "{text}"
    );

    // With a filter on the rule too, the rule's is the one converted, and the other is said.
    let out = inline(
        "apiVersion: gateway.networking.k8s.io/v1\nkind: HTTPRoute\nmetadata: {name: r}\nspec:\n  rules:\n  - filters: [{type: CORS, cors: {allowOrigins: [\"https://a.example.com\"]}}]\n    backendRefs:\n    - name: b\n      filters: [{type: CORS, cors: {allowOrigins: [\"https://b.example.com\"]}}]\n",
    );
    let p = policy(&out, "r");
    assert_eq!(
        p.document.spec.routes[0].allow_origins,
        strs(&["https://a.example.com"])
    );
    assert!(has(p, "backend-filter-not-converted"));
}

#[test]
fn istio() {
    let out = fixture("istio.yaml");
    assert_usable(&out);
    let reviews = policy(&out, "reviews");
    let route = &reviews.document.spec.routes[0];
    assert_eq!(route.path_prefix, "/v1");
    assert_eq!(route.allow_origins, strs(&["https://app.example.com"]));
    assert_eq!(
        route.allow_origin_regexes,
        strs(&[
            r"https://partner\.example\.net(:[0-9]+)?",
            r"https://[a-z]+\.example\.org"
        ])
    );
    assert_eq!(route.allow_headers, strs(&["*", "Authorization"]));
    assert_eq!(route.max_age, Some(7200));
    assert_eq!(
        route.unmatched_preflights,
        Some(UnmatchedPreflights::Forward)
    );
    let anchored = finding(reviews, "origin-anchored");
    assert_eq!(anchored.field, "spec.http[0].corsPolicy.allowOrigins[1]");
    assert!(
        anchored
            .message
            .contains("https://partner.example.net.attacker.example")
    );
}

/// Istio reads the deprecated `allowOrigin` only when `allowOrigins` is absent: a leftover
/// `allowOrigin: ["*"]` beside a strict `allowOrigins` never opened anything.
#[test]
fn istio_deprecated_allow_origin_only_without_allow_origins() {
    let out = virtual_service(
        "      allowOrigins: [{exact: \"https://a.example.com\"}]\n      allowOrigin: [\"*\"]\n",
    );
    assert_usable(&out);
    let p = policy(&out, "v");
    let route = &p.document.spec.routes[0];
    assert_eq!(route.allow_origins, strs(&["https://a.example.com"]));
    let ignored = finding(p, "deprecated-field-ignored");
    assert_eq!(ignored.severity, Severity::Warning);
    assert_eq!(ignored.field, "spec.http[0].corsPolicy.allowOrigin");
    assert!(
        ignored.message.contains("allowOrigins"),
        "{}",
        ignored.message
    );

    // Alone, it is read (exact matches).
    let out = virtual_service("      allowOrigin: [\"https://b.example.com\"]\n");
    let p = policy(&out, "v");
    assert_eq!(
        p.document.spec.routes[0].allow_origins,
        strs(&["https://b.example.com"])
    );
    assert!(!has(p, "deprecated-field-ignored"));
}

#[test]
fn envoy_gateway() {
    let out = fixture("envoy-gateway.yaml");
    assert_usable(&out);
    let p = policy(&out, "cors-example");
    assert_eq!(
        p.document.spec.allow_origins,
        strs(&[
            "http://*.foo.com",
            "http://*.foo.com:8080",
            "https://www.example.com"
        ])
    );
    assert_eq!(p.document.spec.max_age, Some(3600));
    assert_eq!(p.document.spec.allow_credentials, None);
}

/// Envoy Gateway joins each list with ", ", and Envoy echoes the request only for a list that
/// is exactly `*`: `["GET", "*"]` reached browsers as the text `GET, *`, whose `*` matches
/// nothing with credentials and never covers `Authorization` without them.
#[test]
fn envoy_gateway_star_beside_other_items_is_text() {
    let eg = |credentials: bool| {
        inline(&format!(
            "apiVersion: gateway.envoyproxy.io/v1alpha1\nkind: SecurityPolicy\n\
             metadata: {{name: eg}}\nspec:\n  targetRefs: [{{group: gateway.networking.k8s.io, \
             kind: HTTPRoute, name: r}}]\n  cors:\n    allowOrigins: [\"https://app.example.com\"]\n\
             \x20   allowMethods: [\"GET\", \"*\"]\n    allowHeaders: [\"X-Api-Key\", \"*\"]\n\
             \x20   allowCredentials: {credentials}\n"
        ))
    };
    let out = eg(true);
    let c = policy(&out, "eg");
    // The methods browsers never preflight stay allowed; the `*` goes.
    assert_eq!(
        c.document.spec.allow_methods,
        strs(&["GET", "HEAD", "POST"])
    );
    assert_eq!(c.document.spec.allow_headers, strs(&["X-Api-Key"]));
    assert!(has(c, "star-sent-literally"), "{:?}", codes(c));
    let out = eg(false);
    let c = policy(&out, "eg");
    assert_eq!(c.document.spec.allow_headers, strs(&["X-Api-Key", "*"]));
    assert!(has(c, "star-sent-literally"), "{:?}", codes(c));
}

#[test]
fn traefik() {
    let out = fixture("traefik.yaml");
    assert_usable(&out);
    let p = policy(&out, "cors-headers");
    assert_eq!(
        p.document.spec.allow_origins,
        strs(&["https://foo.bar.org"])
    );
    assert_eq!(
        p.document.spec.allow_origin_regexes,
        strs(&[r"https://.*\.example\.com"])
    );
    assert_eq!(p.document.spec.max_age, Some(100));
    assert!(has(p, "origin-never-matched"));
    let anchored = finding(p, "origin-anchored");
    assert!(
        anchored.message.contains(".attacker.example"),
        "{}",
        anchored.message
    );
}

/// Traefik echoes the requested methods and headers for `*` with credentials only since v3.6.22
/// and v3.7.6; the policy echoes too, and warns that this is wider than earlier Traefik.
#[test]
fn traefik_star_with_credentials_warns_about_earlier_versions() {
    let out = inline(
        "apiVersion: traefik.io/v1alpha1\nkind: Middleware\nmetadata: {name: m}\nspec:\n  headers:\n    accessControlAllowOriginList: [https://a.example.com]\n    accessControlAllowCredentials: true\n    accessControlAllowMethods: [\"*\"]\n    accessControlAllowHeaders: [\"*\"]\n",
    );
    assert_usable(&out);
    let p = policy(&out, "m");
    assert_eq!(p.document.spec.allow_methods, strs(&["*"]));
    assert_eq!(p.document.spec.allow_headers, strs(&["*", "Authorization"]));
    let fields: Vec<&str> = p
        .findings
        .iter()
        .filter(|f| f.code == "version-dependent")
        .inspect(|f| {
            assert_eq!(f.severity, Severity::Warning);
            assert!(f.message.contains("v3.6.22"), "{}", f.message);
        })
        .map(|f| f.field.as_str())
        .collect();
    assert_eq!(
        fields,
        [
            "spec.headers.accessControlAllowMethods",
            "spec.headers.accessControlAllowHeaders"
        ]
    );

    // Without credentials every version sent `*` as it is: nothing to say.
    let out = inline(
        "apiVersion: traefik.io/v1alpha1\nkind: Middleware\nmetadata: {name: m}\nspec:\n  headers:\n    accessControlAllowOriginList: [https://a.example.com]\n    accessControlAllowHeaders: [\"*\"]\n",
    );
    assert!(!has(policy(&out, "m"), "version-dependent"));
}

#[test]
fn esp() {
    let out = fixture("esp.yaml");
    assert_usable(&out);
    let v2 = policy(&out, "echo");
    assert_eq!(
        v2.document.spec.allow_origin_regexes,
        strs(&[r"^https://([a-z0-9-]+\.)?example\.com$"])
    );
    assert_eq!(v2.document.spec.allow_credentials, Some(true));
    assert_eq!(
        v2.document.spec.expose_headers,
        strs(&["Content-Length", "Content-Range"])
    );
    assert_eq!(v2.document.spec.max_age, Some(7200)); // 480h, capped
    assert!(!has(v2, "origin-anchored")); // ESPv2 matches the whole origin
    assert_eq!(
        v2.opt_in,
        corsair_import::OptIn::Command(
            "kubectl annotate deployment echo -n endpoints corsair.dev/policy=echo\n# then remove the --cors_* flags from container esp, so that Corsair alone answers CORS".to_owned()
        )
    );
    let v1 = policy(&out, "legacy-echo");
    assert_eq!(
        v1.document.spec.allow_origin_regexes,
        strs(&[r"(?i)https://(www|app)\.example\.com"])
    );
    assert_eq!(
        v1.document.spec.unmatched_preflights,
        Some(UnmatchedPreflights::Forward)
    );
    let anchored = finding(v1, "origin-anchored");
    assert!(
        anchored
            .message
            .contains("https://www.example.com.attacker.example")
    );
    assert_eq!(
        anchored.field,
        "spec.template.spec.containers[0].args[--cors_allow_origin_regex]"
    );
}

/// ESPv2's serverless image takes its flags from `ESPv2_ARGS`, split on `,` or on the delimiter a
/// leading `^DELIM^` names (so values may hold commas); they come after the container's args.
#[test]
fn esp_flags_from_the_environment() {
    let out = inline(
        r#"apiVersion: apps/v1
kind: Deployment
metadata: {name: api, namespace: shop}
spec:
  template:
    spec:
      containers:
      - name: esp
        image: gcr.io/endpoints-release/endpoints-runtime-serverless:2
        args: [--cors_allow_origin=https://old.example.com]
        env:
        - name: ESPv2_ARGS
          value: "^++^--cors_preset=basic++--cors_allow_origin=https://app.example.com++--cors_allow_methods=GET,PUT++--cors_max_age=oops"
"#,
    );
    assert_usable(&out);
    let p = policy(&out, "api");
    assert_eq!(
        p.document.spec.allow_origins,
        strs(&["https://app.example.com"])
    );
    // The comma inside the value survived the `^++^` split: PUT is allowed, DELETE (in ESPv2's
    // default list) is not.
    let methods = p.document.spec.allow_methods.clone().unwrap_or_default();
    assert!(methods.iter().any(|m| m == "PUT"), "{methods:?}");
    assert!(!methods.iter().any(|m| m == "DELETE"), "{methods:?}");
    let invalid = finding(p, "invalid-value");
    assert_eq!(
        invalid.field,
        "spec.template.spec.containers[0].env[ESPv2_ARGS][--cors_max_age]"
    );
    let corsair_import::OptIn::Command(cmd) = &p.opt_in else {
        panic!("{:?}", p.opt_in)
    };
    assert!(cmd.contains("(those in ESPv2_ARGS too)"), "{cmd}");

    // Plain commas, with spaces around them.
    let out = inline(
        "apiVersion: v1\nkind: Pod\nmetadata: {name: p}\nspec:\n  containers:\n  - name: esp\n    image: gcr.io/endpoints-release/endpoints-runtime-serverless:2\n    env: [{name: ESPv2_ARGS, value: \"--cors_preset=basic, --cors_allow_origin=https://a.example.com\"}]\n",
    );
    assert_eq!(
        policy(&out, "p").document.spec.allow_origins,
        strs(&["https://a.example.com"])
    );

    // A value the manifest does not show is said, not guessed.
    let out = inline(
        "apiVersion: v1\nkind: Pod\nmetadata: {name: p}\nspec:\n  containers:\n  - name: esp\n    image: gcr.io/endpoints-release/endpoints-runtime:2\n    args: [--cors_preset=basic]\n    env: [{name: ESPv2_ARGS, valueFrom: {configMapKeyRef: {name: esp, key: args}}}]\n",
    );
    let p = policy(&out, "p");
    let f = finding(p, "flags-not-read");
    assert_eq!(f.field, "spec.containers[0].env[ESPv2_ARGS]");
    assert_eq!(f.severity, Severity::Warning);
}

/// One row: manifest, policy name (None: no policy), finding codes that must appear, whether the
/// policy is left incomplete, expected top-level allowOrigins (None: not checked).
type Row<'a> = (
    String,
    Option<&'a str>,
    &'a [&'a str],
    bool,
    Option<&'a [&'a str]>,
);

/// Small cases, one rule each.
#[test]
fn rules_table() {
    let nginx = |annotations: &str| {
        format!(
            "apiVersion: networking.k8s.io/v1\nkind: Ingress\nmetadata:\n  name: i\n  annotations:\n{annotations}\nspec: {{}}\n"
        )
    };
    let rows: Vec<Row> = vec![
        // ingress-nginx
        (nginx("    nginx.ingress.kubernetes.io/enable-cors: \"false\"\n    nginx.ingress.kubernetes.io/cors-allow-origin: https://a.example.com"), None, &["cors-disabled"], false, None),
        (nginx("    nginx.ingress.kubernetes.io/enable-cors: \"true\"\n    nginx.ingress.kubernetes.io/cors-allow-origin: \"https://a.example.com, null\"\n    nginx.ingress.kubernetes.io/cors-allow-credentials: \"false\""), Some("i"), &["origin-anchored"], false, Some(&["https://a.example.com"])),
        (nginx("    nginx.ingress.kubernetes.io/enable-cors: \"true\"\n    nginx.ingress.kubernetes.io/cors-allow-origin: \"https://a.example.com/, https://b.example.com, *\""), Some("i"), &["origin-annotation-refused", "wildcard-credentials-dropped"], false, Some(&["*"])),
        // One entry the validator refuses (v1.9+) makes the whole value "*": with the default
        // credentials browsers refused credentialed reads, so no origin gets them here either.
        (nginx("    nginx.ingress.kubernetes.io/enable-cors: \"true\"\n    nginx.ingress.kubernetes.io/cors-allow-origin: \"https://app.example.com, https://old.example.com/\""), Some("i"), &["origin-annotation-refused", "wildcard-credentials-dropped"], false, Some(&["*"])),
        // An entry the validator lets through and the parser does not read is skipped alone.
        (nginx("    nginx.ingress.kubernetes.io/enable-cors: \"true\"\n    nginx.ingress.kubernetes.io/cors-allow-origin: \"app.example.com, https://b.example.com\""), Some("i"), &["origin-ignored"], false, Some(&["https://b.example.com"])),
        // A canary's own annotations are never applied.
        (nginx("    nginx.ingress.kubernetes.io/canary: \"true\"\n    nginx.ingress.kubernetes.io/enable-cors: \"true\"\n    nginx.ingress.kubernetes.io/cors-allow-origin: https://staging.example.net"), None, &["canary-ignored"], false, None),
        (nginx("    nginx.ingress.kubernetes.io/enable-cors: \"true\"\n    nginx.ingress.kubernetes.io/cors-allow-origin: \"https://a.example.com:443\""), None, &["origin-never-matched", "no-origin-left"], false, None),
        (nginx("    nginx.ingress.kubernetes.io/enable-cors: \"true\"\n    nginx.ingress.kubernetes.io/cors-allow-origin: \"https://a.example.com\"\n    nginx.ingress.kubernetes.io/cors-allow-headers: \"X-A, *\"\n    nginx.ingress.kubernetes.io/cors-max-age: \"soon\""), Some("i"), &["invalid-value"], false, Some(&["https://a.example.com"])),
        (nginx("    nginx.ingress.kubernetes.io/configuration-snippet: |\n      more_set_headers \"Access-Control-Allow-Origin: $http_origin\";"), None, &["snippet-not-converted"], false, None),
        (nginx("    nginx.ingress.kubernetes.io/enable-cors: \"true\"\n    nginx.ingress.kubernetes.io/cors-allow-origin: https://a.example.com\n    nginx.ingress.kubernetes.io/server-snippet: \"add_header access-control-max-age 60;\""), Some("i"), &["snippet-not-converted"], false, Some(&["https://a.example.com"])),
        (nginx("    nginx.ingress.kubernetes.io/configuration-snippet: \"gzip on;\""), None, &[], false, None),
        // Istio: anything that matches "*" allows every origin.
        ("apiVersion: networking.istio.io/v1beta1\nkind: VirtualService\nmetadata: {name: v}\nspec:\n  http:\n  - corsPolicy:\n      allowOrigins: [{exact: \"*\"}]\n      allowCredentials: true\n".to_owned(), Some("v"), &["wildcard-credentials-refused"], true, None),
        ("apiVersion: networking.istio.io/v1beta1\nkind: VirtualService\nmetadata: {name: v}\nspec:\n  http:\n  - corsPolicy:\n      allowOrigins: [{regex: \"https://.*\"}]\n      allowCredentials: true\n".to_owned(), Some("v"), &["wildcard-credentials-refused"], true, None),
        ("apiVersion: networking.istio.io/v1beta1\nkind: VirtualService\nmetadata: {name: v}\nspec:\n  http:\n  - match: [{uri: {regex: \"/a.*\"}}]\n    corsPolicy:\n      allowOrigins: [{exact: \"https://a.example.com\"}]\n".to_owned(), None, &["path-not-converted", "no-origin-left"], false, None),
        ("apiVersion: networking.istio.io/v1beta1\nkind: VirtualService\nmetadata: {name: v}\nspec:\n  http:\n  - match: [{uri: {prefix: /}}]\n  - match: [{uri: {prefix: /api}}]\n    corsPolicy:\n      allowOrigins: [{exact: \"https://a.example.com\"}]\n".to_owned(), None, &["shadowed-route", "no-origin-left"], false, None),
        // Envoy Gateway
        ("apiVersion: gateway.envoyproxy.io/v1alpha1\nkind: SecurityPolicy\nmetadata: {name: s}\nspec:\n  cors:\n    allowOrigins: [\"*\"]\n    allowCredentials: true\n".to_owned(), Some("s"), &["wildcard-credentials-refused"], true, Some(&[])),
        ("apiVersion: gateway.envoyproxy.io/v1alpha1\nkind: SecurityPolicy\nmetadata: {name: s}\nspec:\n  cors:\n    allowOrigins: [\"https://app-*.example.com\"]\n".to_owned(), Some("s"), &["wildcard-as-regex"], false, None),
        // Traefik v2 sent `*` literally; v3 echoes it with credentials.
        ("apiVersion: traefik.containo.us/v1alpha1\nkind: Middleware\nmetadata: {name: m}\nspec:\n  headers:\n    accessControlAllowOriginList: [\"*\"]\n    accessControlAllowCredentials: true\n".to_owned(), Some("m"), &["wildcard-credentials-dropped"], false, Some(&["*"])),
        ("apiVersion: traefik.io/v1alpha1\nkind: Middleware\nmetadata: {name: m}\nspec:\n  headers:\n    accessControlAllowOriginList: [\"*\"]\n    accessControlAllowCredentials: true\n".to_owned(), Some("m"), &["wildcard-credentials-refused"], true, Some(&[])),
        ("apiVersion: traefik.io/v1alpha1\nkind: Middleware\nmetadata: {name: m}\nspec:\n  headers:\n    accessControlAllowOriginListRegex: [\"https://.*\"]\n    accessControlAllowCredentials: true\n".to_owned(), Some("m"), &["wildcard-credentials-refused"], true, None),
        ("apiVersion: traefik.io/v1alpha1\nkind: Middleware\nmetadata: {name: m}\nspec:\n  headers:\n    accessControlAllowOriginList: [\"null\", https://a.example.com]\n".to_owned(), Some("m"), &["check-warning"], false, Some(&["https://a.example.com"])),
        ("apiVersion: traefik.io/v1alpha1\nkind: Middleware\nmetadata: {name: m}\nspec:\n  headers:\n    customResponseHeaders: {X-A: b}\n".to_owned(), None, &["skipped"], false, None),
        // ESPv2: the default origin `*` echoed, with credentials: refused.
        ("apiVersion: apps/v1\nkind: StatefulSet\nmetadata: {name: e}\nspec:\n  template:\n    spec:\n      containers:\n      - name: esp\n        image: gcr.io/endpoints-release/endpoints-runtime:2\n        args: [--cors_preset=basic, --cors_allow_credentials]\n".to_owned(), Some("e"), &["wildcard-credentials-refused"], true, Some(&[])),
        ("apiVersion: v1\nkind: Pod\nmetadata: {name: p}\nspec:\n  containers:\n  - name: esp\n    image: gcr.io/endpoints-release/endpoints-runtime:1.58\n    args: [--cors_preset=basic, --cors_allow_origin=https://a.example.com, \"--cors_max_age=1h\"]\n".to_owned(), Some("p"), &["max-age-capped"], false, Some(&["https://a.example.com"])),
        ("apiVersion: apps/v1\nkind: Deployment\nmetadata: {name: d}\nspec:\n  template:\n    spec:\n      containers:\n      - name: esp\n        image: gcr.io/endpoints-release/endpoints-runtime:2\n        args: [--cors_allow_origin=https://a.example.com]\n".to_owned(), None, &["cors-disabled"], false, None),
        // Gateway API
        ("apiVersion: gateway.networking.k8s.io/v1\nkind: HTTPRoute\nmetadata: {name: r}\nspec:\n  rules:\n  - matches: [{path: {type: Exact, value: /login}, headers: [{name: x, value: y}]}]\n    filters: [{type: CORS, cors: {allowOrigins: [\"https://a.example.com:443\", \"https://*\"]}}]\n".to_owned(), Some("r"), &["exact-path-as-prefix", "match-conditions-ignored", "default-port-dropped", "wildcard-as-regex"], false, None),
    ];
    for (yaml, name, want, incomplete, origins) in rows {
        let out = inline(&yaml);
        assert_usable(&out);
        let all: Vec<&str> = out
            .policies
            .iter()
            .flat_map(|p| p.findings.iter().map(|f| f.code))
            .chain(out.skipped.iter().map(|s| s.finding.code))
            .collect();
        for code in want {
            assert!(all.contains(code), "{code} missing from {all:?}\n{yaml}");
        }
        match name {
            None => assert!(out.policies.is_empty(), "{yaml}\n{:#?}", out.policies),
            Some(name) => {
                let p = policy(&out, name);
                assert_eq!(p.incomplete, incomplete, "{yaml}");
                if let Some(o) = origins {
                    assert_eq!(p.document.spec.allow_origins, strs(o), "{yaml}");
                }
            }
        }
    }
}

#[test]
fn json_lists_and_renamed_duplicates() {
    let json = r#"{"apiVersion": "v1", "kind": "List", "items": [
      {"apiVersion": "traefik.io/v1alpha1", "kind": "Middleware", "metadata": {"name": "web", "namespace": "a"},
       "spec": {"headers": {"accessControlAllowOriginList": ["https://a.example.com"]}}},
      {"apiVersion": "gateway.envoyproxy.io/v1alpha1", "kind": "SecurityPolicy", "metadata": {"name": "web", "namespace": "a"},
       "spec": {"cors": {"allowOrigins": ["https://b.example.com"]}}}
    ]}"#;
    let out = inline(json);
    assert_usable(&out);
    let names: Vec<_> = out
        .policies
        .iter()
        .map(|p| p.document.metadata.name.clone().unwrap_or_default())
        .collect();
    assert_eq!(names, ["web", "web-securitypolicy"]);
    assert!(has(&out.policies[1], "renamed"));
    // Its opt-in names it by its new name: the old one is the other source's policy.
    let opt_in = |p: &corsair_import::Converted| match &p.opt_in {
        corsair_import::OptIn::Command(c) => c.clone(),
        corsair_import::OptIn::Note(lines) => lines.join("\n"),
    };
    let renamed = opt_in(&out.policies[1]);
    assert!(
        renamed.contains("corsair.dev/policy=web-securitypolicy\n")
            || renamed.ends_with("corsair.dev/policy=web-securitypolicy"),
        "{renamed}"
    );
    assert!(
        !renamed.contains("corsair.dev/policy=web\n")
            && !renamed.ends_with("corsair.dev/policy=web"),
        "{renamed}"
    );
    assert!(opt_in(&out.policies[0]).contains("corsair.dev/policy=web\n"));
}

/// The opt-in of a policy as one text: the command, or the note's lines.
fn opt_in_text(p: &Converted) -> String {
    match &p.opt_in {
        corsair_import::OptIn::Command(c) => c.clone(),
        corsair_import::OptIn::Note(lines) => lines.join("\n"),
    }
}

/// Names the API server refuses never leave the import: a source name over 63 characters is
/// shortened, duplicates stay apart however many there are, and a source without a name is an
/// error that says so.
#[test]
fn policy_names_fit_the_crd_and_stay_unique() {
    let ingress = |name: &str, origin: &str| {
        format!(
            "apiVersion: networking.k8s.io/v1\nkind: Ingress\nmetadata:\n  name: {name}\n  namespace: shop\n  annotations:\n    nginx.ingress.kubernetes.io/enable-cors: \"true\"\n    nginx.ingress.kubernetes.io/cors-allow-origin: {origin}\nspec: {{}}\n"
        )
    };
    // Three Ingresses `web` in one namespace (as from three files): three names.
    let three = [
        ingress("web", "https://a.example.com"),
        ingress("web", "https://b.example.com"),
        ingress("web", "https://c.example.com"),
    ]
    .join("---\n");
    let out = inline(&three);
    let names: Vec<String> = out
        .policies
        .iter()
        .map(|p| p.document.metadata.name.clone().unwrap_or_default())
        .collect();
    assert_eq!(names, ["web", "web-ingress", "web-ingress-2"]);
    for p in &out.policies[1..] {
        let name = p.document.metadata.name.as_deref().unwrap_or_default();
        let text = opt_in_text(p);
        assert!(
            text.ends_with(&format!("corsair.dev/policy={name}")),
            "{text}"
        );
    }
    // Two long names alike in their first 63 characters: two short names, each a valid name.
    let long = "a".repeat(70);
    let out = inline(
        &[
            ingress(&long, "https://a.example.com"),
            ingress(&format!("{long}b"), "https://b.example.com"),
        ]
        .join("---\n"),
    );
    let names: Vec<&str> = out
        .policies
        .iter()
        .map(|p| p.document.metadata.name.as_deref().unwrap_or_default())
        .collect();
    assert_eq!(names.len(), 2);
    assert_ne!(names[0], names[1]);
    for (p, name) in out.policies.iter().zip(&names) {
        assert!(name.len() <= 63, "{name}");
        assert!(name.starts_with("aaaa") && !name.ends_with('-'), "{name}");
        assert!(
            name.bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-'),
            "{name}"
        );
        let renamed = finding(p, "renamed");
        assert!(
            renamed.message.contains("longer than the 63"),
            "{}",
            renamed.message
        );
        let text = opt_in_text(p);
        assert!(
            text.ends_with(&format!("corsair.dev/policy={name}")),
            "{text}"
        );
    }
    // The same input gives the same names.
    let again = inline(
        &[
            ingress(&long, "https://a.example.com"),
            ingress(&format!("{long}b"), "https://b.example.com"),
        ]
        .join("---\n"),
    );
    assert_eq!(
        again.policies[0].document.metadata.name.as_deref(),
        Some(names[0])
    );
    // No name: an error naming metadata.name, and no policy named "".
    let out = inline(
        "apiVersion: networking.k8s.io/v1\nkind: Ingress\nmetadata:\n  annotations:\n    nginx.ingress.kubernetes.io/enable-cors: \"true\"\nspec: {}\n",
    );
    assert!(out.policies.is_empty(), "{:#?}", out.policies);
    assert_eq!(out.errors.len(), 1);
    let message = out.errors[0].to_string();
    assert!(
        message.contains("document 1") && message.contains("metadata.name"),
        "{message}"
    );
}

/// A source with more origins than the CRD takes converts, but says that the API server will
/// refuse the policy, naming the field: nothing is dropped without a word.
#[test]
fn a_policy_past_the_crd_bounds_says_so() {
    let origins: Vec<String> = (0..200)
        .map(|i| format!("https://a{i}.example.com"))
        .collect();
    let out = ingress(&[("cors-allow-origin", &format!("\"{}\"", origins.join(", ")))]);
    let p = policy(&out, "i");
    assert_eq!(
        p.document.spec.allow_origins.as_ref().map(Vec::len),
        Some(200)
    );
    let refused = p
        .findings
        .iter()
        .find(|f| f.code == "check-error" && f.field == "(policy) spec.allowOrigins")
        .unwrap_or_else(|| panic!("{:#?}", p.findings));
    assert_eq!(refused.severity, Severity::Warning);
    assert!(
        refused.message.contains("at most 128"),
        "{}",
        refused.message
    );
}

/// A field of the wrong type (a manifest the API server would refuse, so the source never ran
/// with it) is named, not dropped without a word.
#[test]
fn fields_of_the_wrong_type_are_named() {
    let out = inline(
        "apiVersion: gateway.networking.k8s.io/v1\nkind: HTTPRoute\nmetadata: {name: r}\nspec:\n  rules:\n  - filters:\n    - type: CORS\n      cors: {allowOrigins: [\"https://a.example.com\"], allowCredentials: \"true\", maxAge: \"600\", allowMethods: PUT}\n",
    );
    let p = policy(&out, "r");
    let invalid: Vec<(&str, &str)> = p
        .findings
        .iter()
        .filter(|f| f.code == "invalid-type")
        .map(|f| (f.field.as_str(), f.message.as_str()))
        .collect();
    let fields: Vec<&str> = invalid.iter().map(|(f, _)| *f).collect();
    assert_eq!(
        fields,
        [
            "spec.rules[0].filters[0].cors.allowMethods",
            "spec.rules[0].filters[0].cors.allowCredentials",
            "spec.rules[0].filters[0].cors.maxAge",
        ]
    );
    assert!(
        invalid[1]
            .1
            .contains("the string \"true\", expected true or false"),
        "{}",
        invalid[1].1
    );
    // Istio's origins are matches, not strings: the item is named, not "allows no origin" alone.
    let out = virtual_service("      allowOrigins: [\"https://a.example.com\"]\n");
    let warned: Vec<&str> = out
        .skipped
        .iter()
        .filter(|s| s.finding.code == "invalid-type")
        .map(|s| s.finding.field.as_str())
        .collect();
    assert_eq!(
        warned,
        ["spec.http[0].corsPolicy.allowOrigins[0]"],
        "{:#?}",
        out.skipped
    );
    // Right types: no such finding.
    let out = virtual_service(
        "      allowOrigins: [{exact: \"https://a.example.com\"}]\n      allowCredentials: true\n      maxAge: 24h\n",
    );
    assert!(
        !has(policy(&out, "v"), "invalid-type"),
        "{:?}",
        codes(policy(&out, "v"))
    );
}

#[test]
fn malformed_input_says_where() {
    let out = import(b"apiVersion: v1\nkind: [Ingress\nmetadata: {}\n").unwrap();
    let errors: Vec<String> = out.errors.iter().map(ToString::to_string).collect();
    assert_eq!(errors.len(), 1, "{errors:?}");
    assert!(
        errors[0].starts_with("document 1 (line 1): not YAML: ") && errors[0].contains("line 3"),
        "{errors:?}"
    );
    // A sequence is a list of documents, in YAML as in JSON; each item that is not an object
    // is named, and nothing else of the file is lost.
    let out = import(b"- just\n- a list\n").unwrap();
    let errors: Vec<String> = out.errors.iter().map(ToString::to_string).collect();
    assert_eq!(errors.len(), 2, "{errors:?}");
    assert!(
        errors[0].starts_with("document 1, item 1 (line 1): is not a mapping"),
        "{errors:?}"
    );
    assert!(errors[1].starts_with("document 1, item 2 "), "{errors:?}");
    let middle = b"apiVersion: traefik.io/v1alpha1\nkind: Middleware\nmetadata: {name: a, namespace: x}\nspec: {headers: {accessControlAllowOriginList: [\"https://a.example.com\"]}}\n---\njust a stray scalar\n---\napiVersion: traefik.io/v1alpha1\nkind: Middleware\nmetadata: {name: b, namespace: x}\nspec: {headers: {accessControlAllowOriginList: [\"https://b.example.com\"]}}\n";
    let out = import(middle).unwrap();
    assert_eq!(
        out.policies.len(),
        2,
        "both objects around the stray document are converted"
    );
    assert_eq!(out.errors.len(), 1);
    assert!(
        out.errors[0]
            .to_string()
            .starts_with("document 2 (line 5): "),
        "{:?}",
        out.errors
    );
    // A document that does not parse costs only itself: the ones after it are converted, and
    // the error names its line. An object in a List is named by its item.
    let middleware = |name: &str| {
        format!(
            "apiVersion: traefik.io/v1alpha1\nkind: Middleware\nmetadata: {{name: {name}, namespace: x}}\nspec: {{headers: {{accessControlAllowOriginList: [\"https://{name}.example.com\"]}}}}\n"
        )
    };
    let text = format!(
        "{}---\nmetadata: {{name: x\n---\n{}---\napiVersion: v1\nkind: List\nitems:\n- {{kind: Ingress, metadata: {{name: Bad_Name}}}}\n",
        middleware("a"),
        middleware("b")
    );
    let out = import(text.as_bytes()).unwrap();
    assert_eq!(out.policies.len(), 2, "{:?}", out.errors);
    let errors: Vec<String> = out.errors.iter().map(ToString::to_string).collect();
    assert_eq!(errors.len(), 2, "{errors:?}");
    assert!(
        errors[0].starts_with("document 2 (line 5): not YAML: ") && errors[0].contains("line 6"),
        "{errors:?}"
    );
    assert!(
        errors[1].starts_with("document 4, item 1 (line 12): metadata.name \"Bad_Name\""),
        "{errors:?}"
    );
    // However many documents a file has.
    let many: String = (0..1100)
        .map(|i| middleware(&format!("m{i}")))
        .collect::<Vec<_>>()
        .join("---\n");
    let out = import(many.as_bytes()).unwrap();
    assert_eq!(out.policies.len(), 1100, "{:?}", out.errors);
    let json = import(b"[\"just\", {\"kind\": \"Unknown\"}]").unwrap();
    assert_eq!(json.errors.len(), 1);
    assert!(import(b"\xff\xfe").is_err());
}

/// A `*` that a source sent as text (Traefik v2 and ESP always, ESPv2 beside other names) is a
/// name that matches nothing for credentialed requests: with credentials it is left out, where
/// a Corsair `*` would have echoed every method or header. Without credentials it is what a
/// Corsair `*` means, and Authorization is not added.
#[test]
fn a_star_sent_as_text_is_converted_as_browsers_read_it() {
    let traefik = |group: &str| {
        inline(&format!(
            "apiVersion: {group}/v1alpha1\nkind: Middleware\nmetadata: {{name: m}}\nspec:\n  headers:\n    accessControlAllowOriginList: [https://a.example.com]\n    accessControlAllowCredentials: true\n    accessControlAllowHeaders: [\"*\"]\n    accessControlAllowMethods: [\"*\"]\n"
        ))
    };
    let v2 = traefik("traefik.containo.us");
    assert_usable(&v2);
    let c = policy(&v2, "m");
    let spec = &c.document.spec;
    assert!(spec.allow_credentials == Some(true), "{spec:?}");
    for list in [&spec.allow_headers, &spec.allow_methods] {
        assert!(list.iter().flatten().all(|item| item != "*"), "{spec:?}");
    }
    assert!(
        finding(c, "star-sent-literally")
            .message
            .contains("Traefik v2")
    );
    // Traefik from v3.6.22 echoes a `*` with credentials: kept.
    let v3 = traefik("traefik.io");
    let spec = &policy(&v3, "m").document.spec;
    assert_eq!(spec.allow_headers, strs(&["*", "Authorization"]));

    let esp = |image: &str, args: &str| {
        inline(&format!(
            "apiVersion: v1\nkind: Pod\nmetadata: {{name: p}}\nspec:\n  containers:\n  - name: esp\n    image: gcr.io/endpoints-release/endpoints-runtime:{image}\n    args: [--cors_preset=basic, --cors_allow_origin=https://a.example.com, {args}]\n"
        ))
    };
    let v1 = esp(
        "1.58",
        "--cors_allow_credentials, \"--cors_allow_methods=*\"",
    );
    assert_usable(&v1);
    let c = policy(&v1, "p");
    assert!(
        c.document
            .spec
            .allow_methods
            .iter()
            .flatten()
            .all(|m| m != "*"),
        "{:?}",
        c.document.spec
    );
    assert!(has(c, "star-sent-literally"), "{:?}", codes(c));
    let espv2 = esp("2", "\"--cors_allow_headers=X-A,*\"");
    assert_usable(&espv2);
    let c = policy(&espv2, "p");
    assert_eq!(c.document.spec.allow_headers, strs(&["X-A", "*"]));
    assert!(has(c, "star-sent-literally"), "{:?}", codes(c));
}

/// A source regex that matched `null` allowed sandboxed and file: pages; a Corsair regex never
/// sees `null`, so the import says so instead of dropping them silently.
#[test]
fn a_source_regex_that_matched_null_is_said() {
    let out = virtual_service(
        "      allowOrigins: [{regex: \"https://app\\\\.example\\\\.com|null\"}]\n",
    );
    let c = policy(&out, "v");
    assert!(
        finding(c, "null-origin-not-covered")
            .message
            .contains("null"),
        "{:?}",
        codes(c)
    );
    assert_eq!(c.document.spec.allow_null_origin, None);
    // One that never matched null says nothing of it.
    let out =
        virtual_service("      allowOrigins: [{regex: \"https://app\\\\.example\\\\.com\"}]\n");
    assert!(!has(policy(&out, "v"), "null-origin-not-covered"));
}

/// Istio told `/api/` from `/api`, and an exact `/api` from a prefix `/api`; a route takes a
/// path and every path under it alike, so such a pair becomes one route, the wider source match
/// deciding, with a warning, never two routes of one path that `corsair check` refuses.
#[test]
fn two_istio_matches_of_one_route_path_become_one_route() {
    let vs = |first: &str, second: &str| {
        inline(&format!(
            "apiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {{name: v}}\nspec:\n  http:\n  - match: [{{uri: {first}}}]\n    corsPolicy:\n      allowOrigins: [{{exact: \"https://a.example.com\"}}]\n  - match: [{{uri: {second}}}]\n"
        ))
    };
    // CORS under `/api/`, none for `/api`: the CORS route stays, and says it covers `/api`.
    let out = vs("{prefix: /api/}", "{prefix: /api}");
    assert_usable(&out);
    let c = policy(&out, "v");
    assert!(finding(c, "same-route-path").message.contains("MORE open"));
    let routes = &c.document.spec.routes;
    assert_eq!(routes.len(), 1, "{routes:?}");
    assert_eq!(routes[0].mode, None);
    // CORS for exactly `/api`, none for every other path under it: CORS is left off, the
    // less open side, which leaves no origin allowed anywhere and so no policy.
    let out = vs("{exact: /api}", "{prefix: /api}");
    assert!(out.policies.is_empty(), "{out:?}");
    assert!(
        out.skipped
            .iter()
            .any(|s| s.finding.code == "same-route-path" && s.finding.message.contains("loses")),
        "{out:?}"
    );
    // Two matches without CORS on the path of a CORS prefix: only a match that had CORS can
    // take the path's CORS away, so the route keeps it, said for both.
    let out = inline(
        "apiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {name: v}\nspec:\n  http:\n  - match: [{uri: {exact: /api}}]\n  - match: [{uri: {prefix: /api/}}]\n  - match: [{uri: {prefix: /api}}]\n    corsPolicy:\n      allowOrigins: [{exact: \"https://a.example.com\"}]\n",
    );
    assert_usable(&out);
    let c = policy(&out, "v");
    let routes = &c.document.spec.routes;
    assert_eq!(routes.len(), 1, "{routes:?}");
    assert_eq!(routes[0].mode, None);
    assert!(
        c.findings
            .iter()
            .filter(|f| f.code == "same-route-path")
            .all(|f| f.message.contains("MORE open"))
    );
    // With another CORS route beside them, the policy stays, `/api` passing through.
    let out = inline(
        "apiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {name: v}\nspec:\n  http:\n  - match: [{uri: {exact: /api}}]\n    corsPolicy:\n      allowOrigins: [{exact: \"https://a.example.com\"}]\n  - match: [{uri: {prefix: /api}}]\n  - match: [{uri: {prefix: /}}]\n    corsPolicy:\n      allowOrigins: [{exact: \"https://a.example.com\"}]\n",
    );
    assert_usable(&out);
    let c = policy(&out, "v");
    assert!(has(c, "same-route-path"), "{:?}", codes(c));
    let api: Vec<_> = c
        .document
        .spec
        .routes
        .iter()
        .filter(|r| r.path_prefix == "/api")
        .collect();
    assert_eq!(api.len(), 1, "{:?}", c.document.spec.routes);
    assert_eq!(api[0].mode, Some(Mode::Disabled));
}

/// ingress-nginx reads `cors-max-age` with Go's `strconv.Atoi`, which takes no space: " 600" was
/// invalid, and its default (1728000 s, which Chromium caps at 7200) applied.
#[test]
fn an_ingress_nginx_max_age_with_a_space_was_its_default() {
    let out = ingress(&[
        ("cors-allow-origin", "https://a.example.com"),
        ("cors-max-age", "\" 600\""),
    ]);
    let c = policy(&out, "i");
    assert_eq!(c.document.spec.max_age, Some(7200));
    assert!(has(c, "invalid-value"), "{:?}", codes(c));
    let out = ingress(&[
        ("cors-allow-origin", "https://a.example.com"),
        ("cors-max-age", "\"600\""),
    ]);
    assert_eq!(policy(&out, "i").document.spec.max_age, Some(600));
}

/// Names and namespaces go into the rendered policies' comments and `kubectl` commands: one
/// Kubernetes would refuse (here a namespace carrying a second YAML document, a `*` policy) is
/// an error naming the field, and nothing of that document is converted or rendered.
#[test]
fn a_name_kubernetes_would_refuse_is_an_error_not_a_policy() {
    let ingress = |name: &str, namespace: &str| {
        inline(&format!(
            "apiVersion: networking.k8s.io/v1\nkind: Ingress\nmetadata:\n  name: {name}\n  \
             namespace: {namespace}\n  annotations:\n    \
             nginx.ingress.kubernetes.io/enable-cors: \"true\"\n    \
             nginx.ingress.kubernetes.io/cors-allow-origin: \"https://a.example.com\"\nspec: {{}}\n"
        ))
    };
    let injected = "\"prod\\n---\\napiVersion: corsair.dev/v1alpha1\\nkind: CorsPolicy\\n\
                    metadata: {name: app2}\\nspec: {allowOrigins: ['*']}\\n#\"";
    for (out, field) in [
        (ingress("app", injected), "metadata.namespace"),
        (ingress("App", "prod"), "metadata.name"),
        (ingress("\"app\\n# x\"", "prod"), "metadata.name"),
        // Each label starts and ends with a letter or digit.
        (ingress("app.-v2", "prod"), "metadata.name"),
        (ingress("app", "-prod"), "metadata.namespace"),
    ] {
        assert!(out.policies.is_empty(), "{:?}", out.policies);
        let errors: Vec<String> = out.errors.iter().map(ToString::to_string).collect();
        assert_eq!(errors.len(), 1, "{errors:?}");
        assert!(errors[0].contains(field), "{errors:?}");
    }
    // The same document with names Kubernetes takes converts.
    let out = ingress("app.v2", "prod-eu");
    assert!(out.errors.is_empty(), "{:?}", out.errors);
    let text = render(policy(&out, "app.v2"), "test.yaml").expect("renders");
    assert_eq!(text.matches("kind: CorsPolicy").count(), 1, "{text}");
}

/// A VirtualService whose first `http` entry is `first` (lines indented by two, without CORS or
/// with it) and whose catch-all second entry allows `https://b.example.com`.
fn istio_before_a_catch_all(first: &str) -> Import {
    inline(&format!(
        "apiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {{name: v}}\n\
         spec:\n  http:\n{first}    route: [{{destination: {{host: app}}}}]\n  - corsPolicy:\n      \
         allowOrigins: [{{exact: \"https://b.example.com\"}}]\n    \
         route: [{{destination: {{host: app}}}}]\n"
    ))
}

/// A warning (not a note) on `field` that says the policy is more open than the source.
fn warns_more_open(c: &Converted, code: &str, field: &str) -> bool {
    c.findings.iter().any(|f| {
        f.code == code
            && f.field == field
            && f.severity == Severity::Warning
            && f.message.contains("MORE open")
    })
}

/// Istio's first match wins: a match without CORS took its paths from the routes after it.
/// What a policy route cannot take the same way (any case, a regex, a string prefix) falls to
/// the catch-all's CORS rules, more open than the source, and a warning says so.
#[test]
fn istio_matches_a_route_cannot_take_are_warned_as_more_open() {
    let out =
        istio_before_a_catch_all("  - match: [{uri: {prefix: /admin/}, ignoreUriCase: true}]\n");
    let c = policy(&out, "v");
    assert!(
        warns_more_open(c, "case-ignored", "spec.http[0].match[0].ignoreUriCase"),
        "{:#?}",
        c.findings
    );
    let out = istio_before_a_catch_all("  - match: [{uri: {regex: \"/admin(/.*)?\"}}]\n");
    let c = policy(&out, "v");
    assert!(
        warns_more_open(c, "path-not-converted", "spec.http[0].match[0].uri"),
        "{:#?}",
        c.findings
    );
    // With CORS of its own: `/api-v2` had http[0]'s rules in Istio, the catch-all's here.
    let out = istio_before_a_catch_all(
        "  - match: [{uri: {prefix: /api}}]\n    corsPolicy:\n      \
         allowOrigins: [{exact: \"https://a.example.com\"}]\n",
    );
    let c = policy(&out, "v");
    assert!(
        warns_more_open(
            c,
            "string-prefix-falls-through",
            "spec.http[0].match[0].uri.prefix"
        ),
        "{:#?}",
        c.findings
    );
    // The same rules on both: nothing changes for `/api-v2`, nothing to say.
    let out = istio_before_a_catch_all(
        "  - match: [{uri: {prefix: /api}}]\n    corsPolicy:\n      \
         allowOrigins: [{exact: \"https://b.example.com\"}]\n",
    );
    let c = policy(&out, "v");
    assert!(!has(c, "string-prefix-falls-through"), "{:#?}", c.findings);
}

/// A Gateway API rule without CORS matching a regex path cannot become a route: where the
/// gateway ranked it first, its paths had no CORS, and now get the other rules'.
#[test]
fn gateway_api_regex_rule_without_cors_is_warned_as_more_open() {
    let out = inline(
        "apiVersion: gateway.networking.k8s.io/v1\nkind: HTTPRoute\nmetadata: {name: g}\n\
         spec:\n  rules:\n  - matches: [{path: {type: RegularExpression, value: \"/admin(/.*)?\"}}]\n    \
         backendRefs: [{name: admin}]\n  - matches: [{path: {type: PathPrefix, value: /}}]\n    \
         filters:\n    - type: CORS\n      cors:\n        allowOrigins: [\"https://a.example.com\"]\n    \
         backendRefs: [{name: app}]\n",
    );
    let c = policy(&out, "g");
    assert!(
        warns_more_open(c, "path-not-converted", "spec.rules[0].matches[0].path"),
        "{:#?}",
        c.findings
    );
}

/// ingress-nginx and Envoy (Istio) answered every preflight from an allowed origin themselves,
/// with their own lists; the backend saw only those of other origins. `Forward` keeps that: a
/// preflight from the listed origin for a method the source did not list is refused by the
/// policy, not passed to an application whose own CORS headers could grant it.
#[test]
fn forwarded_preflights_are_only_those_of_other_origins() {
    let decide = |c: &Converted, origin: &'static str, method: &'static str| {
        let (engine, _) = Engine::compile(&c.document.spec).unwrap_or_else(|r| panic!("{r:?}"));
        let req = corsair_policy::RequestInfo {
            method: "OPTIONS",
            path: "/x",
            host: Some("api.internal.test"),
            origin: Some(origin),
            request_method: Some(method),
            ..corsair_policy::RequestInfo::default()
        };
        match engine.decide(&req).action() {
            corsair_policy::Action::Forward { .. } => "forward",
            corsair_policy::Action::Respond { status: 403, .. } => "403",
            corsair_policy::Action::Respond { .. } => "answer",
        }
    };
    let nginx = ingress(&[
        ("cors-allow-origin", "https://a.example.com"),
        ("cors-allow-methods", "\"GET, POST\""),
    ]);
    let istio = virtual_service(
        "      allowOrigins: [{exact: \"https://a.example.com\"}]\n      allowMethods: [GET, POST]\n",
    );
    for (name, out) in [("i", &nginx), ("v", &istio)] {
        let c = policy(out, name);
        assert_eq!(
            decide(c, "https://a.example.com", "POST"),
            "answer",
            "{name}"
        );
        assert_eq!(
            decide(c, "https://a.example.com", "DELETE"),
            "403",
            "{name}"
        );
        assert_eq!(
            decide(c, "https://b.example.com", "GET"),
            "forward",
            "{name}"
        );
    }
}
