//! `check_manifest` and `parse_manifests`: every problem of a document in one run, with codes and
//! field paths, and multi-document files read document by document.

use corsair_policy::{Checked, Severity, check_manifest, check_spec, parse_manifests};
use serde_json::{Value, json};

/// (code, path) of every finding, in order.
fn findings(doc: &Value) -> Vec<(String, String)> {
    match check_manifest(doc) {
        Checked::Policy { report, .. } => report
            .findings
            .iter()
            .map(|f| (f.code.to_owned(), f.path.clone()))
            .collect(),
        Checked::Skipped { kind, .. } => panic!("skipped a {kind:?}"),
    }
}

fn policy(spec: Value) -> Value {
    json!({"apiVersion": "corsair.dev/v1alpha1", "kind": "CorsPolicy", "metadata": {"name": "p"}, "spec": spec})
}

fn pair(code: &str, path: &str) -> (String, String) {
    (code.to_owned(), path.to_owned())
}

#[test]
fn an_unknown_field_does_not_hide_the_other_problems() {
    let doc = policy(json!({
        "allowMethod": ["GET"],
        "allowOrigins": ["https://a.test/", "http://b.test"],
        "maxAge": "soon",
        "routes": [
            {"pathPrefix": "api", "allowHeader": ["x"]},
            {"allowCredentials": true},
        ],
    }));
    let got = findings(&doc);
    for want in [
        pair("unknown-field", "spec.allowMethod"),
        pair("invalid-type", "spec.maxAge"),
        pair("invalid-origin", "spec.allowOrigins[0]"),
        pair("unknown-field", "spec.routes[0].allowHeader"),
        pair("invalid-path-prefix", "spec.routes[0].pathPrefix"),
        pair("missing-field", "spec.routes[1].pathPrefix"),
    ] {
        assert!(got.contains(&want), "no {want:?} in {got:?}");
    }
    // The placeholder of the route without a prefix is not reported on.
    assert!(
        !got.iter()
            .any(|(_, path)| path.starts_with("spec.routes[1]")
                && path != "spec.routes[1].pathPrefix"),
        "{got:?}"
    );
}

#[test]
fn unknown_fields_get_a_did_you_mean() {
    let Checked::Policy { report, .. } = check_manifest(&policy(
        json!({"allowOrigins": ["https://a.test"], "allowMethod": ["GET"], "replicas": 3}),
    )) else {
        panic!("not checked")
    };
    let typo = &report.findings[0];
    assert_eq!(
        (typo.code, typo.path.as_str()),
        ("unknown-field", "spec.allowMethod")
    );
    assert!(
        typo.message.contains("did you mean \"allowMethods\""),
        "{typo}"
    );
    let other = &report.findings[1];
    assert_eq!(other.path, "spec.replicas");
    assert!(!other.message.contains("did you mean"), "{other}");
    assert!(
        other.message.contains("allowOrigins"),
        "lists the fields: {other}"
    );
}

#[test]
fn mode_off_read_as_a_boolean_says_what_to_write() {
    // What kubectl (YAML 1.1) makes of an unquoted `mode: Off`.
    let manifests = parse_manifests(
        "apiVersion: corsair.dev/v1alpha1\nkind: CorsPolicy\nspec:\n  allowOrigins: [https://a.test]\n  mode: Off\n  routes:\n  - pathPrefix: /a\n    mode: \"Off\"\n",
    );
    let doc = manifests[0].value.as_ref().expect("parses");
    assert_eq!(doc["spec"]["mode"], json!(false));
    let Checked::Policy { report, .. } = check_manifest(doc) else {
        panic!("not checked")
    };
    let codes: Vec<_> = report
        .findings
        .iter()
        .map(|f| (f.code, f.path.as_str()))
        .collect();
    assert_eq!(
        codes,
        [
            ("mode-is-boolean", "spec.mode"),
            ("invalid-value", "spec.routes[0].mode")
        ]
    );
    for f in &report.findings {
        assert!(f.message.contains("mode: Disabled"), "{f}");
    }
}

#[test]
fn a_spec_without_problems_has_no_findings_and_is_returned() {
    let (spec, report) = check_spec(&json!({
        "allowOrigins": ["https://a.test"],
        "mode": "Disabled",
        "routes": [{"pathPrefix": "/x", "mode": "DryRun"}],
    }));
    assert!(report.findings.is_empty(), "{:?}", report.findings);
    let spec = spec.expect("spec read");
    assert_eq!(spec.mode, Some(corsair_policy::Mode::Disabled));
    assert_eq!(spec.routes[0].path_prefix, "/x");
}

#[test]
fn other_kinds_are_skipped_and_a_wrong_version_is_an_error() {
    let deployment =
        json!({"apiVersion": "apps/v1", "kind": "Deployment", "spec": {"replicas": 1}});
    assert!(matches!(
        check_manifest(&deployment),
        Checked::Skipped { kind: Some(k), .. } if k == "Deployment"
    ));
    let mut doc = policy(json!({"allowOrigins": ["https://a.test"]}));
    doc["apiVersion"] = json!("corsair.dev/v1");
    assert_eq!(findings(&doc), [pair("invalid-api-version", "apiVersion")]);
    let no_spec = json!({"apiVersion": "corsair.dev/v1alpha1", "kind": "CorsPolicy"});
    assert_eq!(findings(&no_spec), [pair("missing-field", "spec")]);
}

