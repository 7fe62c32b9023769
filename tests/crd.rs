//! The committed CRD is what the code generates, it is a valid CustomResourceDefinition carrying
//! every CEL rule where it belongs, and the plain manifests pass the Kubernetes schema.

use std::path::{Path, PathBuf};
use std::process::Command;

use corsair_controller::crd::CEL_RULES;
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::{
    CustomResourceDefinition, JSONSchemaProps,
};

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn corsair_crd() -> String {
    let output = Command::new(env!("CARGO_BIN_EXE_corsair"))
        .arg("crd")
        .output()
        .expect("running corsair crd");
    assert!(
        output.status.success(),
        "corsair crd failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8(output.stdout).expect("corsair crd prints UTF-8")
}

fn committed_crd() -> String {
    let path = root().join("deploy/crd.yaml");
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("reading {}: {e}", path.display()))
}

#[test]
fn committed_crd_matches_the_generated_one() {
    assert!(
        committed_crd() == corsair_crd(),
        "deploy/crd.yaml differs from `corsair crd`: regenerate it with \
         `cargo run -- crd > deploy/crd.yaml` and commit the result"
    );
}

fn parse_crd() -> CustomResourceDefinition {
    serde_saphyr::from_str(&committed_crd()).expect("deploy/crd.yaml is a CustomResourceDefinition")
}

#[test]
fn crd_names_and_columns() {
    let crd = parse_crd();
    assert_eq!(
        crd.metadata.name.as_deref(),
        Some("corspolicies.corsair.dev")
    );
    assert_eq!(crd.spec.group, "corsair.dev");
    assert_eq!(crd.spec.scope, "Namespaced");
    assert_eq!(crd.spec.names.kind, "CorsPolicy");
    assert_eq!(crd.spec.names.plural, "corspolicies");
    assert_eq!(crd.spec.names.short_names, Some(vec!["corspol".to_owned()]));
    assert_eq!(crd.spec.names.categories, Some(vec!["corsair".to_owned()]));
    let version = &crd.spec.versions[0];
    assert_eq!(version.name, "v1alpha1");
    assert!(version.served && version.storage);
    assert!(
        version
            .subresources
            .as_ref()
            .and_then(|s| s.status.as_ref())
            .is_some()
    );
    let columns: Vec<&str> = version
        .additional_printer_columns
        .iter()
        .flatten()
        .map(|c| c.name.as_str())
        .collect();
    assert_eq!(columns, ["Ready", "Origins", "Workloads", "Age"]);
}

fn schema(crd: &CustomResourceDefinition) -> &JSONSchemaProps {
    crd.spec.versions[0]
        .schema
        .as_ref()
        .and_then(|s| s.open_api_v3_schema.as_ref())
        .expect("the version has a schema")
}

fn property<'a>(schema: &'a JSONSchemaProps, name: &str) -> &'a JSONSchemaProps {
    schema
        .properties
        .as_ref()
        .and_then(|p| p.get(name))
        .unwrap_or_else(|| panic!("schema has no property {name}"))
}

#[test]
fn every_cel_rule_sits_where_it_applies() {
    let crd = parse_crd();
    let root = schema(&crd);
    let spec = property(root, "spec");
    let route = property(spec, "routes")
        .items
        .as_ref()
        .and_then(|i| match i {
            k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::JSONSchemaPropsOrArray::Schema(s) => Some(s.as_ref()),
            _ => None,
        })
        .expect("routes items are one schema");
    assert!(!CEL_RULES.is_empty());
    for rule in CEL_RULES {
        let at = match rule.location {
            "" => root,
            "spec" => spec,
            "spec.routes[]" => route,
            other => panic!("unknown location {other}"),
        };
        let found = at
            .x_kubernetes_validations
            .iter()
            .flatten()
            .any(|v| v.rule == rule.rule && v.message.as_deref() == Some(rule.message));
        assert!(found, "rule {:?} is not at {:?}", rule.rule, rule.location);
    }
    // The credentials rule is checked at the top level and for routes (own and inherited).
    let texts: Vec<&str> = spec
        .x_kubernetes_validations
        .iter()
        .flatten()
        .map(|v| v.rule.as_str())
        .collect();
    assert!(
        texts
            .iter()
            .any(|r| r.contains("allowCredentials") && r.contains("self.routes"))
    );
    assert!(
        texts
            .iter()
            .any(|r| r.contains("preflightStatus in [200, 204]"))
    );
    assert!(
        root.x_kubernetes_validations
            .iter()
            .flatten()
            .any(|v| v.rule.contains("metadata.name.size() <= 63"))
    );
}

#[test]
fn spec_refuses_unknown_fields() {
    let crd = parse_crd();
    let spec = property(schema(&crd), "spec");
    assert_eq!(spec.x_kubernetes_preserve_unknown_fields, None);
    let route = serde_json::to_value(property(spec, "routes")).expect("serialises");
    assert_eq!(
        route["items"].get("x-kubernetes-preserve-unknown-fields"),
        None
    );
}

/// `kubernetes-validate` (PyPI), installed by `make test` into `.venv` and on PATH there.
fn kubernetes_validate(files: &[&Path]) {
    let output = Command::new("kubernetes-validate")
        .args(["--kubernetes-version", "1.33.0", "--strict"])
        .args(files)
        .output();
    let output = match output {
        Ok(output) => output,
        Err(err) => panic!(
            "kubernetes-validate is not runnable ({err}): install it with \
             `make deps-python` (pip install kubernetes-validate) and put .venv/bin on PATH, \
             or run the tests with `make test`"
        ),
    };
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "kubernetes-validate refused {files:?}:\n{stdout}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(!stdout.contains("ERROR"), "{stdout}");
}

