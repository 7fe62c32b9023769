//! End-to-end tests against a real cluster (kind or k3d) running Corsair.
//!
//! Setup: build and load both images (the controller and the sidecar, see the README), then
//! `kubectl apply -f deploy/crd.yaml -f deploy/corsair.yaml` and wait for the controller.
//! Run: `KUBECONFIG=... cargo test --test e2e_cluster -- --ignored --test-threads=1`.
//! Each test works in its own namespace and deletes it at the end.

use std::future::Future;
use std::time::Duration;

use corsair_controller::crd::CorsPolicy;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{ConfigMap, Container, Namespace, Pod, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::api::{DeleteParams, ListParams, Patch, PatchParams, PostParams};
use kube::{Api, Client};
use serde_json::json;

const TIMEOUT: Duration = Duration::from_secs(120);

async fn client() -> Client {
    Client::try_default()
        .await
        .expect("a kubeconfig (KUBECONFIG) for the test cluster")
}

/// A fresh namespace, deleted when the test ends (even on failure, best effort).
struct TestNamespace {
    client: Client,
    name: String,
}

impl TestNamespace {
    async fn new(client: &Client, test: &str) -> Self {
        let name = format!("corsair-e2e-{test}-{}", std::process::id());
        let namespaces: Api<Namespace> = Api::all(client.clone());
        let ns: Namespace =
            serde_json::from_value(json!({"metadata": {"name": name}})).expect("namespace object");
        namespaces
            .create(&PostParams::default(), &ns)
            .await
            .expect("creating the test namespace");
        TestNamespace {
            client: client.clone(),
            name,
        }
    }
}

impl Drop for TestNamespace {
    fn drop(&mut self) {
        let client = self.client.clone();
        let name = self.name.clone();
        let cleanup = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build();
            if let Ok(runtime) = runtime {
                runtime.block_on(async move {
                    let namespaces: Api<Namespace> = Api::all(client);
                    let _ = namespaces.delete(&name, &DeleteParams::default()).await;
                });
            }
        });
        let _ = cleanup.join();
    }
}

/// Polls `check` until it returns `Some`, failing after [`TIMEOUT`] with `what`.
async fn eventually<T, F, Fut>(what: &str, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = tokio::time::Instant::now() + TIMEOUT;
    loop {
        if let Some(value) = check().await {
            return value;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out after {TIMEOUT:?} waiting for {what}"
        );
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

fn policy(name: &str, spec: serde_json::Value) -> CorsPolicy {
    serde_json::from_value(json!({
        "apiVersion": "corsair.dev/v1alpha1", "kind": "CorsPolicy",
        "metadata": {"name": name}, "spec": spec,
    }))
    .expect("policy object")
}

/// Creates the CorsPolicy `api` allowing `https://app.example.com`; returns the namespace's
/// CorsPolicies.
async fn create_api_policy(client: &Client, ns: &TestNamespace) -> Api<CorsPolicy> {
    let policies: Api<CorsPolicy> = Api::namespaced(client.clone(), &ns.name);
    policies
        .create(
            &PostParams::default(),
            &policy("api", json!({"allowOrigins": ["https://app.example.com"]})),
        )
        .await
        .expect("creating the policy");
    policies
}

/// Creates the CorsPolicy `api` and a one-replica Deployment `web` annotated with it, whose
/// container declares `port`; returns the namespace's Deployments.
async fn annotated_web(
    client: &Client,
    ns: &TestNamespace,
    port: serde_json::Value,
) -> Api<Deployment> {
    let container = json!({
        "name": "app", "image": "nginxinc/nginx-unprivileged:1.27-alpine", "ports": [port],
    });
    annotated_web_running(client, ns, container).await
}

/// [`annotated_web`] with the whole app container given.
async fn annotated_web_running(
    client: &Client,
    ns: &TestNamespace,
    container: serde_json::Value,
) -> Api<Deployment> {
    create_api_policy(client, ns).await;
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), &ns.name);
    let deployment: Deployment = serde_json::from_value(json!({
        "metadata": {"name": "web", "annotations": {"corsair.dev/policy": "api"}},
        "spec": {
            "replicas": 1,
            "selector": {"matchLabels": {"app": "web"}},
            "template": {
                "metadata": {"labels": {"app": "web"}},
                "spec": {"containers": [container]},
            },
        },
    }))
    .expect("deployment object");
    deployments
        .create(&PostParams::default(), &deployment)
        .await
        .expect("creating the deployment");
    deployments
}

