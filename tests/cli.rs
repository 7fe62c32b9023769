//! Black-box tests of `corsair check` and `corsair explain`.

use std::path::Path;
use std::process::{Command, Output};

fn corsair(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_corsair"))
        .args(args)
        .output()
        .expect("the corsair binary runs")
}

fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn write(dir: &Path, name: &str, text: &str) -> String {
    let path = dir.join(name);
    std::fs::write(&path, text).expect("write policy");
    path.to_string_lossy().into_owned()
}

const POLICY: &str = r#"
apiVersion: corsair.dev/v1alpha1
kind: CorsPolicy
metadata:
  name: api
spec:
  allowOrigins: ["https://app.example.com", "https://*.example.org"]
  allowMethods: ["GET", "POST", "PUT"]
  allowHeaders: ["content-type", "x-request-id"]
  exposeHeaders: ["x-request-id"]
  allowCredentials: true
  maxAge: 600
  routes:
    - pathPrefix: /public
      allowOrigins: ["*"]
      allowCredentials: false
"#;

#[test]
fn check_accepts_every_shipped_example() {
    let examples: Vec<String> =
        std::fs::read_dir(concat!(env!("CARGO_MANIFEST_DIR"), "/deploy/examples"))
            .expect("deploy/examples exists")
            .filter_map(|e| e.ok())
            .map(|e| e.path())
            .filter(|p| p.to_string_lossy().ends_with("-policy.yaml"))
            .map(|p| p.to_string_lossy().into_owned())
            .collect();
    assert!(
        !examples.is_empty(),
        "no example CorsPolicy in deploy/examples"
    );
    let args: Vec<&str> = std::iter::once("check")
        .chain(examples.iter().map(String::as_str))
        .collect();
    let out = corsair(&args);
    assert!(out.status.success(), "{}", stdout(&out));
    assert!(stdout(&out).contains(&format!("{} file(s) checked: 0 error(s)", examples.len())));
}

#[test]
fn check_names_the_field_and_the_value_and_fails() {
    let dir = tempfile::tempdir().unwrap();
    let bad = write(
        dir.path(),
        "bad.yaml",
        r#"
apiVersion: corsair.dev/v1alpha1
kind: CorsPolicy
metadata: {name: bad}
spec:
  allowOrigins: ["https://ok.example.com", "https://app.example.com/"]
"#,
    );
    let good = write(dir.path(), "good.yaml", POLICY);
    let out = corsair(&["check", &good, &bad]);
    assert_eq!(out.status.code(), Some(1));
    let text = stdout(&out);
    let line = text
        .lines()
        .find(|l| l.contains("spec.allowOrigins[1]"))
        .unwrap_or_else(|| panic!("no line names spec.allowOrigins[1]:\n{text}"));
    assert!(line.starts_with(&bad), "{line}");
    assert!(
        line.contains("https://app.example.com/") && line.contains("path"),
        "{line}"
    );
    assert!(
        !text
            .lines()
            .any(|l| l.starts_with(&good) && l.contains("error")),
        "{text}"
    );
}

#[test]
fn check_reports_unknown_fields_and_wildcard_with_credentials() {
    let dir = tempfile::tempdir().unwrap();
    let typo = write(
        dir.path(),
        "typo.yaml",
        "apiVersion: corsair.dev/v1alpha1\nkind: CorsPolicy\nmetadata: {name: t}\nspec:\n  allowOrigin: [\"https://a.example.com\"]\n",
    );
    let star = write(
        dir.path(),
        "star.yaml",
        "apiVersion: corsair.dev/v1alpha1\nkind: CorsPolicy\nmetadata: {name: s}\nspec:\n  allowOrigins: [\"*\"]\n  allowCredentials: true\n",
    );
    let out = corsair(&["check", &typo, &star]);
    assert_eq!(out.status.code(), Some(1));
    let text = stdout(&out);
    assert!(
        text.lines()
            .any(|l| l.starts_with(&typo) && l.contains("allowOrigin")),
        "{text}"
    );
    assert!(
        text.lines()
            .any(|l| l.starts_with(&star) && l.contains("allowCredentials") && l.contains('*')),
        "{text}"
    );
}

#[test]
fn warnings_fail_only_with_deny_warnings() {
    let dir = tempfile::tempdir().unwrap();
    let mixed = write(
        dir.path(),
        "mixed.yaml",
        "apiVersion: corsair.dev/v1alpha1\nkind: CorsPolicy\nmetadata: {name: m}\nspec:\n  allowOrigins: [\"https://a.example.com\", \"http://a.example.com\"]\n",
    );
    let out = corsair(&["check", &mixed]);
    assert!(out.status.success(), "{}", stdout(&out));
    assert!(stdout(&out).contains("warning"), "{}", stdout(&out));
    let out = corsair(&["check", "--deny-warnings", &mixed]);
    assert_eq!(out.status.code(), Some(1));
}

