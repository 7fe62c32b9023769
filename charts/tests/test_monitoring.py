"""Prometheus Operator monitors, the Grafana dashboard and the `helm test` hook of the chart.

The monitoring.coreos.com CRDs are not in kubernetes-validate's schemas, so the monitors' shape is
checked here field by field; everything else is validated against Kubernetes 1.33."""

import json
import re
import subprocess

import yaml

from conftest import ROOT, by_kind, kubernetes_validate, render

ALL_ON = {
    "metrics": {
        "serviceMonitor": {"enabled": True, "labels": {"release": "kube-prometheus-stack"}},
        "podMonitor": {"enabled": True},
        "grafanaDashboard": {"enabled": True, "annotations": {"grafana_folder": "Corsair"}},
    }
}


def rust_const(path, name):
    """The value of a `pub const NAME: &str = "..."` in the Rust sources."""
    text = (ROOT / path).read_text()
    match = re.search(rf'const {name}: &str = "([^"]+)"', text)
    assert match, f"{name} not found in {path}"
    return match.group(1)


def test_monitors_and_dashboard_are_off_by_default():
    docs = render()
    kinds = {d["kind"] for d in docs}
    assert "ServiceMonitor" not in kinds and "PodMonitor" not in kinds
    assert not [d for d in by_kind(docs, "ConfigMap") if "grafana_dashboard" in d["metadata"]["labels"]]


def test_service_monitor_scrapes_the_controller_service():
    docs = render(ALL_ON)
    (sm,) = by_kind(docs, "ServiceMonitor")
    assert sm["apiVersion"] == "monitoring.coreos.com/v1"
    assert sm["metadata"]["namespace"] == "corsair-system"
    assert sm["metadata"]["labels"]["release"] == "kube-prometheus-stack"
    (svc,) = by_kind(docs, "Service")
    selector = sm["spec"]["selector"]["matchLabels"]
    assert selector and all(svc["metadata"]["labels"].get(k) == v for k, v in selector.items()), (
        selector,
        svc["metadata"]["labels"],
    )
    assert sm["spec"]["namespaceSelector"] == {"matchNames": ["corsair-system"]}
    (endpoint,) = sm["spec"]["endpoints"]
    port = next(p for p in svc["spec"]["ports"] if p["name"] == endpoint["port"])
    assert port["targetPort"] == "admin"
    assert endpoint["path"] == "/metrics"
    assert re.fullmatch(r"[0-9]+s", endpoint["interval"]) and re.fullmatch(r"[0-9]+s", endpoint["scrapeTimeout"])
    assert set(sm["spec"]) == {"selector", "namespaceSelector", "endpoints"}


def test_pod_monitor_scrapes_every_injected_sidecar():
    (pm,) = by_kind(render(ALL_ON), "PodMonitor")
    assert pm["apiVersion"] == "monitoring.coreos.com/v1"
    # What the controller puts on opted-in pod templates, and the name the webhook gives the
    # sidecar's admin port.
    assert pm["spec"]["selector"] == {"matchLabels": {"corsair.dev/inject": "enabled"}}
    assert pm["spec"]["namespaceSelector"] == {"any": True}
    (endpoint,) = pm["spec"]["podMetricsEndpoints"]
    assert endpoint["port"] == rust_const("crates/corsair-controller/src/names.rs", "ADMIN_PORT_NAME")
    assert endpoint["path"] == "/metrics"
    assert set(pm["spec"]) == {"selector", "namespaceSelector", "podMetricsEndpoints"}
    (limited,) = by_kind(render({"metrics": {"podMonitor": {"enabled": True, "namespaces": ["shop"]}}}), "PodMonitor")
    assert limited["spec"]["namespaceSelector"] == {"matchNames": ["shop"]}


