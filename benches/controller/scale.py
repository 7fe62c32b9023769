"""Scale benchmark of `corsair controller` against the fake API server of fake_api.py.

The fake holds N Deployments across M namespaces, each about 5 KB as an API server returns it
(pod spec, status, managedFields, last-applied-configuration), A of them annotated with
`corsair.dev/policy`, and P CorsPolicies. The script starts the controller binary against it and
reports, as a JSON document and a table:

- time to the first full reconcile: every policy's status at its generation, every ConfigMap
  rendered, every annotated Deployment labelled;
- the controller's RSS then (VmRSS) and its peak (VmHWM);
- the API writes at start, by kind (Lease renewals are counted apart: they are the election);
- the writes in IDLE seconds with nothing changing;
- the writes caused by changing one annotated Deployment's image (its spec, then its status, as
  the Deployment controller would), and by changing one CorsPolicy's spec;
- the writes of a restart with everything already in place;
- reconcile p99, from the controller's `corsair_controller_reconcile_duration_seconds` histogram
  (the upper bound of the bucket holding the 99th percentile).

Usage: python3 benches/controller/scale.py --bin target/release/corsair [--deployments 10000]
       [--namespaces 100] [--annotated 500] [--policies 1000] [--idle 60] [--json FILE]
"""

import argparse
import copy
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import fake_api  # noqa: E402


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def deployment(ns, name, index, policy):
    """A Deployment as `kubectl apply` leaves it and the API server returns it."""
    labels = {"app": name, "team": f"team-{index % 7}", "tier": "backend"}
    env = [{"name": f"SETTING_{i}", "value": f"value-{index}-{i}-" + "x" * 24} for i in range(8)]
    container = {
        "name": "app", "image": f"registry.example.com/{name}:1.0.{index}",
        "ports": [{"name": "http", "containerPort": 8080, "protocol": "TCP"}],
        "env": env,
        "resources": {"requests": {"cpu": "100m", "memory": "128Mi"},
                      "limits": {"cpu": "1", "memory": "512Mi"}},
        "readinessProbe": {"httpGet": {"path": "/ready", "port": "http", "scheme": "HTTP"},
                           "periodSeconds": 10, "timeoutSeconds": 1, "successThreshold": 1,
                           "failureThreshold": 3},
        "terminationMessagePath": "/dev/termination-log", "terminationMessagePolicy": "File",
        "imagePullPolicy": "IfNotPresent",
    }
    spec = {
        "replicas": 2, "revisionHistoryLimit": 10, "progressDeadlineSeconds": 600,
        "selector": {"matchLabels": {"app": name}},
        "strategy": {"type": "RollingUpdate",
                     "rollingUpdate": {"maxUnavailable": "25%", "maxSurge": "25%"}},
        "template": {
            "metadata": {"labels": dict(labels)},
            "spec": {"containers": [container], "restartPolicy": "Always",
                     "terminationGracePeriodSeconds": 30, "dnsPolicy": "ClusterFirst",
                     "securityContext": {}, "schedulerName": "default-scheduler"},
        },
    }
    applied = {"apiVersion": "apps/v1", "kind": "Deployment",
               "metadata": {"name": name, "namespace": ns, "labels": labels},
               "spec": {"replicas": 2, "selector": spec["selector"],
                        "template": {"metadata": {"labels": labels},
                                     "spec": {"containers": [{"name": "app",
                                                              "image": container["image"],
                                                              "ports": container["ports"],
                                                              "env": env}]}}}}
    annotations = {
        "deployment.kubernetes.io/revision": "1",
        "kubectl.kubernetes.io/last-applied-configuration": json.dumps(applied),
    }
    managed = [
        {"manager": "kubectl-client-side-apply", "operation": "Update", "apiVersion": "apps/v1",
         "time": "2026-11-01T10:00:00Z", "fieldsType": "FieldsV1",
         "fieldsV1": {"f:metadata": {"f:labels": {f"f:{k}": {} for k in labels}},
                      "f:spec": {"f:replicas": {}, "f:selector": {},
                                 "f:template": {"f:metadata": {"f:labels": {f"f:{k}": {} for k in labels}},
                                                "f:spec": {"f:containers": {'k:{"name":"app"}': {
                                                    ".": {}, "f:env": {f'k:{{"name":"SETTING_{i}"}}': {".": {}, "f:name": {}, "f:value": {}} for i in range(8)},
                                                    "f:image": {}, "f:name": {}, "f:ports": {}}}}}}}},
        {"manager": "kube-controller-manager", "operation": "Update", "apiVersion": "apps/v1",
         "time": "2026-11-01T10:00:05Z", "fieldsType": "FieldsV1", "subresource": "status",
         "fieldsV1": {"f:status": {"f:availableReplicas": {}, "f:conditions": {},
                                   "f:observedGeneration": {}, "f:readyReplicas": {},
                                   "f:replicas": {}, "f:updatedReplicas": {}}}},
    ]
    if policy:
        annotations[fake_api.POLICY_ANNOTATION] = policy
        managed.append({"manager": "kubectl-annotate", "operation": "Update",
                        "apiVersion": "apps/v1", "time": "2026-11-01T10:01:00Z",
                        "fieldsType": "FieldsV1",
                        "fieldsV1": {"f:metadata": {"f:annotations": {
                            f"f:{fake_api.POLICY_ANNOTATION}": {}}}}})
    return {
        "apiVersion": "apps/v1", "kind": "Deployment",
        "metadata": {"name": name, "namespace": ns, "uid": f"uid-{ns}-{name}", "generation": 1,
                     "creationTimestamp": "2026-11-01T10:00:00Z", "labels": labels,
                     "annotations": annotations, "managedFields": managed},
        "spec": spec,
        "status": {"observedGeneration": 1, "replicas": 2, "updatedReplicas": 2,
                   "readyReplicas": 2, "availableReplicas": 2,
                   "conditions": [{"type": t, "status": "True", "reason": r,
                                   "message": f"Deployment {name} {r}",
                                   "lastUpdateTime": "2026-11-01T10:00:05Z",
                                   "lastTransitionTime": "2026-11-01T10:00:05Z"}
                                  for t, r in (("Available", "MinimumReplicasAvailable"),
                                               ("Progressing", "NewReplicaSetAvailable"))]},
    }