/// A multi-document file through standard input: the CorsPolicies are checked, each with every
/// one of its problems, the other documents are skipped with a note.
#[test]
fn check_reads_every_document_from_stdin() {
    use std::io::Write;
    use std::process::Stdio;
    let input = "\
apiVersion: apps/v1
kind: Deployment
metadata: {name: web}
spec: {replicas: 1}
---
apiVersion: corsair.dev/v1alpha1
kind: CorsPolicy
metadata: {name: typos}
spec:
  allowMethod: [GET]
  allowOrigins: [\"https://a.example.com/\"]
  mode: Off
---
apiVersion: corsair.dev/v1alpha1
kind: CorsPolicy
metadata: {name: local}
spec:
  allowOrigins: [\"http://*.localhost:4000\", \"https://*.test\"]
";
    let mut child = Command::new(env!("CARGO_BIN_EXE_corsair"))
        .args(["check", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("the corsair binary runs");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(input.as_bytes())
        .expect("write stdin");
    let out = child.wait_with_output().expect("corsair check exits");
    let text = stdout(&out);
    assert_eq!(out.status.code(), Some(1), "{text}");
    let line = |needle: &str| {
        text.lines()
            .find(|l| l.contains(needle))
            .unwrap_or_else(|| panic!("no line with {needle:?}:\n{text}"))
            .to_owned()
    };
    assert!(
        line("skipped").starts_with("<stdin>:1: note: skipped a Deployment"),
        "{text}"
    );
    // Each finding points at the line and column where its field is written.
    let input_line = |n: usize| input.lines().nth(n - 1).unwrap_or_default();
    let typo = line("spec.allowMethod");
    assert_eq!(input_line(10).find("allowMethod"), Some(2));
    assert!(
        typo.starts_with("<stdin>:10:3 (CorsPolicy typos): error[unknown-field]")
            && typo.contains("did you mean \"allowMethods\""),
        "{typo}"
    );
    let origin = line("spec.allowOrigins[0]");
    let column = input_line(11).find('"').map_or(0, |c| c + 1);
    assert!(
        origin.starts_with(&format!("<stdin>:11:{column} "))
            && origin.contains("error[invalid-origin]"),
        "{origin}"
    );
    assert!(
        line("spec.mode").contains("error[mode-is-boolean]")
            && line("spec.mode").contains("mode: Disabled"),
        "{text}"
    );
    // Special-use names are nobody's registrations: no public-suffix warning for them.
    assert!(!text.contains("CorsPolicy local"), "{text}");
    assert!(
        text.contains("1 file(s) checked: 3 error(s), 0 warning(s) in 2 CorsPolicy document(s); 1 other document(s) skipped"),
        "{text}"
    );
}

#[test]
fn check_of_a_file_without_any_policy_fails() {
    let dir = tempfile::tempdir().unwrap();
    let other = write(
        dir.path(),
        "cm.yaml",
        "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: x}\n",
    );
    let out = corsair(&["check", &other]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stdout(&out).contains("no CorsPolicy document found"),
        "{}",
        stdout(&out)
    );
}

#[test]
fn check_of_a_missing_file_is_an_error_naming_it() {
    let out = corsair(&["check", "/nonexistent/policy.yaml"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(stdout(&out).contains("/nonexistent/policy.yaml: error: cannot read"));
}

#[test]
fn explain_an_allowed_preflight_prints_the_exact_headers() {
    let dir = tempfile::tempdir().unwrap();
    let policy = write(dir.path(), "p.yaml", POLICY);
    let out = corsair(&[
        "explain",
        "--policy",
        &policy,
        "--origin",
        "https://a.b.example.org",
        "--method",
        "PUT",
        "--header",
        "X-Request-Id",
        "--preflight",
        "--path",
        "/orders/1",
    ]);
    assert!(out.status.success());
    let text = stdout(&out);
    assert!(text.contains("ALLOWED"), "{text}");
    assert!(
        text.contains("https://*.example.org"),
        "the reason names the wildcard:\n{text}"
    );
    assert!(text.contains("200 from the proxy"), "{text}");
    for header in [
        "access-control-allow-origin: https://a.b.example.org",
        "access-control-allow-credentials: true",
        "access-control-max-age: 600",
    ] {
        assert!(text.contains(header), "missing {header}:\n{text}");
    }
}

#[test]
fn explain_a_denied_origin_and_the_route_that_matched() {
    let dir = tempfile::tempdir().unwrap();
    let policy = write(dir.path(), "p.yaml", POLICY);
    let out = corsair(&[
        "explain",
        "--policy",
        &policy,
        "--origin",
        "https://example.org",
    ]);
    assert!(out.status.success());
    let text = stdout(&out);
    assert!(text.contains("DENIED"), "{text}");
    assert!(!text.contains("access-control-allow-origin"), "{text}");

    let out = corsair(&[
        "explain",
        "--policy",
        &policy,
        "--origin",
        "https://anyone.test",
        "--path",
        "/public/logo.png",
    ]);
    let text = stdout(&out);
    assert!(text.contains("\"/public\""), "the route is named:\n{text}");
    assert!(text.contains("access-control-allow-origin: *"), "{text}");
}

#[test]
fn explain_refuses_an_invalid_policy_with_the_field() {
    let dir = tempfile::tempdir().unwrap();
    let policy = write(
        dir.path(),
        "p.yaml",
        "apiVersion: corsair.dev/v1alpha1\nkind: CorsPolicy\nmetadata: {name: x}\nspec:\n  allowOrigins: [\"https://X.example.com\"]\n",
    );
    let out = corsair(&[
        "explain",
        "--policy",
        &policy,
        "--origin",
        "https://x.example.com",
    ]);
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("spec.allowOrigins[0]") && err.contains("https://X.example.com"),
        "{err}"
    );
}