#[test]
fn every_finding_is_an_error_or_a_lint_as_validate_says() {
    let doc = policy(json!({"allowOrigins": ["https://a.test", "http://b.test"], "bogus": 1}));
    let Checked::Policy { report, .. } = check_manifest(&doc) else {
        panic!("not checked")
    };
    let severities: Vec<_> = report
        .findings
        .iter()
        .map(|f| (f.code, f.severity))
        .collect();
    assert_eq!(
        severities,
        [
            ("unknown-field", Severity::Error),
            ("mixed-scheme", Severity::Warning)
        ]
    );
}

#[test]
fn multi_document_files_are_read_document_by_document() {
    let text = "\
apiVersion: corsair.dev/v1alpha1
kind: CorsPolicy
metadata: {name: a}
spec: {allowOrigins: [https://a.test]}
---
# comments only: an empty document
---
kind: CorsPolicy
spec: {allowOrigins: [https://a.test
---
apiVersion: v1
kind: ConfigMap
";
    let docs = parse_manifests(text);
    let lines: Vec<usize> = docs.iter().map(|d| d.line).collect();
    assert_eq!(lines, [1, 7, 10]);
    assert_eq!(
        docs[0].value.as_ref().expect("first parses")["metadata"]["name"],
        "a"
    );
    let err = docs[1]
        .value
        .as_ref()
        .expect_err("second is malformed")
        .to_string();
    // The position is the file's, not the document's.
    assert!(err.contains("line 9"), "{err}");
    assert_eq!(
        docs[2].value.as_ref().expect("third parses")["kind"],
        "ConfigMap"
    );
}

#[test]
fn a_json_file_is_one_document() {
    let docs = parse_manifests(r#" {"kind": "CorsPolicy", "spec": {}}"#);
    assert_eq!(docs.len(), 1);
    assert_eq!(
        docs[0].value.as_ref().expect("parses")["kind"],
        "CorsPolicy"
    );
}

/// Every field and list item is found at the line and column it is written at, counted from the
/// start of the file; a path that is not written (a default) falls back to its nearest ancestor.
#[test]
fn positions_point_at_where_each_field_is_written() {
    let text = "\
apiVersion: v1
kind: ConfigMap
---
apiVersion: corsair.dev/v1alpha1
kind: CorsPolicy
spec:
  allowOrigins:
    - https://a.example.com
    - \"https://b.example.com\"
  routes:
  - pathPrefix: /api
    allowMethod: [GET, PUT]
  mode: Enforce
";
    let docs = parse_manifests(text);
    assert_eq!(docs.len(), 2);
    let at = |path: &str| docs[1].positions.of(path);
    // The expected places are read off the text itself: (line, 1-based column of the needle).
    let place = |line: usize, needle: &str| {
        let l = text.lines().nth(line - 1).expect("line exists");
        Some((
            line as u64,
            l.find(needle).expect("needle on line") as u64 + 1,
        ))
    };
    assert_eq!(at("spec"), place(6, "spec"));
    assert_eq!(at("spec.allowOrigins[0]"), place(8, "https"));
    assert_eq!(at("spec.allowOrigins[1]"), place(9, "\""));
    assert_eq!(at("spec.routes[0]"), place(11, "pathPrefix"));
    assert_eq!(at("spec.routes[0].allowMethod"), place(12, "allowMethod"));
    assert_eq!(at("spec.routes[0].allowMethod[1]"), place(12, "PUT"));
    assert_eq!(at("spec.mode"), place(13, "mode"));
    // Not written: the nearest written ancestor.
    assert_eq!(at("spec.routes[0].maxAge"), at("spec.routes[0]"));
    assert_eq!(at("status.conditions[0]"), None);
    // The value is the same as without positions.
    assert_eq!(
        docs[1].value.as_ref().expect("parses")["spec"]["routes"][0]["allowMethod"][1],
        "PUT"
    );
    // The first document has its own positions, and JSON has none.
    assert_eq!(docs[0].positions.of("kind"), Some((2, 1)));
    assert_eq!(
        parse_manifests(r#"{"kind": "CorsPolicy"}"#)[0]
            .positions
            .of("kind"),
        None
    );
}

/// What the CRD's schema refuses by size, and a name it refuses, are errors here too: a policy
/// `corsair check` passes is one the API server takes.
#[test]
fn the_crd_bounds_are_checked() {
    let origins = |n: usize| -> Vec<String> {
        (0..n)
            .map(|i| format!("https://a{i}.example.com"))
            .collect()
    };
    let bounded = |doc: &Value| -> Vec<(String, String)> {
        findings(doc)
            .into_iter()
            .filter(|(code, _)| code == "too-many-items" || code == "too-long")
            .collect()
    };
    // At the bounds: nothing.
    let at = policy(json!({
        "allowOrigins": origins(128),
        "allowOriginRegexes": [format!("https://{}\\.example\\.com", "a".repeat(490))],
        "routes": (0..64).map(|i| json!({"pathPrefix": format!("/r{i}")})).collect::<Vec<_>>(),
    }));
    assert_eq!(bounded(&at), Vec::<(String, String)>::new());
    // One past each: each named by its path.
    let past = policy(json!({
        "allowOrigins": origins(129),
        "allowOriginRegexes": [format!("https://{}\\.example\\.com", "a".repeat(491))],
        "routes": (0..65)
            .map(|i| json!({"pathPrefix": format!("/r{i}"), "allowHeaders": if i == 3 {
                (0..129).map(|h| format!("x-h{h}")).collect::<Vec<_>>()
            } else {
                vec!["x-a".to_owned()]
            }}))
            .collect::<Vec<_>>(),
    }));
    assert_eq!(
        bounded(&past),
        [
            pair("too-long", "spec.allowOriginRegexes[0]"),
            pair("too-many-items", "spec.allowOrigins"),
            pair("too-many-items", "spec.routes"),
            pair("too-many-items", "spec.routes[3].allowHeaders"),
        ]
    );
    let Checked::Policy { report, .. } = check_manifest(&past) else {
        panic!("skipped")
    };
    let message = report
        .findings
        .iter()
        .find(|f| f.path == "spec.allowOrigins")
        .map(ToString::to_string)
        .unwrap_or_default();
    assert!(
        message.contains("129 items") && message.contains("at most 128"),
        "{message}"
    );
    // A name the CRD refuses: too long, or not a DNS subdomain.
    for name in [
        "a".repeat(64),
        "Web".to_owned(),
        "web_api".to_owned(),
        "a.-b".to_owned(),
    ] {
        let mut doc = policy(json!({"allowOrigins": ["https://a.example.com"]}));
        doc["metadata"]["name"] = json!(name);
        assert_eq!(
            findings(&doc),
            [pair("invalid-name", "metadata.name")],
            "{name}"
        );
    }
    let mut doc = policy(json!({"allowOrigins": ["https://a.example.com"]}));
    doc["metadata"]["name"] = json!("a".repeat(63));
    assert_eq!(findings(&doc), Vec::<(String, String)>::new());
}

/// A regex error is one line, as every finding is (regex writes syntax errors over three), and
/// still says what and where.
#[test]
fn a_regex_error_is_one_line() {
    let text = said(
        &policy(json!({"allowOriginRegexes": ["https://(a|b"]})),
        "invalid-regex",
    );
    assert!(!text.contains('\n'), "{text}");
    assert!(
        text.contains("unclosed group") && text.contains("(at character 9)"),
        "{text}"
    );
    // A pattern that starts with `^`, as anchored origin regexes do: the caret under the fault
    // is found, not the pattern's own first character.
    let text = said(
        &policy(json!({"allowOriginRegexes": ["^https://(app"]})),
        "invalid-regex",
    );
    assert!(text.contains("(at character 10)"), "{text}");
}

/// The first finding of `doc` with `code`, as it is printed; the test fails without one.
fn said(doc: &Value, code: &str) -> String {
    let Checked::Policy { report, .. } = check_manifest(doc) else {
        panic!("skipped")
    };
    report
        .findings
        .iter()
        .find(|f| f.code == code)
        .map(ToString::to_string)
        .unwrap_or_else(|| panic!("no {code} in {report:?}"))
}

/// A key written twice is named with its line, without the YAML library's advice about its own
/// options.
#[test]
fn a_key_written_twice_is_named() {
    let text = "apiVersion: corsair.dev/v1alpha1\nkind: CorsPolicy\nmetadata: {name: a}\nspec:\n  allowOrigins: [\"https://a.example.com\"]\n  allowOrigins: [\"https://b.example.com\"]\n";
    let manifests = parse_manifests(text);
    assert_eq!(manifests.len(), 1);
    let Err(e) = &manifests[0].value else {
        panic!("a duplicate key was accepted")
    };
    let message = e.to_string();
    assert_eq!(
        message,
        "the key allowOrigins is written twice in one mapping at line 6, column 3"
    );
}

/// A `%YAML` directive (or a comment) before a document's `---` belongs to that document, as in
/// any YAML stream; positions after it stay right.
#[test]
fn a_directive_before_the_marker_starts_the_document() {
    let text = "%YAML 1.2\n---\napiVersion: corsair.dev/v1alpha1\nkind: CorsPolicy\nmetadata: {name: a}\nspec: {allowOrigins: [\"https://a.example.com\"], allowMethod: [GET]}\n---\n# b\napiVersion: v1\nkind: ConfigMap\n";
    let manifests = parse_manifests(text);
    assert_eq!(manifests.len(), 2, "{manifests:?}");
    assert!(manifests.iter().all(|m| m.value.is_ok()), "{manifests:?}");
    // `allowMethod` is written on line 6, column 49.
    assert_eq!(
        manifests[0].positions.of("spec.allowMethod"),
        Some((6, 49)),
        "{:?}",
        manifests[0].positions
    );
    assert_eq!(manifests[1].line, 7);
}
