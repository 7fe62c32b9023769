"""Shared helpers for the chart tests: real Helm (Go library through helm-python-sdk)."""

import os
import pathlib
import subprocess

import helm_python as helm
import pytest
import yaml

ROOT = pathlib.Path(__file__).resolve().parents[2]
CHART = ROOT / "charts" / "corsair"


def render(values=None, name="corsair", namespace="corsair-system"):
    """Renders the chart and returns every manifest as a parsed document, in file order."""
    chart = helm.Chart.load(str(CHART))
    manifests = chart.render(values or {}, name=name, namespace=namespace, is_install=True)
    docs = []
    for path in sorted(manifests):
        if not path.endswith((".yaml", ".yml")):
            continue
        for doc in yaml.safe_load_all(manifests[path]):
            if doc:
                docs.append(doc)
    return docs


def by_kind(docs, kind):
    return [d for d in docs if d["kind"] == kind]


@pytest.fixture(scope="session")
def corsair_bin():
    path = os.environ.get("CORSAIR_BIN")
    if not path or not os.access(path, os.X_OK):
        pytest.fail("CORSAIR_BIN must point at a built corsair binary (make chart-test sets it)")
    return path


def kubernetes_validate(paths):
    """Runs kubernetes-validate (strict) against Kubernetes 1.33; returns (exit code, output)."""
    exe = ROOT / ".venv" / "bin" / "kubernetes-validate"
    if not exe.exists():
        pytest.fail("kubernetes-validate is missing: run `make deps-python`")
    proc = subprocess.run(
        [str(exe), "--strict", "-k", "1.33.0", *map(str, paths)],
        capture_output=True,
        text=True,
    )
    return proc.returncode, proc.stdout + proc.stderr