def policy(ns, name, index):
    return {
        "apiVersion": "corsair.dev/v1alpha1", "kind": "CorsPolicy",
        "metadata": {"name": name, "namespace": ns, "uid": f"uid-{ns}-{name}", "generation": 1,
                     "creationTimestamp": "2026-11-01T10:00:00Z",
                     "annotations": {"kubectl.kubernetes.io/last-applied-configuration": "{}"},
                     "managedFields": [{"manager": "kubectl", "operation": "Apply",
                                        "apiVersion": "corsair.dev/v1alpha1",
                                        "fieldsType": "FieldsV1",
                                        "fieldsV1": {"f:spec": {"f:allowOrigins": {}}}}]},
        "spec": {"allowOrigins": [f"https://app-{index}.example.com"],
                 "allowMethods": ["GET", "POST"], "allowHeaders": ["content-type"],
                 "maxAge": 600},
    }


def pod(ns, deployment_name, replica):
    """A running pod of an opted-in Deployment, the proxy injected: what the leader's watch of
    labelled pods lists (the fake sends whole pods where an API server sends metadata only)."""
    name = f"{deployment_name}-7d9f8c6b5-{replica:05}"
    return {
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": name, "namespace": ns, "uid": f"uid-{ns}-{name}",
                     "creationTimestamp": "2026-11-01T10:00:00Z",
                     "labels": {"app": deployment_name, fake_api.INJECT_LABEL: "enabled",
                                "pod-template-hash": "7d9f8c6b5"},
                     "annotations": {fake_api.POLICY_ANNOTATION: "policy-0",
                                     "corsair.dev/injected": json.dumps(
                                         {"container": "corsair-proxy", "port": "http"})},
                     "ownerReferences": [{"apiVersion": "apps/v1", "kind": "ReplicaSet",
                                          "name": f"{deployment_name}-7d9f8c6b5",
                                          "uid": f"uid-{ns}-{deployment_name}-rs",
                                          "controller": True, "blockOwnerDeletion": True}]},
        "spec": {"containers": [
            {"name": "app", "image": "registry.example.com/app:1.0",
             "ports": [{"name": "http", "containerPort": 8080}]},
            {"name": "corsair-proxy", "image": "ghcr.io/corsair/corsair-proxy:0.1.0",
             "ports": [{"name": "corsair-http", "containerPort": 15380}]}]},
        "status": {"phase": "Running", "podIP": "10.0.0.1"},
    }


