"""A fake Kubernetes API server for the controller's scale benchmark (benches/controller/scale.py).

It holds Deployments, StatefulSets, DaemonSets, CorsPolicies, ConfigMaps, a Lease and Events in
memory and serves what `corsair controller` calls: paginated lists (`limit`/`continue`), watches
from a resourceVersion (chunked JSON lines, kept open until `timeoutSeconds`), label selectors,
server-side applies of ConfigMaps, CorsPolicy status and workload pod templates (a no-op apply
changes nothing and sends no watch event, as on a real API server), Event creation, and the Lease
of the leader election. Every write is counted by kind, so the benchmark can say what the
controller wrote and when.
"""

import copy
import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlparse

WORKLOAD_MANAGER = "corsair-workload-controller"
INJECT_LABEL = "corsair.dev/inject"
POLICY_ANNOTATION = "corsair.dev/policy"

# (path segment, group/version prefix, kind)
KINDS = {
    "deployments": ("/apis/apps/v1", "Deployment"),
    "statefulsets": ("/apis/apps/v1", "StatefulSet"),
    "daemonsets": ("/apis/apps/v1", "DaemonSet"),
    "corspolicies": ("/apis/corsair.dev/v1alpha1", "CorsPolicy"),
    "configmaps": ("/api/v1", "ConfigMap"),
    "pods": ("/api/v1", "Pod"),
}


class Store:
    """Objects by kind and (namespace, name), and the log of watch events."""

    def __init__(self):
        self.lock = threading.Condition()
        self.rv = 1
        self.objects = {plural: {} for plural in KINDS}
        self.events = {plural: [] for plural in KINDS}  # (rv, type, json bytes)
        self.writes = []  # (time, category, method, path)
        self.lease = None

    def add(self, plural, obj):
        """Adds an object at start, before any client lists."""
        with self.lock:
            self.rv += 1
            meta = obj["metadata"]
            meta["resourceVersion"] = str(self.rv)
            self.objects[plural][(meta["namespace"], meta["name"])] = obj

    def put(self, plural, obj, event_type):
        """Stores a changed object and tells the watches. Caller holds the lock."""
        self.rv += 1
        meta = obj["metadata"]
        meta["resourceVersion"] = str(self.rv)
        key = (meta["namespace"], meta["name"])
        if event_type == "DELETED":
            self.objects[plural].pop(key, None)
        else:
            self.objects[plural][key] = obj
        line = json.dumps({"type": event_type, "object": obj}).encode() + b"\n"
        self.events[plural].append((self.rv, line))
        self.lock.notify_all()

    def count(self, category, method, path):
        with self.lock:
            self.writes.append((time.monotonic(), category, method, path))

    def writes_since(self, t0):
        with self.lock:
            out = {}
            for t, category, _, _ in self.writes:
                if t >= t0:
                    out[category] = out.get(category, 0) + 1
            return out


def selector_matches(selector, labels):
    for term in filter(None, (selector or "").split(",")):
        if "=" not in term:
            return False
        k, v = term.split("=", 1)
        if (labels or {}).get(k.rstrip("=")) != v:
            return False
    return True


