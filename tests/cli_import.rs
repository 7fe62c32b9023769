//! Black-box tests of `corsair import`: exit codes, what goes to standard output (policies that
//! `corsair check` accepts) and to standard error (findings naming file, object and field).

use std::io::Write;
use std::process::{Command, Output, Stdio};

fn corsair(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_corsair"))
        .args(args)
        .output()
        .expect("the corsair binary runs")
}

fn fixture(name: &str) -> String {
    format!(
        "{}/tests/fixtures/import/{name}",
        env!("CARGO_MANIFEST_DIR")
    )
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

const FIXTURES: [&str; 6] = [
    "ingress-nginx.yaml",
    "gateway-api.yaml",
    "istio.yaml",
    "envoy-gateway.yaml",
    "traefik.yaml",
    "esp.yaml",
];

/// The YAML documents of a multi-document stream (each starts with `---`).
fn documents(stdout: &str) -> Vec<String> {
    stdout
        .split("\n---\n")
        .map(|d| d.trim_start_matches("---\n").to_owned())
        .filter(|d| d.contains("kind: CorsPolicy"))
        .collect()
}

#[test]
fn every_source_converts_and_the_policies_pass_check() {
    let files: Vec<String> = FIXTURES.iter().map(|f| fixture(f)).collect();
    let args: Vec<&str> = std::iter::once("import")
        .chain(files.iter().map(String::as_str))
        .collect();
    let out = corsair(&args);
    let (stdout, stderr) = (text(&out.stdout), text(&out.stderr));
    assert_eq!(out.status.code(), Some(0), "{stderr}");
    let docs = documents(&stdout);
    assert_eq!(docs.len(), 10, "{stdout}");

    // Each finding names the file, the object and the annotation, flag or field.
    let nginx = fixture("ingress-nginx.yaml");
    assert!(stderr.contains(&format!(
        "{nginx}: Ingress shop/assets: metadata.annotations[nginx.ingress.kubernetes.io/cors-allow-credentials]: warning[wildcard-credentials-dropped]"
    )), "{stderr}");
    assert!(
        stderr.contains(&format!("{nginx}: Service shop/web: kind: note[skipped]")),
        "{stderr}"
    );
    let esp = fixture("esp.yaml");
    assert!(stderr.contains(&format!(
        "{esp}: Deployment endpoints/legacy-echo: spec.template.spec.containers[0].args[--cors_allow_origin_regex]: warning[origin-anchored]"
    )), "{stderr}");
    let gw = fixture("gateway-api.yaml");
    assert!(stderr.contains(&format!(
        "{gw}: HTTPRoute shop/legacy: spec.rules[0].filters[0].cors.allowOrigins: incomplete[wildcard-credentials-refused]"
    )), "{stderr}");

    // The opt-in comments follow each policy.
    assert!(
        stdout.contains(
            "#   kubectl annotate deployment echo -n endpoints corsair.dev/policy=echo\n"
        )
    );
    assert!(
        stdout.contains("#     kubectl get service web -n shop -o jsonpath='{.spec.selector}'\n")
    );

    // corsair check accepts every policy but the one left incomplete on purpose.
    let dir = tempfile::tempdir().unwrap();
    let mut refused = Vec::new();
    for (i, doc) in docs.iter().enumerate() {
        let path = dir.path().join(format!("policy-{i}.yaml"));
        std::fs::write(&path, doc).unwrap();
        let check = corsair(&["check", path.to_str().unwrap()]);
        if !check.status.success() {
            refused.push((doc.clone(), text(&check.stdout)));
        }
    }
    assert_eq!(refused.len(), 1, "{refused:#?}");
    assert!(refused[0].0.contains("name: legacy"), "{}", refused[0].0);
    assert!(refused[0].1.contains("no-origins"), "{}", refused[0].1);
}

#[test]
fn standard_input_is_read_with_a_dash() {
    let mut child = Command::new(env!("CARGO_BIN_EXE_corsair"))
        .args(["import", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let manifest = std::fs::read(fixture("traefik.yaml")).unwrap();
    child.stdin.take().unwrap().write_all(&manifest).unwrap();
    let out = child.wait_with_output().unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert!(text(&out.stdout).contains("name: cors-headers"));
    assert!(text(&out.stderr).contains("<stdin>: Middleware web/cors-headers: spec.headers.accessControlAllowOriginListRegex[0]: warning[origin-anchored]"));
}

#[test]
fn nothing_convertible_exits_2() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("plain.yaml");
    std::fs::write(
        &path,
        "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: c}\n---\napiVersion: networking.k8s.io/v1\nkind: Ingress\nmetadata:\n  name: i\n  annotations:\n    nginx.ingress.kubernetes.io/cors-allow-origin: https://a.example.com\n",
    )
    .unwrap();
    let out = corsair(&["import", path.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(2));
    assert!(text(&out.stdout).is_empty());
    let stderr = text(&out.stderr);
    assert!(
        stderr.contains("ConfigMap c: kind: note[skipped]"),
        "{stderr}"
    );
    assert!(stderr.contains("Ingress i: metadata.annotations[nginx.ingress.kubernetes.io/enable-cors]: note[cors-disabled]"), "{stderr}");
}

#[test]
fn unreadable_or_malformed_input_exits_1_and_says_where() {
    let dir = tempfile::tempdir().unwrap();
    let bad = dir.path().join("bad.yaml");
    std::fs::write(
        &bad,
        "apiVersion: v1\nkind: Ingress\nmetadata: {name: [x}\n",
    )
    .unwrap();
    let good = fixture("traefik.yaml");
    let out = corsair(&["import", &good, bad.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1));
    let stderr = text(&out.stderr);
    assert!(
        stderr.contains(&format!(
            "{}: error: document 1 (line 1): not YAML: ",
            bad.display()
        )),
        "{stderr}"
    );
    assert!(stderr.contains("at line 3"), "{stderr}");
    // The good file is still converted.
    assert!(text(&out.stdout).contains("name: cors-headers"));

    // A stray document inside a file: named, and the file's other documents still converted.
    let stray = dir.path().join("stray.yaml");
    let traefik = std::fs::read_to_string(fixture("traefik.yaml")).unwrap();
    std::fs::write(&stray, format!("just a stray scalar\n---\n{traefik}")).unwrap();
    let out = corsair(&["import", stray.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1));
    let stderr = text(&out.stderr);
    assert!(
        stderr.contains(&format!(
            "{}: error: document 1 (line 1): is not a mapping",
            stray.display()
        )),
        "{stderr}"
    );
    assert!(text(&out.stdout).contains("name: cors-headers"));

    let missing = dir.path().join("missing.yaml");
    let out = corsair(&["import", missing.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1));
    assert!(text(&out.stderr).contains("cannot read"));
}

#[test]
fn help_lists_import() {
    let out = corsair(&["--help"]);
    assert!(text(&out.stdout).contains("import"));
    let out = corsair(&["import", "--help"]);
    let help = text(&out.stdout);
    assert!(help.contains("Exit status"), "{help}");
    assert!(help.contains("`-` reads standard input"), "{help}");
}

#[test]
fn names_stay_unique_across_files() {
    let dir = tempfile::tempdir().unwrap();
    let a = dir.path().join("a.yaml");
    let b = dir.path().join("b.yaml");
    std::fs::write(&a, "apiVersion: traefik.io/v1alpha1\nkind: Middleware\nmetadata: {name: web, namespace: shop}\nspec:\n  headers:\n    accessControlAllowOriginList: [https://a.example.com]\n").unwrap();
    std::fs::write(&b, "apiVersion: gateway.envoyproxy.io/v1alpha1\nkind: SecurityPolicy\nmetadata: {name: web, namespace: shop}\nspec:\n  cors:\n    allowOrigins: [https://b.example.com]\n").unwrap();
    let out = corsair(&["import", a.to_str().unwrap(), b.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(0));
    let stdout = text(&out.stdout);
    assert!(stdout.contains("  name: web\n"), "{stdout}");
    assert!(stdout.contains("  name: web-securitypolicy\n"), "{stdout}");
    assert!(text(&out.stderr).contains("SecurityPolicy shop/web: metadata.name: note[renamed]"));
}