def test_dashboard_configmap_is_the_committed_dashboard(tmp_path):
    docs = render(ALL_ON)
    (cm,) = [d for d in by_kind(docs, "ConfigMap") if d["metadata"]["name"].endswith("-dashboard")]
    assert cm["metadata"]["labels"]["grafana_dashboard"] == "1"
    assert cm["metadata"]["annotations"] == {"grafana_folder": "Corsair"}
    committed = json.loads((ROOT / "deploy/grafana/corsair.json").read_text())
    assert json.loads(cm["data"]["corsair.json"]) == committed
    chart_copy = (ROOT / "charts/corsair/dashboards/corsair.json").read_text()
    assert chart_copy == (ROOT / "deploy/grafana/corsair.json").read_text(), "run `make generate`"
    # Every rendered object except the monitors passes the Kubernetes schema.
    plain = [d for d in docs if d["apiVersion"] != "monitoring.coreos.com/v1"]
    out = tmp_path / "rendered.yaml"
    out.write_text(yaml.safe_dump_all(plain))
    code, output = kubernetes_validate([out])
    assert code == 0, output


def test_dashboard_covers_what_the_issue_asks():
    dashboard = json.loads((ROOT / "deploy/grafana/corsair.json").read_text())
    exprs = " ".join(t["expr"] for p in dashboard["panels"] for t in p["targets"])
    for needle in [
        "corsair_proxy_requests_total",  # decisions by kind and result
        'decision="denied"',
        'corsair_proxy_policy_reloads_total{result="failed"',
        "corsair_proxy_request_duration_seconds_bucket",
        "corsair_webhook_injections_total",
        "corsair_controller_reconcile_errors_total",
    ]:
        assert needle in exprs, needle
    assert "sum by (kind, decision)" in exprs


def test_helm_test_hook_probes_the_webhook_service(corsair_bin, tmp_path):
    docs = render()
    tests = [d for d in docs if d["metadata"].get("annotations", {}).get("helm.sh/hook") == "test"]
    assert len(tests) == 1, [d["metadata"]["name"] for d in docs]
    (pod,) = tests
    assert pod["kind"] == "Pod" and pod["spec"]["restartPolicy"] == "Never"
    (deploy,) = by_kind(docs, "Deployment")
    (container,) = pod["spec"]["containers"]
    # Only the Corsair image.
    assert container["image"] == deploy["spec"]["template"]["spec"]["containers"][0]["image"]
    args = container["args"]
    assert args[0] == "probe"
    (svc,) = by_kind(docs, "Service")
    webhook_port = next(p for p in svc["spec"]["ports"] if p["targetPort"] == "webhook")
    url = f"https://{svc['metadata']['name']}.corsair-system.svc:{webhook_port['port']}/validate"
    assert f"--url={url}" in args, args
    (vwc,) = by_kind(docs, "ValidatingWebhookConfiguration")
    assert vwc["webhooks"][0]["clientConfig"]["service"]["name"] == svc["metadata"]["name"]
    # The CA comes from the Secret the controller serves its certificate from.
    (volume,) = pod["spec"]["volumes"]
    controller_args = deploy["spec"]["template"]["spec"]["containers"][0]["args"]
    assert f"--cert-secret={volume['secret']['secretName']}" in controller_args, controller_args
    certs = by_kind(render({"webhook": {"certManager": {"enabled": True}}}), "Certificate")
    (serving,) = [c for c in certs if not c["spec"].get("isCA")]
    assert serving["spec"]["secretName"] == volume["secret"]["secretName"]
    mount = container["volumeMounts"][0]["mountPath"]
    assert f"--ca-file={mount}/ca.crt" in args
    # Every flag the hook passes is one `corsair probe` has.
    help_text = subprocess.run([corsair_bin, "probe", "--help"], capture_output=True, text=True, check=True).stdout
    for arg in args[1:]:
        assert arg.split("=")[0] in help_text, arg
    # It passes the Kubernetes schema and the restricted Pod Security Standard's fields.
    assert container["securityContext"]["allowPrivilegeEscalation"] is False
    assert pod["spec"]["securityContext"]["runAsNonRoot"] is True
    out = tmp_path / "test-pod.yaml"
    out.write_text(yaml.safe_dump(pod))
    code, output = kubernetes_validate([out])
    assert code == 0, output
    assert not [d for d in render({"helmTest": {"enabled": False}}) if d["kind"] == "Pod"]