#[test]
fn plain_manifests_pass_the_kubernetes_schema() {
    let deploy = root().join("deploy");
    let files = [
        deploy.join("crd.yaml"),
        deploy.join("corsair.yaml"),
        deploy.join("examples/deployment.yaml"),
    ];
    for file in &files {
        assert!(file.exists(), "{} is missing", file.display());
    }
    kubernetes_validate(&files.iter().map(PathBuf::as_path).collect::<Vec<_>>());
}

#[test]
fn example_policies_compile() {
    let path = root().join("deploy/examples/deployment.yaml");
    let text = std::fs::read_to_string(&path).expect("reading the example");
    let mut policies = 0;
    for document in text.split("\n---\n") {
        if !document.contains("kind: CorsPolicy") {
            continue;
        }
        let policy = corsair_policy::load_document(document)
            .unwrap_or_else(|e| panic!("example CorsPolicy does not load: {e}"));
        if let Err(report) = corsair_policy::Engine::compile(&policy.spec) {
            panic!("example CorsPolicy is invalid: {:?}", report.findings);
        }
        policies += 1;
    }
    assert_eq!(policies, 1, "the example carries its CorsPolicy");
}

/// The kubectl that `make deps` unpacks from Debian's `kubernetes-client` (1.20, whose built-in
/// kustomize is what `kubectl apply -k` runs), or `CORSAIR_KUBECTL`.
fn kubectl() -> PathBuf {
    std::env::var_os("CORSAIR_KUBECTL").map_or_else(
        || root().join("target/tools/kubernetes-client/usr/bin/kubectl"),
        PathBuf::from,
    )
}

/// The documents of a multi-document YAML text, empty ones left out, sorted by kind, namespace
/// and name, with whole numbers in one form (the CRD's `minimum: 0.0` is kustomize's `0`).
fn objects(text: &str) -> Vec<serde_json::Value> {
    fn whole(v: &mut serde_json::Value) {
        match v {
            serde_json::Value::Number(n) => {
                if let Some(f) = n.as_f64().filter(|f| f.fract() == 0.0 && f.abs() < 1e15) {
                    *v = serde_json::Value::from(f as i64);
                }
            }
            serde_json::Value::Array(items) => items.iter_mut().for_each(whole),
            serde_json::Value::Object(map) => map.values_mut().for_each(whole),
            _ => {}
        }
    }
    let mut docs: Vec<serde_json::Value> =
        serde_saphyr::from_multiple(text).unwrap_or_else(|e| panic!("multi-document YAML: {e}"));
    docs.retain(|d| !d.is_null());
    docs.iter_mut().for_each(whole);
    let id = |d: &serde_json::Value| {
        let s = |v: &serde_json::Value| v.as_str().unwrap_or_default().to_owned();
        (
            s(&d["kind"]),
            s(&d["metadata"]["namespace"]),
            s(&d["metadata"]["name"]),
        )
    };
    docs.sort_by_key(id);
    docs
}

/// `kubectl apply -k deploy/` applies exactly what `kubectl apply -f deploy/crd.yaml -f
/// deploy/corsair.yaml` does: real kustomize builds the directory (no cluster is called), every
/// object comes out unchanged, and the build passes the Kubernetes schema.
#[test]
fn kustomize_builds_exactly_the_plain_manifests() {
    let kubectl = kubectl();
    let deploy = root().join("deploy");
    let built = Command::new(&kubectl)
        .arg("kustomize")
        .arg(&deploy)
        .output()
        .unwrap_or_else(|e| {
            panic!(
                "{} is not runnable ({e}): `make deps` unpacks it from Debian's kubernetes-client, \
                 or set CORSAIR_KUBECTL to a kubectl",
                kubectl.display()
            )
        });
    let text = String::from_utf8_lossy(&built.stdout);
    assert!(
        built.status.success(),
        "kubectl kustomize failed: {}",
        String::from_utf8_lossy(&built.stderr)
    );
    // Every plain manifest of deploy/ is one the kustomization must build.
    let mut manifests: Vec<String> = std::fs::read_dir(&deploy)
        .expect("deploy/ is readable")
        .filter_map(|e| e.ok())
        .filter(|e| e.path().is_file())
        .filter_map(|e| e.file_name().into_string().ok())
        .filter(|n| n.ends_with(".yaml") && n != "kustomization.yaml")
        .collect();
    manifests.sort();
    assert_eq!(manifests, ["corsair.yaml", "crd.yaml"]);
    let plain = manifests
        .iter()
        .map(|f| std::fs::read_to_string(deploy.join(f)).expect("manifest"))
        .collect::<Vec<_>>()
        .join("\n---\n");
    let (from_kustomize, from_files) = (objects(&text), objects(&plain));
    assert!(from_files.len() > 10, "{}", from_files.len());
    assert_eq!(from_kustomize.len(), from_files.len());
    for (a, b) in from_kustomize.iter().zip(&from_files) {
        assert_eq!(a, b);
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let out = dir.path().join("built.yaml");
    std::fs::write(&out, text.as_bytes()).expect("write the build");
    kubernetes_validate(&[&out]);
}