def populate(store, args):
    per_ns_deploy = args.deployments // args.namespaces
    per_ns_annotated = args.annotated // args.namespaces
    per_ns_policies = args.policies // args.namespaces
    annotated = []
    sizes = []
    for n in range(args.namespaces):
        ns = f"ns-{n:03}"
        for p in range(per_ns_policies):
            store.add("corspolicies", policy(ns, f"policy-{p}", n * per_ns_policies + p))
        for d in range(per_ns_deploy):
            name = f"app-{d:03}"
            pol = f"policy-{d % max(per_ns_policies, 1)}" if d < per_ns_annotated else None
            obj = deployment(ns, name, n * per_ns_deploy + d, pol)
            if len(sizes) < 200:
                sizes.append(len(json.dumps(obj)))
            store.add("deployments", obj)
            if pol:
                annotated.append((ns, name))
                for replica in range(2):
                    store.add("pods", pod(ns, name, replica))
    return annotated, sum(sizes) / max(len(sizes), 1)


def synced(store, annotated, policies):
    with store.lock:
        pols = store.objects["corspolicies"]
        if len(store.objects["configmaps"]) < policies:
            return False
        for obj in pols.values():
            status = obj.get("status") or {}
            if status.get("observedGeneration") != obj["metadata"]["generation"]:
                return False
        deps = store.objects["deployments"]
        for key in annotated:
            labels = deps[key]["spec"]["template"].get("metadata", {}).get("labels", {})
            if labels.get(fake_api.INJECT_LABEL) != "enabled":
                return False
    return True


def rss_kib(pid):
    out = {}
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(("VmRSS", "VmHWM", "RssAnon", "RssFile")):
                key, value = line.split(":")
                out[key] = int(value.split()[0])
    return out


def scrape_p99(admin):
    try:
        text = urllib.request.urlopen(f"http://{admin}/metrics", timeout=5).read().decode()
    except OSError:
        return None
    buckets = {}
    for line in text.splitlines():
        if line.startswith("corsair_controller_reconcile_duration_seconds_bucket"):
            le = line.split('le="')[1].split('"')[0]
            buckets[le] = buckets.get(le, 0) + float(line.rsplit(" ", 1)[1])
    if not buckets:
        return None
    total = buckets.get("+Inf", 0)
    for le, count in sorted(((float(k), v) for k, v in buckets.items()), key=lambda kv: kv[0]):
        if count >= 0.99 * total:
            return {"p99_le_seconds": le, "reconciles": int(total)}
    return None


def quiet(store, seconds=3.0, limit=120.0):
    """Waits until no write (Leases aside) came for `seconds`."""
    end = time.monotonic() + limit
    while time.monotonic() < end:
        with store.lock:
            last = max((t for t, c, _, _ in store.writes if c != "lease"), default=0)
        if time.monotonic() - last >= seconds:
            return
        time.sleep(0.2)


def without_lease(writes):
    return {k: v for k, v in writes.items() if k != "lease"}


