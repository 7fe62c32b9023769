"""docs/reference.md is what docs/reference.py writes from the current sources (`make generate`)."""

import subprocess
import sys

from conftest import ROOT


def test_reference_is_up_to_date(corsair_bin):
    generated = subprocess.run(
        [sys.executable, str(ROOT / "docs" / "reference.py"), "--bin", corsair_bin],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    committed = (ROOT / "docs" / "reference.md").read_text()
    assert committed == generated, "docs/reference.md is stale: run `make generate` and commit it"


def test_reference_covers_every_source(corsair_bin):
    text = (ROOT / "docs" / "reference.md").read_text()
    # A field of the CRD, an annotation, a subcommand's flag, a chart value: one of each.
    for needle in [
        "| `spec.routes[].pathPrefix` |",
        "| `spec.mode` | string | `Enforce` |",
        "| `corsair.dev/proxy-port` |",
        "### `corsair probe`",
        "--ca-file <CA_FILE>",
        "| `metrics.podMonitor.enabled` | boolean | `false` |",
    ]:
        assert needle in text, needle
    help_text = subprocess.run([corsair_bin, "--help"], capture_output=True, text=True, check=True).stdout
    for line in help_text.split("Commands:")[1].split("Options:")[0].splitlines():
        name = line.split()[0] if line.strip() else ""
        if name and name != "help":
            assert f"### `corsair {name}`" in text, name