/// The message of the first Event with `reason` on the object named `name`, once there is one.
async fn event_note(client: &Client, ns: &TestNamespace, reason: &str, name: &str) -> String {
    let events: Api<k8s_openapi::api::core::v1::Event> = Api::namespaced(client.clone(), &ns.name);
    eventually(&format!("a {reason} Event on {name}"), || async {
        let list = events
            .list(&ListParams::default().fields(&format!("reason={reason}")))
            .await
            .ok()?;
        list.items
            .into_iter()
            .find(|e| e.involved_object.name.as_deref() == Some(name))
            .and_then(|e| e.message)
    })
    .await
}

/// The injected sidecar of the first pod of `web` that has one, and whether it is native.
async fn injected_sidecar(client: &Client, ns: &TestNamespace) -> (Container, bool) {
    let pods: Api<Pod> = Api::namespaced(client.clone(), &ns.name);
    eventually("a pod with the corsair-proxy sidecar", || async {
        let list = pods
            .list(&ListParams::default().labels("app=web,corsair.dev/inject=enabled"))
            .await
            .ok()?;
        list.items.into_iter().find_map(|p| {
            let spec = p.spec?;
            let native = spec
                .init_containers
                .into_iter()
                .flatten()
                .map(|c| (c, true));
            let regular = spec.containers.into_iter().map(|c| (c, false));
            native
                .chain(regular)
                .find(|(c, _)| c.name == "corsair-proxy")
        })
    })
    .await
}

fn ready_status(policy: &CorsPolicy) -> Option<String> {
    policy
        .status
        .as_ref()
        .and_then(|s| s.ready())
        .map(|c| c.status.clone())
}

#[tokio::test]
#[ignore = "needs cluster: set KUBECONFIG and run with --ignored"]
async fn valid_policy_is_rendered_and_ready() {
    let client = client().await;
    let ns = TestNamespace::new(&client, "valid").await;
    let policies = create_api_policy(&client, &ns).await;
    let configmaps: Api<ConfigMap> = Api::namespaced(client.clone(), &ns.name);
    eventually("Ready=True", || async {
        let p = policies.get("api").await.ok()?;
        (ready_status(&p).as_deref() == Some("True")).then_some(())
    })
    .await;
    let cm = eventually("the rendered ConfigMap", || async {
        configmaps
            .get_opt("corsair-policy-api")
            .await
            .ok()
            .flatten()
    })
    .await;
    let rendered = cm
        .data
        .as_ref()
        .and_then(|d| d.get("policy.json"))
        .expect("policy.json key");
    let document = corsair_policy::load_document(rendered).expect("the proxy can load it");
    assert_eq!(
        document.spec.allow_origins,
        Some(vec!["https://app.example.com".to_owned()])
    );
}

#[tokio::test]
#[ignore = "needs cluster: set KUBECONFIG and run with --ignored"]
async fn api_server_refuses_wildcard_with_credentials() {
    let client = client().await;
    let ns = TestNamespace::new(&client, "cel").await;
    let policies: Api<CorsPolicy> = Api::namespaced(client.clone(), &ns.name);
    let err = policies
        .create(
            &PostParams::default(),
            &policy(
                "bad",
                json!({"allowOrigins": ["*"], "allowCredentials": true}),
            ),
        )
        .await
        .expect_err("the CEL rule refuses * with credentials");
    assert!(err.to_string().contains("allowCredentials"), "{err}");
}

/// The check the leader makes before it rolls a workload, made as its ServiceAccount: the
/// Role lets it, the CRD's rules admit the policy, and the validating webhook refuses it.
#[tokio::test]
#[ignore = "needs cluster: set KUBECONFIG and run with --ignored"]
async fn the_leaders_webhook_check_is_answered_by_the_webhook() {
    use corsair_controller::reconcile::gate::{CHECK_NAME, CHECK_ORIGIN};
    let mut config = kube::Config::infer()
        .await
        .expect("a kubeconfig (KUBECONFIG) for the test cluster");
    config.auth_info.impersonate =
        Some("system:serviceaccount:corsair-system:corsair-controller".to_owned());
    let client = Client::try_from(config).expect("an impersonating client");
    let policies: Api<CorsPolicy> = Api::namespaced(client, "corsair-system");
    let params = PostParams {
        dry_run: true,
        field_manager: None,
    };
    let err = policies
        .create(
            &params,
            &policy(CHECK_NAME, json!({"allowOrigins": [CHECK_ORIGIN]})),
        )
        .await
        .expect_err("the validating webhook refuses the check's policy");
    let message = err.to_string();
    assert!(
        message.contains("admission webhook \"validate.corsair.dev\" denied the request")
            && message.contains("spec.allowOrigins[0]"),
        "{message}"
    );
}

