//! Validation errors, lints and loading, one table row per rule of issue 2: each names the field
//! path, the stable code and what the message must say.

use corsair_policy::{CorsPolicySpec, Engine, LoadError, Severity, load_document, validate};

fn spec(yaml: &str) -> CorsPolicySpec {
    match serde_saphyr::from_str(yaml) {
        Ok(spec) => spec,
        Err(e) => panic!("test spec does not parse: {e}\n{yaml}"),
    }
}

struct Row {
    rule: &'static str,
    spec: &'static str,
    severity: Severity,
    path: &'static str,
    code: &'static str,
    /// Every one of these must appear in the message.
    says: &'static [&'static str],
}

use Severity::{Error, Warning};

fn rows() -> Vec<Row> {
    vec![
        Row {
            rule: "an origin with a path",
            spec: "allowOrigins: [https://a.test, https://b.test, \"https://app.example.com/\"]",
            severity: Error,
            path: "spec.allowOrigins[2]",
            code: "invalid-origin",
            says: &[
                "\"https://app.example.com/\"",
                "is not an origin: it has a path",
            ],
        },
        Row {
            rule: "an origin with a query",
            spec: "allowOrigins: [\"https://a.test?x=1\"]",
            severity: Error,
            path: "spec.allowOrigins[0]",
            code: "invalid-origin",
            says: &["https://a.test?x=1", "query"],
        },
        Row {
            rule: "an origin with a fragment",
            spec: "allowOrigins: [\"https://a.test#x\"]",
            severity: Error,
            path: "spec.allowOrigins[0]",
            code: "invalid-origin",
            says: &["fragment"],
        },
        Row {
            rule: "an origin with userinfo",
            spec: "allowOrigins: [\"https://me@a.test\"]",
            severity: Error,
            path: "spec.allowOrigins[0]",
            code: "invalid-origin",
            says: &["userinfo"],
        },
        Row {
            rule: "an origin with the scheme's default port",
            spec: "allowOrigins: [\"https://x.test:443\"]",
            severity: Error,
            path: "spec.allowOrigins[0]",
            code: "invalid-origin",
            says: &["https://x.test:443", "default port"],
        },
        Row {
            rule: "an origin with an uppercase host",
            spec: "allowOrigins: [\"https://App.example.com\"]",
            severity: Error,
            path: "spec.allowOrigins[0]",
            code: "invalid-origin",
            says: &["https://App.example.com", "uppercase"],
        },
        Row {
            rule: "an origin without a scheme",
            spec: "allowOrigins: [app.example.com]",
            severity: Error,
            path: "spec.allowOrigins[0]",
            code: "invalid-origin",
            says: &["no scheme"],
        },
        Row {
            rule: "a wildcard that is not the leftmost labels",
            spec: "allowOrigins: [\"https://app.*.example.com\"]",
            severity: Error,
            path: "spec.allowOrigins[0]",
            code: "invalid-origin",
            says: &["https://app.*.example.com", "leftmost"],
        },
        Row {
            rule: "a wildcard inside a label",
            spec: "allowOrigins: [\"https://app-*.example.com\"]",
            severity: Error,
            path: "spec.allowOrigins[0]",
            code: "invalid-origin",
            says: &["leftmost"],
        },
        Row {
            rule: "`*` together with credentials",
            spec: "allowOrigins: [\"*\"]\nallowCredentials: true",
            severity: Error,
            path: "spec.allowOrigins[0]",
            code: "wildcard-origin-with-credentials",
            says: &["\"*\"", "allowCredentials"],
        },
        Row {
            rule: "`*` inherited by a route that turns credentials on",
            spec: "allowOrigins: [\"*\"]\nroutes:\n- pathPrefix: /a\n  allowCredentials: true",
            severity: Error,
            path: "spec.routes[0].allowCredentials",
            code: "wildcard-origin-with-credentials",
            says: &["\"*\""],
        },
        Row {
            rule: "an invalid regex",
            spec: "allowOriginRegexes: ['https://(a']",
            severity: Error,
            path: "spec.allowOriginRegexes[0]",
            code: "invalid-regex",
            says: &["https://(a", "not a valid regex"],
        },
        Row {
            rule: "a regex that would escape its anchors",
            spec: "allowOriginRegexes: ['https://a\\.test)|(.*']",
            severity: Error,
            path: "spec.allowOriginRegexes[0]",
            code: "invalid-regex",
            says: &["not a valid regex"],
        },
        Row {
            rule: "no origin source at all",
            spec: "allowMethods: [GET]",
            severity: Error,
            path: "spec.allowOrigins",
            code: "no-origins",
            says: &["allowOrigins and allowOriginRegexes are both empty"],
        },
        Row {
            rule: "a route with no origin source, even when the top level has routes",
            spec: "routes:\n- pathPrefix: /a\n  allowMethods: [GET]",
            severity: Error,
            path: "spec.routes[0].allowOrigins",
            code: "no-origins",
            says: &["both empty"],
        },
        Row {
            rule: "a route that empties the inherited origins",
            spec: "allowOrigins: [https://a.test]\nroutes:\n- pathPrefix: /a\n  allowOrigins: []",
            severity: Error,
            path: "spec.routes[0].allowOrigins",
            code: "no-origins",
            says: &["both empty"],
        },
        Row {
            rule: "preflightStatus other than 200 or 204",
            spec: "allowOrigins: [https://a.test]\npreflightStatus: 201",
            severity: Error,
            path: "spec.preflightStatus",
            code: "invalid-preflight-status",
            says: &["201", "200", "204"],
        },
        Row {
            rule: "an empty method",
            spec: "allowOrigins: [https://a.test]\nallowMethods: [GET, \"\"]",
            severity: Error,
            path: "spec.allowMethods[1]",
            code: "invalid-method",
            says: &["is empty"],
        },
        Row {
            rule: "a method that is not a token",
            spec: "allowOrigins: [https://a.test]\nallowMethods: [\"GET POST\"]",
            severity: Error,
            path: "spec.allowMethods[0]",
            code: "invalid-method",
            says: &["\"GET POST\"", "not a token"],
        },
        Row {
            rule: "a header name that is not a token",
            spec: "allowOrigins: [https://a.test]\nroutes:\n- pathPrefix: /a\n  allowHeaders: [\"X-A:\"]",
            severity: Error,
            path: "spec.routes[0].allowHeaders[0]",
            code: "invalid-header-name",
            says: &["\"X-A:\""],
        },
        Row {
            rule: "an empty exposed header name",
            spec: "allowOrigins: [https://a.test]\nexposeHeaders: [\"\"]",
            severity: Error,
            path: "spec.exposeHeaders[0]",
            code: "invalid-header-name",
            says: &["is empty"],
        },
        Row {
            rule: "two routes with the same pathPrefix",
            spec: "allowOrigins: [https://a.test]\nroutes:\n- pathPrefix: /api\n- pathPrefix: /api/",
            severity: Error,
            path: "spec.routes[1].pathPrefix",
            code: "duplicate-route",
            says: &["\"/api/\"", "spec.routes[0]"],
        },
        Row {
            rule: "a pathPrefix not starting with /",
            spec: "allowOrigins: [https://a.test]\nroutes:\n- pathPrefix: api",
            severity: Error,
            path: "spec.routes[0].pathPrefix",
            code: "invalid-path-prefix",
            says: &["\"api\"", "must start with \"/\""],
        },
        Row {
            rule: "lint: null origin allowed",
            spec: "allowOrigins: [https://a.test]\nallowNullOrigin: true",
            severity: Warning,
            path: "spec.allowNullOrigin",
            code: "null-origin",
            says: &["sandboxed"],
        },
        Row {
            rule: "lint: http origin beside https ones",
            spec: "allowOrigins: [https://a.test, http://b.test]",
            severity: Warning,
            path: "spec.allowOrigins[1]",
            code: "mixed-scheme",
            says: &["\"http://b.test\"", "plain http"],
        },
        Row {
            rule: "lint: wildcard over a public suffix",
            spec: "allowOrigins: [\"https://*.co.uk\"]",
            severity: Warning,
            path: "spec.allowOrigins[0]",
            code: "public-suffix-wildcard",
            says: &["\"https://*.co.uk\"", "public suffix", "co.uk"],
        },
        Row {
            rule: "lint: wildcard over a TLD that anyone can register under",
            spec: "allowOrigins: [\"https://*.onion\"]",
            severity: Warning,
            path: "spec.allowOrigins[0]",
            code: "public-suffix-wildcard",
            says: &["onion"],
        },
        Row {
            rule: "lint: wildcard over a third-party hosting domain's parent",
            spec: "allowOrigins: [\"https://*.amazonaws.com\"]",
            severity: Warning,
            path: "spec.allowOrigins[0]",
            code: "third-party-hosting",
            says: &["\"https://*.amazonaws.com\"", "anyone can publish"],
        },
        Row {
            rule: "lint: regex over a third-party hosting domain",
            spec: "allowOriginRegexes: ['https://[a-z0-9-]+\\.herokuapp\\.com']",
            severity: Warning,
            path: "spec.allowOriginRegexes[0]",
            code: "third-party-hosting",
            says: &["herokuapp.com"],
        },
        Row {
            rule: "lint: regex that ends in .*",
            spec: "allowOriginRegexes: ['https://app\\.example\\.com.*']",
            severity: Warning,
            path: "spec.allowOriginRegexes[0]",
            code: "regex-open-end",
            says: &["matches anything", "app.example.com.evil.test"],
        },
        Row {
            rule: "lint: unescaped dot in a regex host",
            spec: "allowOriginRegexes: ['https://app.example.com']",
            severity: Warning,
            path: "spec.allowOriginRegexes[0]",
            code: "regex-unescaped-dot",
            says: &["any character", "write `\\.`"],
        },
        Row {
            rule: "lint: `*` in exposeHeaders with credentials",
            spec: "allowOrigins: [https://a.test]\nallowCredentials: true\nexposeHeaders: [\"*\"]",
            severity: Warning,
            path: "spec.exposeHeaders",
            code: "expose-wildcard-with-credentials",
            says: &["literally"],
        },
        Row {
            rule: "lint: maxAge above what Chromium honours",
            spec: "allowOrigins: [https://a.test]\nmaxAge: 86400",
            severity: Warning,
            path: "spec.maxAge",
            code: "max-age-above-browser-cap",
            says: &["86400", "7200"],
        },
    ]
}