class Controller:
    def __init__(self, binary, workdir, api_port):
        self.admin = f"127.0.0.1:{free_port()}"
        kubeconfig = os.path.join(workdir, "kubeconfig")
        with open(kubeconfig, "w") as f:
            f.write(f"apiVersion: v1\nkind: Config\nclusters:\n- name: fake\n  cluster:\n"
                    f"    server: http://127.0.0.1:{api_port}\nusers:\n- name: u\n  user: {{}}\n"
                    "contexts:\n- name: c\n  context:\n    cluster: fake\n    user: u\n"
                    "current-context: c\n")
        cert, key = os.path.join(workdir, "tls.crt"), os.path.join(workdir, "tls.key")
        if not os.path.exists(cert):
            subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt",
                            "ec_paramgen_curve:prime256v1", "-nodes", "-days", "2",
                            "-subj", "/CN=localhost", "-keyout", key, "-out", cert],
                           check=True, capture_output=True)
        env = dict(os.environ, KUBECONFIG=kubeconfig, HOME=workdir,
                   CORSAIR_LOG=os.environ.get("CORSAIR_LOG", "warn"))
        env.pop("KUBERNETES_SERVICE_HOST", None)
        self.log = open(os.path.join(workdir, "controller.log"), "ab")
        self.proc = subprocess.Popen(
            [binary, "controller", "--pod-name", "bench", "--namespace", "corsair-system",
             "--shutdown-delay", "0", "--sidecar-mode", "container",
             f"--admin-listen={self.admin}", f"--webhook-listen=127.0.0.1:{free_port()}",
             f"--tls-cert={cert}", f"--tls-key={key}"],
            env=env, stdout=subprocess.DEVNULL, stderr=self.log)

    def stop(self):
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self.log.close()


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--bin", required=True)
    parser.add_argument("--deployments", type=int, default=10000)
    parser.add_argument("--namespaces", type=int, default=100)
    parser.add_argument("--annotated", type=int, default=500)
    parser.add_argument("--policies", type=int, default=1000)
    parser.add_argument("--idle", type=float, default=60)
    parser.add_argument("--timeout", type=float, default=900)
    parser.add_argument("--json")
    args = parser.parse_args()

    store = fake_api.Store()
    annotated, avg_size = populate(store, args)
    server = fake_api.serve(store)
    port = server.server_address[1]
    result = {"binary": args.bin, "deployments": args.deployments,
              "namespaces": args.namespaces, "annotated": len(annotated),
              "policies": args.policies, "deployment_json_bytes": round(avg_size)}
    print(f"fake API server on 127.0.0.1:{port}: {json.dumps(result)}", flush=True)

    with tempfile.TemporaryDirectory() as workdir:
        t0 = time.monotonic()
        controller = Controller(args.bin, workdir, port)
        try:
            while not synced(store, annotated, args.policies):
                if controller.proc.poll() is not None:
                    raise SystemExit(f"the controller exited with {controller.proc.returncode}")
                if time.monotonic() - t0 > args.timeout:
                    raise SystemExit("no full reconcile within the timeout")
                time.sleep(0.1)
            result["first_full_reconcile_seconds"] = round(time.monotonic() - t0, 2)
            quiet(store)
            result["rss_after_sync_kib"] = rss_kib(controller.proc.pid)
            result["writes_at_start"] = store.writes_since(t0)

            t1 = time.monotonic()
            time.sleep(args.idle)
            result["idle_seconds"] = args.idle
            result["writes_idle"] = without_lease(store.writes_since(t1))

            # One annotated Deployment's image changes: the spec, then the status.
            t2 = time.monotonic()
            with store.lock:
                key = annotated[0]
                obj = copy.deepcopy(store.objects["deployments"][key])
                obj["spec"]["template"]["spec"]["containers"][0]["image"] += "-next"
                obj["metadata"]["generation"] += 1
                store.put("deployments", obj, "MODIFIED")
                obj = copy.deepcopy(obj)
                obj["status"]["observedGeneration"] = obj["metadata"]["generation"]
                store.put("deployments", obj, "MODIFIED")
            time.sleep(3)
            quiet(store)
            result["writes_image_change"] = without_lease(store.writes_since(t2))

            # One CorsPolicy's spec changes.
            t3 = time.monotonic()
            with store.lock:
                key = next(iter(sorted(store.objects["corspolicies"])))
                obj = copy.deepcopy(store.objects["corspolicies"][key])
                obj["spec"]["maxAge"] = 1200
                obj["metadata"]["generation"] += 1
                store.put("corspolicies", obj, "MODIFIED")
            time.sleep(3)
            quiet(store)
            result["writes_policy_change"] = without_lease(store.writes_since(t3))
            result["reconcile"] = scrape_p99(controller.admin)
            result["rss_end_kib"] = rss_kib(controller.proc.pid)
        finally:
            controller.stop()

        # A restart with everything in place.
        t4 = time.monotonic()
        controller = Controller(args.bin, workdir, port)
        try:
            time.sleep(3)
            deadline = time.monotonic() + args.timeout
            while time.monotonic() < deadline:
                p = scrape_p99(controller.admin)
                if p and p["reconciles"] >= args.policies + len(annotated):
                    break
                if controller.proc.poll() is not None:
                    raise SystemExit(f"the controller exited with {controller.proc.returncode}")
                time.sleep(0.5)
            result["restart_sync_seconds"] = round(time.monotonic() - t4, 2)
            quiet(store)
            result["writes_at_restart"] = without_lease(store.writes_since(t4))
            result["rss_after_restart_kib"] = rss_kib(controller.proc.pid)
        finally:
            controller.stop()

    text = json.dumps(result, indent=2)
    print(text)
    if args.json:
        with open(args.json, "w") as f:
            f.write(text + "\n")


if __name__ == "__main__":
    main()
