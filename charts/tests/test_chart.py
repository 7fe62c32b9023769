"""The Helm chart, rendered and linted by real Helm, checked against the Kubernetes schemas."""

import re
import subprocess

import helm_python as helm
import pytest
import yaml

from conftest import CHART, ROOT, by_kind, kubernetes_validate, render


def test_lint_strict_has_no_findings():
    report = helm.lint(str(CHART), strict=True, kube_version="v1.33.0")
    problems = [m for m in report["messages"] if m["severity"] >= 2]
    assert report["total_charts_linted"] == 1
    assert problems == [], problems
    assert not report.get("errors"), report.get("errors")


def test_default_render_is_valid_kubernetes(tmp_path):
    docs = render()
    kinds = sorted(d["kind"] for d in docs)
    for kind in [
        "ClusterRole",
        "ClusterRoleBinding",
        "Deployment",
        "MutatingWebhookConfiguration",
        "Role",
        "RoleBinding",
        "Service",
        "ServiceAccount",
        "ValidatingWebhookConfiguration",
        "PodDisruptionBudget",
    ]:
        assert kind in kinds, f"{kind} missing from the default render: {kinds}"
    out = tmp_path / "rendered.yaml"
    out.write_text(yaml.safe_dump_all(docs))
    code, output = kubernetes_validate([out])
    assert code == 0, output


def test_mutating_webhook_only_sees_opted_in_pods():
    (mwc,) = by_kind(render(), "MutatingWebhookConfiguration")
    (hook,) = mwc["webhooks"]
    assert hook["objectSelector"] == {"matchLabels": {"corsair.dev/inject": "enabled"}}
    assert hook["rules"][0]["resources"] == ["pods"]
    assert hook["rules"][0]["operations"] == ["CREATE"]
    assert hook["clientConfig"]["service"]["path"] == "/inject"
    excluded = hook["namespaceSelector"]["matchExpressions"][0]["values"]
    assert "corsair-system" in excluded and "kube-system" in excluded
    (vwc,) = by_kind(render(), "ValidatingWebhookConfiguration")
    assert vwc["webhooks"][0]["clientConfig"]["service"]["path"] == "/validate"
    assert vwc["webhooks"][0]["rules"][0]["resources"] == ["corspolicies"]


def test_deleting_a_policy_is_never_blocked_by_the_webhook():
    """The DELETE webhook only warns: it ignores failures even when validation is set to Fail."""
    (vwc,) = by_kind(render({"webhook": {"failurePolicy": "Fail"}}), "ValidatingWebhookConfiguration")
    hooks = {h["name"]: h for h in vwc["webhooks"]}
    assert hooks["validate.corsair.dev"]["failurePolicy"] == "Fail"
    assert hooks["validate.corsair.dev"]["rules"][0]["operations"] == ["CREATE", "UPDATE"]
    in_use = hooks["in-use.corsair.dev"]
    assert in_use["failurePolicy"] == "Ignore"
    assert in_use["rules"][0]["operations"] == ["DELETE"]
    assert in_use["rules"][0]["resources"] == ["corspolicies"]
    assert in_use["clientConfig"]["service"]["path"] == "/validate"


def test_webhook_service_matches_controller_pods():
    docs = render()
    (deploy,) = by_kind(docs, "Deployment")
    (svc,) = by_kind(docs, "Service")
    pod_labels = deploy["spec"]["template"]["metadata"]["labels"]
    assert all(pod_labels.get(k) == v for k, v in svc["spec"]["selector"].items())
    container_ports = {p["name"] for p in deploy["spec"]["template"]["spec"]["containers"][0]["ports"]}
    for port in svc["spec"]["ports"]:
        assert port["targetPort"] in container_ports
    hook_svc = by_kind(docs, "MutatingWebhookConfiguration")[0]["webhooks"][0]["clientConfig"]["service"]
    assert hook_svc["name"] == svc["metadata"]["name"]