#[tokio::test]
#[ignore = "needs cluster: set KUBECONFIG and run with --ignored"]
async fn annotated_deployment_gets_the_sidecar_and_loses_it() {
    let client = client().await;
    let ns = TestNamespace::new(&client, "inject").await;
    let deployments =
        annotated_web(&client, &ns, json!({"name": "http", "containerPort": 8080})).await;

    let label = |d: &Deployment| -> Option<String> {
        d.spec
            .as_ref()?
            .template
            .metadata
            .as_ref()?
            .labels
            .as_ref()?
            .get("corsair.dev/inject")
            .cloned()
    };
    eventually("the inject label on the pod template", || async {
        let d = deployments.get("web").await.ok()?;
        (label(&d).as_deref() == Some("enabled")).then_some(())
    })
    .await;

    injected_sidecar(&client, &ns).await;

    // The Service's named targetPort reaches the proxy and the pod is ready behind it. (Before
    // Kubernetes 1.33 a named port on a native sidecar never reached the EndpointSlice:
    // kubernetes/kubernetes#128850.)
    let services: Api<Service> = Api::namespaced(client.clone(), &ns.name);
    let service: Service = serde_json::from_value(json!({
        "metadata": {"name": "web"},
        "spec": {
            "selector": {"app": "web"},
            "ports": [{"name": "http", "port": 80, "targetPort": "http"}],
        },
    }))
    .expect("service object");
    services
        .create(&PostParams::default(), &service)
        .await
        .expect("creating the service");
    let slices: Api<EndpointSlice> = Api::namespaced(client.clone(), &ns.name);
    eventually("a ready endpoint on the proxy's port", || async {
        let list = slices
            .list(&ListParams::default().labels("kubernetes.io/service-name=web"))
            .await
            .ok()?;
        list.items
            .iter()
            .any(|s| {
                s.ports.iter().flatten().any(|p| p.port == Some(15380))
                    && s.endpoints
                        .iter()
                        .any(|e| e.conditions.as_ref().and_then(|c| c.ready) == Some(true))
            })
            .then_some(())
    })
    .await;

    // Removing the annotation releases the label (the next rollout drops the sidecar).
    let patch = json!({"metadata": {"annotations": {"corsair.dev/policy": null}}});
    deployments
        .patch("web", &PatchParams::default(), &Patch::Merge(&patch))
        .await
        .expect("removing the annotation");
    eventually("the inject label gone", || async {
        let d = deployments.get("web").await.ok()?;
        label(&d).is_none().then_some(())
    })
    .await;
}

#[tokio::test]
#[ignore = "needs cluster: set KUBECONFIG and run with --ignored"]
async fn a_deployment_whose_pods_would_be_refused_is_not_rolled() {
    let client = client().await;
    let ns = TestNamespace::new(&client, "refused").await;
    // Its only port looks like TLS: the webhook would refuse the guess.
    let deployments = annotated_web(
        &client,
        &ns,
        json!({"name": "https", "containerPort": 8443}),
    )
    .await;
    let note = event_note(&client, &ns, "InjectionRefused", "web").await;
    assert!(note.contains("spec.containers[0].ports[0]"), "{note}");
    let d = deployments.get("web").await.expect("the deployment");
    let labels = d
        .spec
        .and_then(|s| s.template.metadata)
        .and_then(|m| m.labels)
        .unwrap_or_default();
    assert!(
        !labels.contains_key("corsair.dev/inject"),
        "the template was left as it is: {labels:?}"
    );
}

/// An app port without a name: the pods are injected, and the webhook's warning (a Service by
/// port number would go past the proxy), which kubectl shows only to the ReplicaSet
/// controller, reaches the Deployment as an Event.
#[tokio::test]
#[ignore = "needs cluster: set KUBECONFIG and run with --ignored"]
async fn an_unnamed_port_is_warned_about_on_the_deployment() {
    let client = client().await;
    let ns = TestNamespace::new(&client, "unnamed").await;
    annotated_web(&client, &ns, json!({"containerPort": 8080})).await;
    let note = event_note(&client, &ns, "InjectionWarning", "web").await;
    assert!(
        note.contains("port 8080 has no name") && note.contains("corsair-http"),
        "{note}"
    );
    injected_sidecar(&client, &ns).await;
}

