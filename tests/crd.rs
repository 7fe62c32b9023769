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

/// `kubectl apply -k deploy/`: the kustomization lists exactly the plain manifests of `deploy/`
/// (no kustomize binary is available here, so this checks what kustomize would build from):
/// every listed file exists, passes the Kubernetes schema, and no two objects share a kind,
/// namespace and name (kustomize refuses that).
#[test]
fn kustomization_lists_exactly_the_plain_manifests() {
    let deploy = root().join("deploy");
    let text = std::fs::read_to_string(deploy.join("kustomization.yaml"))
        .expect("deploy/kustomization.yaml exists");
    let kustomization: serde_json::Value =
        serde_saphyr::from_str(&text).expect("kustomization.yaml is YAML");
    assert_eq!(
        kustomization["apiVersion"],
        "kustomize.config.k8s.io/v1beta1"
    );
    assert_eq!(kustomization["kind"], "Kustomization");
    let mut keys: Vec<&str> = kustomization
        .as_object()
        .expect("a mapping")
        .keys()
        .map(String::as_str)
        .collect();
    keys.sort_unstable();
    assert_eq!(keys, ["apiVersion", "kind", "resources"]);
    let mut listed: Vec<String> = kustomization["resources"]
        .as_array()
        .expect("resources is a list")
        .iter()
        .map(|r| r.as_str().expect("a file name").to_owned())
        .collect();
    listed.sort();
    let mut manifests: Vec<String> = std::fs::read_dir(&deploy)
        .expect("deploy/ is readable")
        .filter_map(|e| e.ok())
        .filter(|e| e.path().is_file())
        .filter_map(|e| e.file_name().into_string().ok())
        .filter(|n| n.ends_with(".yaml") && n != "kustomization.yaml")
        .collect();
    manifests.sort();
    assert_eq!(listed, manifests);

    let files: Vec<PathBuf> = listed.iter().map(|f| deploy.join(f)).collect();
    kubernetes_validate(&files.iter().map(PathBuf::as_path).collect::<Vec<_>>());
    let mut ids = std::collections::BTreeSet::new();
    for file in &files {
        let text = std::fs::read_to_string(file).expect("readable");
        let docs: Vec<serde_json::Value> =
            serde_saphyr::from_multiple(&text).expect("multi-document YAML");
        for doc in docs.iter().filter(|d| !d.is_null()) {
            let id = format!(
                "{}/{}/{}",
                doc["kind"].as_str().expect("kind"),
                doc["metadata"]["namespace"].as_str().unwrap_or(""),
                doc["metadata"]["name"].as_str().expect("name")
            );
            assert!(ids.insert(id.clone()), "{id} appears twice");
        }
    }
    for id in [
        "CustomResourceDefinition//corspolicies.corsair.dev",
        "Deployment/corsair-system/corsair-controller",
        "ValidatingWebhookConfiguration//corsair-validate",
    ] {
        assert!(ids.contains(id), "{id} missing from {ids:?}");
    }
}