def test_controller_is_restricted():
    (deploy,) = by_kind(render(), "Deployment")
    pod = deploy["spec"]["template"]["spec"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["seccompProfile"]["type"] == "RuntimeDefault"
    ctx = pod["containers"][0]["securityContext"]
    assert ctx["allowPrivilegeEscalation"] is False
    assert ctx["readOnlyRootFilesystem"] is True
    assert ctx["capabilities"]["drop"] == ["ALL"]


def controller_flags(deploy):
    args = deploy["spec"]["template"]["spec"]["containers"][0]["args"]
    assert args[0] == "controller"
    return [a.split("=", 1)[0] for a in args[1:]]


@pytest.mark.parametrize(
    "values",
    [{}, {"webhook": {"certManager": {"enabled": True}}}],
    ids=["default", "cert-manager"],
)
def test_every_controller_flag_exists(values, corsair_bin):
    """The chart passes only flags that `corsair controller` accepts."""
    help_text = subprocess.run(
        [corsair_bin, "controller", "--help"], capture_output=True, text=True, check=True
    ).stdout
    known = set(re.findall(r"--[a-z0-9-]+", help_text))
    (deploy,) = by_kind(render(values), "Deployment")
    missing = [f for f in controller_flags(deploy) if f not in known]
    assert missing == [], f"flags not in `corsair controller --help`: {missing}"


def test_values_are_passed_through():
    values = {
        "replicaCount": 3,
        "image": {"repository": "registry.local/corsair", "tag": "v9"},
        "sidecar": {"mode": "container", "proxyPort": 16000, "image": "registry.local/proxy:v9"},
    }
    (deploy,) = by_kind(render(values), "Deployment")
    assert deploy["spec"]["replicas"] == 3
    container = deploy["spec"]["template"]["spec"]["containers"][0]
    assert container["image"] == "registry.local/corsair:v9"
    assert "--sidecar-mode=container" in container["args"]
    assert "--sidecar-proxy-port=16000" in container["args"]
    assert "--sidecar-image=registry.local/proxy:v9" in container["args"]


def test_a_sidecar_quantity_set_to_null_is_passed_empty():
    """null removes a default (Helm drops the key); the controller then leaves it unset."""
    def sidecar_resource_args(values=None):
        (deploy,) = by_kind(render(values), "Deployment")
        args = deploy["spec"]["template"]["spec"]["containers"][0]["args"]
        return sorted(a for a in args if a.startswith(("--sidecar-cpu", "--sidecar-memory")))

    assert sidecar_resource_args() == [
        "--sidecar-cpu-limit=500m",
        "--sidecar-cpu-request=50m",
        "--sidecar-memory-limit=128Mi",
        "--sidecar-memory-request=32Mi",
    ]
    values = {"sidecar": {"resources": {"limits": {"cpu": None, "memory": "256Mi"}}}}
    assert sidecar_resource_args(values) == [
        "--sidecar-cpu-limit=",
        "--sidecar-cpu-request=50m",
        "--sidecar-memory-limit=256Mi",
        "--sidecar-memory-request=32Mi",
    ]
    assert sidecar_resource_args({"sidecar": {"resources": {"limits": None}}}) == [
        "--sidecar-cpu-limit=",
        "--sidecar-cpu-request=50m",
        "--sidecar-memory-limit=",
        "--sidecar-memory-request=32Mi",
    ]


def test_the_controller_knows_the_namespaces_the_webhook_leaves_out():
    """The controller's --excluded-namespaces is the mutating webhook's namespaceSelector."""
    for values, namespace in [({}, "corsair-system"), ({"webhook": {"excludedNamespaces": ["infra", "kube-system"]}}, "cors")]:
        docs = render(values, namespace=namespace)
        (deploy,) = by_kind(docs, "Deployment")
        args = deploy["spec"]["template"]["spec"]["containers"][0]["args"]
        (flag,) = [a for a in args if a.startswith("--excluded-namespaces=")]
        (mutating,) = by_kind(docs, "MutatingWebhookConfiguration")
        (expression,) = mutating["webhooks"][0]["namespaceSelector"]["matchExpressions"]
        assert expression["key"] == "kubernetes.io/metadata.name" and expression["operator"] == "NotIn"
        assert flag.split("=", 1)[1].split(",") == expression["values"]
        assert namespace in expression["values"]
    # null (Helm drops the key) leaves out the release namespace alone, in both places.
    docs = render({"webhook": {"excludedNamespaces": None}}, namespace="cors")
    (deploy,) = by_kind(docs, "Deployment")
    assert "--excluded-namespaces=cors" in deploy["spec"]["template"]["spec"]["containers"][0]["args"]
    (mutating,) = by_kind(docs, "MutatingWebhookConfiguration")
    assert mutating["webhooks"][0]["namespaceSelector"]["matchExpressions"][0]["values"] == ["cors"]
    # The plain manifests agree with themselves the same way.
    plain = [d for d in yaml.safe_load_all((ROOT / "deploy" / "corsair.yaml").read_text()) if d]
    (deploy,) = by_kind(plain, "Deployment")
    (flag,) = [a for a in deploy["spec"]["template"]["spec"]["containers"][0]["args"] if a.startswith("--excluded-namespaces=")]
    (mutating,) = by_kind(plain, "MutatingWebhookConfiguration")
    (expression,) = mutating["webhooks"][0]["namespaceSelector"]["matchExpressions"]
    assert flag.split("=", 1)[1].split(",") == expression["values"]


def test_the_slim_sidecar_image_is_injected_by_default(corsair_bin):
    app_version = yaml.safe_load((CHART / "Chart.yaml").read_text())["appVersion"]
    (deploy,) = by_kind(render(), "Deployment")
    args = deploy["spec"]["template"]["spec"]["containers"][0]["args"]
    assert f"--sidecar-image=ghcr.io/corsair-dev/corsair-proxy:{app_version}" in args
    # The binary's own default (checked in tests/webhook_https.rs) is this image at the binary's
    # version: the chart's appVersion.
    version = subprocess.run(
        [corsair_bin, "--version"], capture_output=True, text=True, check=True
    ).stdout.split()[-1]
    assert version == app_version
    # It follows the controller image's tag, and the repository can point at a mirror.
    values = {
        "image": {"repository": "registry.local/corsair", "tag": "v9"},
        "sidecar": {"repository": "registry.local/corsair-proxy"},
    }
    (deploy,) = by_kind(render(values), "Deployment")
    args = deploy["spec"]["template"]["spec"]["containers"][0]["args"]
    assert "--sidecar-image=registry.local/corsair-proxy:v9" in args


def test_cert_manager_mode_mounts_the_issued_secret():
    docs = render({"webhook": {"certManager": {"enabled": True}}})
    certs = {c["metadata"]["name"]: c for c in by_kind(docs, "Certificate")}
    issuers = {i["metadata"]["name"]: i for i in by_kind(docs, "Issuer")}
    cert = certs.pop("corsair-webhook")
    # The serving certificate comes from a CA of the chart's own, not from the self-signed
    # Issuer: its ca.crt (the caBundle) then stays the same when the certificate is renewed.
    ca_issuer = issuers[cert["spec"]["issuerRef"]["name"]]
    (ca,) = certs.values()
    assert ca_issuer["spec"]["ca"]["secretName"] == ca["spec"]["secretName"]
    assert ca["spec"]["isCA"] is True
    assert "selfSigned" in issuers[ca["spec"]["issuerRef"]["name"]]["spec"]
    assert int(ca["spec"]["duration"].removesuffix("h")) >= 5 * 365 * 24
    # With an Issuer of the user's, only the serving certificate.
    own = {"name": "corp-ca", "kind": "ClusterIssuer"}
    theirs = render({"webhook": {"certManager": {"enabled": True, "issuerRef": own}}})
    (only,) = by_kind(theirs, "Certificate")
    assert only["spec"]["issuerRef"] == own
    assert by_kind(theirs, "Issuer") == []
    (deploy,) = by_kind(docs, "Deployment")
    pod = deploy["spec"]["template"]["spec"]
    assert pod["volumes"][0]["secret"]["secretName"] == cert["spec"]["secretName"]
    args = pod["containers"][0]["args"]
    assert "--tls-cert=/etc/corsair/tls/tls.crt" in args
    for kind in ["MutatingWebhookConfiguration", "ValidatingWebhookConfiguration"]:
        (hook,) = by_kind(docs, kind)
        assert hook["metadata"]["annotations"]["cert-manager.io/inject-ca-from"].endswith(
            cert["metadata"]["name"]
        )
    # cainjector writes the caBundle: the controller gets no right to patch the webhook
    # configurations, nor any Secret rule, which only the self-managed CA needs.
    def rules(docs):
        return [r for role in by_kind(docs, "ClusterRole") + by_kind(docs, "Role") for r in role["rules"]]

    assert [r for r in rules(docs) if r["apiGroups"] == ["admissionregistration.k8s.io"]] == []
    assert [r for r in rules(docs) if "secrets" in r["resources"]] == []
    (own,) = [r for r in rules(render()) if r["apiGroups"] == ["admissionregistration.k8s.io"]]
    assert own["verbs"] == ["get", "patch"] and len(own["resourceNames"]) == 2


def test_the_disruption_budget_never_blocks_a_node_drain():
    """A budget of one available pod over one replica would refuse every eviction."""
    (pdb,) = by_kind(render(), "PodDisruptionBudget")
    assert pdb["spec"]["minAvailable"] == 1
    assert by_kind(render({"replicaCount": 1}), "PodDisruptionBudget") == []
    (pdb,) = by_kind(render({"replicaCount": 3, "podDisruptionBudget": {"minAvailable": 2}}), "PodDisruptionBudget")
    assert pdb["spec"]["minAvailable"] == 2
    (pdb,) = by_kind(render({"replicaCount": 2, "podDisruptionBudget": {"minAvailable": "50%"}}), "PodDisruptionBudget")
    assert pdb["spec"]["minAvailable"] == "50%"
    # A number (from a file or --set, as text) or a percentage rounded up that keeps them all.
    for fine in ["0%", "50%", 0]:
        by_kind(render({"replicaCount": 2, "podDisruptionBudget": {"minAvailable": fine}}), "PodDisruptionBudget")
    for kept in [2, "2", "100%", "60%", "150%"]:
        with pytest.raises(helm.HelmError) as err:
            render({"replicaCount": 2, "podDisruptionBudget": {"minAvailable": kept}})
        assert f"podDisruptionBudget.minAvailable ({kept}) keeps all 2 replicas" in str(err.value)
    # What the guard cannot read is refused rather than let through (2.0 from --set is text).
    for odd in ["2.0", "0x2", "two"]:
        with pytest.raises(helm.HelmError) as err:
            render({"replicaCount": 2, "podDisruptionBudget": {"minAvailable": odd}})
        assert f"podDisruptionBudget.minAvailable ({odd}) is neither a whole number nor a percentage" in str(err.value)


def test_two_ports_the_same_are_refused_at_render():
    """Otherwise the controller crash-loops (sidecar ports) or cannot bind (its own ports)."""
    for values, message in [
        ({"sidecar": {"proxyPort": 15381}}, "sidecar.proxyPort and sidecar.adminPort are both 15381"),
        ({"webhook": {"port": 8080}}, "webhook.port and controller.adminPort are both 8080"),
    ]:
        with pytest.raises(helm.HelmError) as err:
            render(values)
        assert message in str(err.value)
    by_kind(render({"sidecar": {"proxyPort": 15390}, "webhook": {"port": 9443}}), "Deployment")


def test_schema_rejects_a_mistyped_value():
    chart = helm.Chart.load(str(CHART))
    with pytest.raises(helm.HelmError) as err:
        chart.validate_schema({"sidecar": {"mode": "sometimes"}})
    assert "mode" in str(err.value)
    with pytest.raises(helm.HelmError) as err:
        chart.validate_schema({"replicas": 2})
    assert "replicas" in str(err.value)
    # A quantity the API server would refuse in every injected pod.
    with pytest.raises(helm.HelmError) as err:
        chart.validate_schema({"sidecar": {"resources": {"limits": {"memory": "128MB"}}}})
    assert "memory" in str(err.value)
    for good in ["128Mi", "0.5", "1e3", "500m", ".5"]:
        chart.validate_schema({"sidecar": {"resources": {"limits": {"memory": good, "cpu": good}}}})
    chart.validate_schema({"controller": {"resources": {"requests": {"cpu": 1}}}})


def test_chart_crd_is_the_generated_one(corsair_bin):
    generated = subprocess.run(
        [corsair_bin, "crd"], capture_output=True, text=True, check=True
    ).stdout
    chart_crd = (CHART / "crds" / "corspolicies.corsair.dev.yaml").read_text()
    assert yaml.safe_load(chart_crd) == yaml.safe_load(generated)
    assert yaml.safe_load((ROOT / "deploy" / "crd.yaml").read_text()) == yaml.safe_load(generated)


def test_plain_manifests_match_the_chart():
    """deploy/corsair.yaml and the chart's default render install the same operator."""
    plain = [d for d in yaml.safe_load_all((ROOT / "deploy" / "corsair.yaml").read_text()) if d]
    rendered = {(d["kind"], d["metadata"]["name"]): d for d in render()}
    for doc in plain:
        if doc["kind"] == "Namespace":
            continue
        key = (doc["kind"], doc["metadata"]["name"])
        assert key in rendered, f"{key} is in deploy/corsair.yaml but not rendered by the chart"
        chart_doc = rendered[key]
        if doc["kind"] in ("ClusterRole", "Role"):
            assert chart_doc["rules"] == doc["rules"], key
        if doc["kind"] == "Deployment":
            plain_c = doc["spec"]["template"]["spec"]["containers"][0]
            chart_c = chart_doc["spec"]["template"]["spec"]["containers"][0]
            assert sorted(chart_c["args"]) == sorted(
                plain_c["args"]
                + [a for a in chart_c["args"] if a.startswith(("--lease-name", "--sidecar-proxy-port", "--sidecar-admin-port", "--sidecar-log-level", "--sidecar-cpu", "--sidecar-memory"))]
            ), (chart_c["args"], plain_c["args"])
            assert chart_c["ports"] == plain_c["ports"]
            assert chart_c["securityContext"] == plain_c["securityContext"]
        if doc["kind"] in ("MutatingWebhookConfiguration", "ValidatingWebhookConfiguration"):
            assert chart_doc["webhooks"] == doc["webhooks"], key