#[test]
fn every_validation_rule_and_lint() {
    let mut failures = Vec::new();
    for row in rows() {
        let report = validate(&spec(row.spec));
        let found = report
            .findings
            .iter()
            .find(|f| f.path == row.path && f.code == row.code && f.severity == row.severity);
        match found {
            None => failures.push(format!(
                "{}: no {:?} {} at {}; got {:?}",
                row.rule, row.severity, row.code, row.path, report.findings
            )),
            Some(f) => {
                let shown = f.to_string();
                for s in row.says {
                    if !shown.contains(s) {
                        failures.push(format!("{}: {shown:?} does not say {s:?}", row.rule));
                    }
                }
                if !shown.starts_with(&format!("{}: ", row.path)) {
                    failures.push(format!(
                        "{}: {shown:?} does not start with the path",
                        row.rule
                    ));
                }
            }
        }
        // An error refuses the policy; warnings alone do not.
        let compiled = Engine::compile(&spec(row.spec));
        if (row.severity == Error) == compiled.is_ok() {
            failures.push(format!(
                "{}: compile gave {:?}",
                row.rule,
                compiled.map(|(_, r)| r)
            ));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

/// Policies that are fine produce no finding at all: lints do not fire on good practice.
#[test]
fn good_policies_have_no_findings() {
    let good = [
        "allowOrigins: [https://a.test, \"https://*.example.com\", \"http://localhost:3000\"]",
        "allowOriginRegexes: ['https://pr-[0-9]+\\.preview\\.example\\.com', 'https://.*\\.example\\.org']",
        "allowOrigins: [\"*\"]\nallowMethods: [\"*\"]\nallowHeaders: [\"*\", Authorization]\nmaxAge: 7200",
        "routes:\n- pathPrefix: /\n  allowOrigins: [https://a.test]\n- pathPrefix: /a\n  allowOrigins: [\"https://[::1]:8443\", \"http://127.0.0.1:8080\"]",
        "allowOrigins: [https://a.test]\npreflightStatus: 204\nallowCredentials: true",
        // Special-use names (RFC 6761, 6762, 8375, ICANN's .internal) are nobody's registrations.
        "allowOrigins: [\"http://*.localhost:4000\", \"https://*.test\", \"https://*.internal\", \"https://*.example\", \"https://*.home.arpa\", \"https://*.invalid\"]",
        "allowOrigins: [\"http://*.local\", \"http://*.dev.internal:8080\"]",
    ];
    for yaml in good {
        let report = validate(&spec(yaml));
        assert!(report.findings.is_empty(), "{yaml}: {:?}", report.findings);
    }
}

#[test]
fn load_accepts_yaml_and_json_manifests_alike() {
    let yaml = "apiVersion: corsair.dev/v1alpha1\nkind: CorsPolicy\nmetadata:\n  name: p\n  generation: 3\nspec:\n  allowOrigins: [https://a.test]\n  routes:\n  - pathPrefix: /x\n    mode: DryRun\n";
    let json = r#"  {"apiVersion":"corsair.dev/v1alpha1","kind":"CorsPolicy","metadata":{"name":"p","generation":3},
        "spec":{"allowOrigins":["https://a.test"],"routes":[{"pathPrefix":"/x","mode":"DryRun"}]}}"#;
    let from_yaml = load_document(yaml).expect("yaml loads");
    let from_json = load_document(json).expect("json loads");
    assert_eq!(from_yaml, from_json);
    assert_eq!(from_yaml.metadata.generation, Some(3));
    assert_eq!(
        from_yaml.spec.routes[0].mode,
        Some(corsair_policy::Mode::DryRun)
    );
}

#[test]
fn load_errors_name_the_field() {
    let head = "apiVersion: corsair.dev/v1alpha1\nkind: CorsPolicy\n";
    let cases: Vec<(String, &[&str])> = vec![
        (
            format!("{head}spec:\n  routes:\n  - pathPrefix: /a\n    allowOrigin: [https://a.test]\n"),
            &["spec.routes[0].allowOrigin", "unknown field", "line 6, column 5"],
        ),
        (format!("{head}spec:\n  maxAge: soon\n"), &["spec.maxAge", "line 4, column 11"]),
        (format!("{head}spec:\n  mode: Enforcing\n"), &["spec.mode", "Enforcing", "line 4"]),
        (format!("{head}spec:\n  mode: Off\n"), &["spec.mode", "`mode: Disabled`"]),
        (format!("{head}spec:\n  maxAge: -1\n"), &["spec.maxAge", "line 4"]),
        (format!("{head}metadata: {{}}\n"), &["spec", "line 3"]),
        (format!("{head}spec:\n  allowOrigins: [\"https://a.test\"\n"), &["spec.allowOrigins", "line 4, column 17"]),
        (
            r#"{"apiVersion":"corsair.dev/v1alpha1","kind":"CorsPolicy","spec":{"allowOrigins":["https://a.test"],"bogus":1}}"#.to_owned(),
            &["spec.bogus", "unknown field"],
        ),
        (r#"{"apiVersion": "#.to_owned(), &["EOF"]),
        ("spec: [unclosed".to_owned(), &["spec"]),
    ];
    for (text, says) in cases {
        match load_document(&text) {
            Ok(doc) => panic!("{text:?} loaded: {doc:?}"),
            Err(e) => {
                let shown = e.to_string();
                for s in says {
                    assert!(shown.contains(s), "{text:?}: {shown:?} does not say {s:?}");
                }
            }
        }
    }
}

#[test]
fn load_refuses_other_kinds_and_versions() {
    let wrong_version = "apiVersion: corsair.dev/v1\nkind: CorsPolicy\nspec: {}\n";
    assert!(
        matches!(load_document(wrong_version), Err(LoadError::ApiVersion(v)) if v == "corsair.dev/v1")
    );
    let wrong_kind = "apiVersion: corsair.dev/v1alpha1\nkind: Deployment\nspec:\n  replicas: 3\n";
    let err = load_document(wrong_kind).expect_err("not a CorsPolicy");
    assert!(
        matches!(&err, LoadError::Kind(k) if k == "Deployment"),
        "{err:?}"
    );
    assert_eq!(
        err.to_string(),
        "kind is \"Deployment\", expected \"CorsPolicy\""
    );
}

/// Every `deploy/examples/*-policy.yaml` loads, validates without any finding and compiles.
#[test]
fn the_example_policies_are_valid() {
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/../../deploy/examples");
    let mut checked = 0;
    let entries = std::fs::read_dir(dir).unwrap_or_else(|e| panic!("{dir}: {e}"));
    for entry in entries {
        let path = entry.expect("readable directory").path();
        let name = path
            .file_name()
            .and_then(|n| n.to_str())
            .unwrap_or_default();
        if !name.ends_with("-policy.yaml") {
            continue;
        }
        let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{name}: {e}"));
        let doc = load_document(&text).unwrap_or_else(|e| panic!("{name}: {e}"));
        let report = validate(&doc.spec);
        // Examples are what users copy: not even a warning.
        assert!(report.findings.is_empty(), "{name}: {:?}", report.findings);
        assert!(Engine::compile(&doc.spec).is_ok(), "{name}");
        checked += 1;
    }
    assert!(
        checked >= 3,
        "only {checked} example policies found in {dir}"
    );
}