/// A template changed after the opt-in so that the webhook refuses its pods (a second
/// container with the same port name): the rollout's new pods are refused, and the
/// Deployment, not only its ReplicaSet, says why; the running pod keeps its sidecar (with one
/// replica, `maxUnavailable` 25 % removes none before a new one is ready).
#[tokio::test]
#[ignore = "needs cluster: set KUBECONFIG and run with --ignored"]
async fn a_template_broken_after_the_opt_in_is_refused_on_the_deployment() {
    let client = client().await;
    let ns = TestNamespace::new(&client, "broken").await;
    let deployments =
        annotated_web(&client, &ns, json!({"name": "http", "containerPort": 8080})).await;
    injected_sidecar(&client, &ns).await;
    let shared = json!({"spec": {"template": {"spec": {"containers": [
        {"name": "app", "image": "nginxinc/nginx-unprivileged:1.27-alpine",
         "ports": [{"name": "http", "containerPort": 8080}]},
        {"name": "metrics", "image": "nginxinc/nginx-unprivileged:1.27-alpine",
         "ports": [{"name": "http", "containerPort": 9090}]},
    ]}}}});
    deployments
        .patch("web", &PatchParams::default(), &Patch::Merge(&shared))
        .await
        .expect("patching the template");
    let note = event_note(&client, &ns, "InjectionRefused", "web").await;
    assert!(
        note.contains("refuses the pods of this workload's pod template")
            && note.contains("spec.containers[1].ports[0].name"),
        "{note}"
    );
    injected_sidecar(&client, &ns).await;
}

/// An app that serves through a preStop sleep: a regular-container sidecar is told to keep
/// accepting as long (and the API server takes the pod); a native one, stopped after the app,
/// is not.
#[tokio::test]
#[ignore = "needs cluster: set KUBECONFIG and run with --ignored"]
async fn the_sidecar_waits_as_long_as_the_apps_pre_stop_sleep() {
    let client = client().await;
    let ns = TestNamespace::new(&client, "prestop").await;
    let container = json!({
        "name": "app", "image": "nginxinc/nginx-unprivileged:1.27-alpine",
        "ports": [{"name": "http", "containerPort": 8080}],
        "lifecycle": {"preStop": {"exec": {"command": ["sleep", "5"]}}},
    });
    annotated_web_running(&client, &ns, container).await;
    let (sidecar, native) = injected_sidecar(&client, &ns).await;
    let args = sidecar.args.unwrap_or_default();
    let delayed = args.windows(2).any(|w| w == ["--shutdown-delay", "5"]);
    assert_eq!(delayed, !native, "native: {native}, args: {args:?}");
}

/// A pod that got the opt-in label after its creation was never seen by the injection webhook
/// (it acts on CREATE), as a pod admitted while the webhook was unreachable: the leader's
/// watch of labelled pods says it on the pod.
#[tokio::test]
#[ignore = "needs cluster: set KUBECONFIG and run with --ignored"]
async fn a_labelled_pod_without_the_proxy_is_said_on_the_pod() {
    let client = client().await;
    let ns = TestNamespace::new(&client, "bypassed").await;
    create_api_policy(&client, &ns).await;
    let pods: Api<Pod> = Api::namespaced(client.clone(), &ns.name);
    let pod: Pod = serde_json::from_value(json!({
        "metadata": {"name": "bare", "annotations": {"corsair.dev/policy": "api"}},
        "spec": {"containers": [{
            "name": "app", "image": "nginxinc/nginx-unprivileged:1.27-alpine",
            "ports": [{"name": "http", "containerPort": 8080}],
        }]},
    }))
    .expect("pod object");
    pods.create(&PostParams::default(), &pod)
        .await
        .expect("creating the pod without the label");
    let label = json!({"metadata": {"labels": {"corsair.dev/inject": "enabled"}}});
    pods.patch("bare", &PatchParams::default(), &Patch::Merge(&label))
        .await
        .expect("labelling the running pod");
    let note = event_note(&client, &ns, "ProxyMissing", "bare").await;
    assert!(
        note.contains("without the corsair-proxy container")
            && note.contains(&format!("kubectl delete pod -n {} bare", ns.name)),
        "{note}"
    );
}