def make_handler(store):
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *args):
            pass

        def send_json(self, status, body):
            data = json.dumps(body).encode() if not isinstance(body, bytes) else body
            self.send_response(status)
            self.send_header("content-type", "application/json")
            self.send_header("content-length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def not_found(self):
            self.send_json(404, {"kind": "Status", "apiVersion": "v1", "status": "Failure",
                                 "reason": "NotFound", "code": 404})

        def body(self):
            length = int(self.headers.get("content-length") or 0)
            raw = self.rfile.read(length) if length else b""
            return json.loads(raw) if raw else None

        def route(self):
            """(plural, namespace, name, subresource) of a resource path, or None."""
            url = urlparse(self.path)
            parts = [p for p in url.path.split("/") if p]
            query = {k: v[0] for k, v in parse_qs(url.query).items()}
            for plural, (prefix, _) in KINDS.items():
                pre = [p for p in prefix.split("/") if p]
                if parts[: len(pre)] != pre:
                    continue
                rest = parts[len(pre):]
                if rest == [plural]:
                    return plural, None, None, None, query
                if len(rest) >= 3 and rest[0] == "namespaces" and rest[2] == plural:
                    name = rest[3] if len(rest) > 3 else None
                    sub = rest[4] if len(rest) > 4 else None
                    return plural, rest[1], name, sub, query
            return None, None, None, None, query

        # --- GET: lists and watches ---------------------------------------------------------

        def do_GET(self):
            url = urlparse(self.path)
            if url.path == "/version":
                return self.send_json(200, {
                    "major": "1", "minor": "33", "gitVersion": "v1.33.0", "gitCommit": "x",
                    "gitTreeState": "clean", "buildDate": "2025-01-01T00:00:00Z",
                    "goVersion": "go1.24", "compiler": "gc", "platform": "linux/amd64"})
            if "/leases/" in url.path:
                with store.lock:
                    lease = store.lease
                return self.send_json(200, lease) if lease else self.not_found()
            plural, namespace, name, _, query = self.route()
            if plural is None:
                if url.path.endswith("/secrets") or "webhookconfigurations" in url.path:
                    return self.not_found()
                return self.send_json(200, {"apiVersion": "v1", "kind": "List",
                                            "metadata": {"resourceVersion": "1"}, "items": []})
            if name is not None:
                with store.lock:
                    obj = store.objects[plural].get((namespace, name))
                return self.send_json(200, obj) if obj else self.not_found()
            if query.get("watch") in ("true", "1"):
                return self.watch(plural, query)
            return self.list(plural, namespace, query)

        def list(self, plural, namespace, query):
            selector = query.get("labelSelector")
            limit = int(query.get("limit") or 0)
            start = int(query.get("continue") or 0)
            with store.lock:
                keys = sorted(store.objects[plural])
                rv = store.rv
                matching = [store.objects[plural][k] for k in keys
                            if (namespace is None or k[0] == namespace)
                            and selector_matches(selector, store.objects[plural][k]["metadata"].get("labels"))]
                end = start + limit if limit else len(matching)
                page = matching[start:end]
                data = json.dumps({
                    "apiVersion": "v1", "kind": "List",
                    "metadata": {"resourceVersion": str(rv),
                                 **({"continue": str(end)} if end < len(matching) else {})},
                    "items": page}).encode()
            self.send_json(200, data)

        def watch(self, plural, query):
            since = int(query.get("resourceVersion") or 0)
            timeout = min(int(query.get("timeoutSeconds") or 290), 290)
            selector = query.get("labelSelector")
            deadline = time.monotonic() + timeout
            self.send_response(200)
            self.send_header("content-type", "application/json")
            self.send_header("transfer-encoding", "chunked")
            self.end_headers()
            sent = since
            try:
                while time.monotonic() < deadline:
                    with store.lock:
                        pending = [(rv, line) for rv, line in store.events[plural] if rv > sent]
                        if not pending:
                            store.lock.wait(timeout=1.0)
                            continue
                    for rv, line in pending:
                        sent = rv
                        if selector and not selector_matches(
                                selector, json.loads(line)["object"]["metadata"].get("labels")):
                            continue
                        self.wfile.write(b"%x\r\n%s\r\n" % (len(line), line))
                    self.wfile.flush()
                self.wfile.write(b"0\r\n\r\n")
            except (BrokenPipeError, ConnectionResetError):
                pass

        # --- writes ---------------------------------------------------------------------------

        def do_POST(self):
            body = self.body()
            if "/leases" in self.path:
                store.count("lease", "POST", self.path)
                with store.lock:
                    body["metadata"]["resourceVersion"] = "1"
                    store.lease = body
                return self.send_json(201, body)
            if "/events" in self.path:
                store.count("event", "POST", self.path)
                body.setdefault("metadata", {})["resourceVersion"] = "1"
                return self.send_json(201, body)
            if "/corspolicies" in self.path and "dryRun=All" in self.path:
                # The leader's check that the API server reaches the webhooks, before it opts
                # workloads in: answered as a cluster whose validating webhook is reached.
                store.count("webhook-check", "POST", self.path)
                return self.send_json(400, {
                    "kind": "Status", "apiVersion": "v1", "status": "Failure", "code": 400,
                    "reason": "BadRequest",
                    "message": 'admission webhook "validate.corsair.dev" denied the request: '
                               'spec.allowOrigins[0]: not an origin'})
            store.count("other", "POST", self.path)
            self.send_json(201, body or {})

        def do_PUT(self):
            body = self.body()
            if "/leases/" in self.path:
                store.count("lease", "PUT", self.path)
                with store.lock:
                    store.lease = body
                return self.send_json(200, body)
            store.count("other", "PUT", self.path)
            self.not_found()

        def do_PATCH(self):
            body = self.body()
            if "/leases/" in self.path:
                store.count("lease", "PATCH", self.path)
                with store.lock:
                    if store.lease is None:
                        return self.not_found()
                    spec = store.lease.setdefault("spec", {})
                    for k, v in (body or {}).get("spec", {}).items():
                        if v is None:
                            spec.pop(k, None)
                        else:
                            spec[k] = v
                    lease = copy.deepcopy(store.lease)
                return self.send_json(200, lease)
            if "/events/" in self.path:
                store.count("event", "PATCH", self.path)
                return self.send_json(200, body or {})
            plural, namespace, name, sub, _ = self.route()
            if plural is None or name is None:
                store.count("other", "PATCH", self.path)
                return self.not_found()
            if plural == "corspolicies" and sub == "status":
                store.count("status", "PATCH", self.path)
                return self.apply_status(namespace, name, body)
            if plural == "configmaps":
                store.count("configmap", "PATCH", self.path)
                return self.apply_configmap(namespace, name, body)
            if plural in ("deployments", "statefulsets", "daemonsets"):
                store.count("workload", "PATCH", self.path)
                return self.apply_workload(plural, namespace, name, body)
            store.count("other", "PATCH", self.path)
            self.not_found()

        def apply_status(self, namespace, name, body):
            with store.lock:
                obj = store.objects["corspolicies"].get((namespace, name))
                if obj is None:
                    return self.not_found()
                status = body.get("status")
                if obj.get("status") != status:
                    obj = copy.deepcopy(obj)
                    obj["status"] = status
                    store.put("corspolicies", obj, "MODIFIED")
                answer = json.dumps(obj).encode()
            self.send_json(200, answer)

        def apply_configmap(self, namespace, name, body):
            with store.lock:
                old = store.objects["configmaps"].get((namespace, name))
                meta = body.get("metadata", {})
                declared = (body.get("data"), meta.get("labels"), meta.get("ownerReferences"))
                if old is not None and (old.get("data"), old["metadata"].get("labels"),
                                        old["metadata"].get("ownerReferences")) == declared:
                    answer = json.dumps(old).encode()
                else:
                    obj = {"apiVersion": "v1", "kind": "ConfigMap",
                           "metadata": {"name": name, "namespace": namespace,
                                        "uid": f"uid-cm-{namespace}-{name}",
                                        "labels": meta.get("labels"),
                                        "ownerReferences": meta.get("ownerReferences"),
                                        "managedFields": [{
                                            "manager": "corsair-policy-controller",
                                            "operation": "Apply", "apiVersion": "v1",
                                            "fieldsType": "FieldsV1",
                                            "fieldsV1": {"f:data": {"f:policy.json": {}}}}]},
                           "data": body.get("data")}
                    store.put("configmaps", obj, "MODIFIED" if old else "ADDED")
                    answer = json.dumps(obj).encode()
            self.send_json(200, answer)

        def apply_workload(self, plural, namespace, name, body):
            with store.lock:
                old = store.objects[plural].get((namespace, name))
                if old is None:
                    return self.not_found()
                obj = copy.deepcopy(old)
                template = obj["spec"]["template"].setdefault("metadata", {})
                labels = template.setdefault("labels", {})
                annotations = template.setdefault("annotations", {})
                managed = [m for m in obj["metadata"].get("managedFields", [])
                           if m.get("manager") != WORKLOAD_MANAGER]
                declared = (((body or {}).get("spec") or {}).get("template") or {}).get("metadata")
                if declared:
                    labels.update(declared.get("labels") or {})
                    annotations.update(declared.get("annotations") or {})
                    managed.append({
                        "manager": WORKLOAD_MANAGER, "operation": "Apply",
                        "apiVersion": "apps/v1", "fieldsType": "FieldsV1",
                        "fieldsV1": {"f:spec": {"f:template": {"f:metadata": {
                            "f:labels": {f"f:{INJECT_LABEL}": {}},
                            "f:annotations": {f"f:{POLICY_ANNOTATION}": {}}}}}}})
                else:
                    labels.pop(INJECT_LABEL, None)
                    annotations.pop(POLICY_ANNOTATION, None)
                obj["metadata"]["managedFields"] = managed
                if obj != old:
                    if obj["spec"] != old["spec"]:
                        obj["metadata"]["generation"] = old["metadata"].get("generation", 1) + 1
                    store.put(plural, obj, "MODIFIED")
                answer = json.dumps(obj).encode()
            self.send_json(200, answer)

        def do_DELETE(self):
            store.count("other", "DELETE", self.path)
            self.not_found()

    return Handler


class Server(ThreadingHTTPServer):
    # The controller opens many connections at once when it starts reconciling.
    request_queue_size = 1024
    daemon_threads = True


def serve(store, port=0):
    server = Server(("127.0.0.1", port), make_handler(store))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    return server
