"""Writes docs/reference.md from the sources that define what a user can set.

    python docs/reference.py --bin target/debug/corsair > docs/reference.md   (what `make generate` runs)

Sources, so the reference cannot drift from them:
- the CorsPolicy schema: `corsair crd` (generated from the Rust types);
- annotations and labels: the `corsair.dev/...` constants of crates/corsair-controller/src/names.rs
  and their doc comments;
- every subcommand's flags: `corsair --help` and `corsair SUBCOMMAND --help` (clap);
- the chart's values: charts/corsair/values.yaml (the comments above each key) and the types of
  charts/corsair/values.schema.json.
charts/tests/test_reference.py fails when the committed file differs from what this prints.
"""

import argparse
import json
import os
import pathlib
import re
import subprocess
import sys

import yaml

ROOT = pathlib.Path(__file__).resolve().parents[1]


def cell(text):
    """Text safe inside a Markdown table cell."""
    return " ".join(str(text).split()).replace("|", "\\|")


def run(binary, *args):
    # clap shows the current value of a flag's environment variable in --help: run without them.
    env = {k: v for k, v in os.environ.items() if not k.startswith(("CORSAIR_", "RUST_LOG"))}
    return subprocess.run([binary, *args], capture_output=True, text=True, check=True, env=env).stdout


# ---- CorsPolicy -----------------------------------------------------------------------------


def schema_type(prop):
    kind = prop.get("type", "")
    if kind == "array":
        return f"[]{schema_type(prop.get('items', {}))}"
    if kind == "object" and "properties" not in prop:
        return "map"
    return kind or "object"


def limits(prop):
    out = []
    if "enum" in prop:
        out.append("one of " + ", ".join(f"`{v}`" for v in prop["enum"]))
    for key, word in [("minimum", "≥"), ("maximum", "≤")]:
        if key in prop:
            value = prop[key]
            out.append(f"{word} {int(value) if float(value).is_integer() else value}")
    if "maxItems" in prop:
        out.append(f"at most {prop['maxItems']} items")
    items = prop.get("items", {})
    if "maxLength" in items:
        out.append(f"items at most {items['maxLength']} characters")
    if "maxLength" in prop:
        out.append(f"at most {prop['maxLength']} characters")
    return "; ".join(out)


def default_of(description):
    match = re.search(r"Default (?:is )?`?([A-Za-z0-9*]+)`?", description or "") or re.search(
        r"`?([A-Za-z0-9]+)`? \(default\)", description or ""
    )
    return f"`{match.group(1)}`" if match else "–"


def walk(prefix, schema, rows, required=()):
    for name, prop in sorted(schema.get("properties", {}).items()):
        path = f"{prefix}.{name}"
        description = prop.get("description", "")
        if name in required:
            description = f"**Required.** {description}"
        rows.append((path, schema_type(prop), default_of(description), limits(prop), description))
        if prop.get("type") == "object" and "properties" in prop:
            walk(path, prop, rows, prop.get("required", ()))
        if prop.get("type") == "array" and "properties" in prop.get("items", {}):
            walk(f"{path}[]", prop["items"], rows, prop["items"].get("required", ()))


def corspolicy_section(binary):
    crd = yaml.safe_load(run(binary, "crd"))
    version = crd["spec"]["versions"][0]
    root = version["schema"]["openAPIV3Schema"]
    names = crd["spec"]["names"]
    lines = [
        "## CorsPolicy",
        "",
        f"`apiVersion: {crd['spec']['group']}/{version['name']}`, `kind: {names['kind']}`, "
        f"namespaced, plural `{names['plural']}`, short name "
        + ", ".join(f"`{n}`" for n in names.get("shortNames", []))
        + ". From `corsair crd` (the Rust types); defaults are applied when the policy is compiled, "
        "so a field left out of a route is inherited from the top level.",
        "",
        "| field | type | default | limits (the schema's; the CEL rules below narrow some) | meaning |",
        "|---|---|---|---|---|",
    ]
    rows = []
    walk("spec", root["properties"]["spec"], rows, root["properties"]["spec"].get("required", ()))
    for path, kind, default, limit, description in rows:
        lines.append(f"| `{path}` | {cell(kind)} | {cell(default)} | {cell(limit) or '–'} | {cell(description)} |")
    lines += ["", "Rules the API server checks (CEL), besides the schema:", ""]
    for location, rule in cel_rules(root):
        lines.append(f"- `{location}`: {cell(rule)}")
    lines += [
        "",
        "`status` (written by the controller): "
        + ", ".join(f"`{k}`" for k in sorted(root["properties"].get("status", {}).get("properties", {})))
        + ".",
        "",
    ]
    return lines


def cel_rules(schema, path="", out=None):
    out = [] if out is None else out
    for rule in schema.get("x-kubernetes-validations", []):
        out.append((path or "(object)", rule.get("message") or rule["rule"]))
    for name, prop in sorted(schema.get("properties", {}).items()):
        cel_rules(prop, f"{path}.{name}" if path else name, out)
    if "items" in schema:
        cel_rules(schema["items"], f"{path}[]", out)
    return out


# ---- annotations ----------------------------------------------------------------------------


def annotations_section():
    text = (ROOT / "crates/corsair-controller/src/names.rs").read_text()
    lines = [
        "## Annotations and labels",
        "",
        "From `crates/corsair-controller/src/names.rs`. Per-pod overrides go on the pod template "
        "(or, for `corsair.dev/policy`, on the Deployment itself).",
        "",
        "| key | meaning |",
        "|---|---|",
    ]
    doc = []
    for line in text.splitlines():
        stripped = line.strip()
        if stripped.startswith("///"):
            doc.append(stripped[3:].strip())
            continue
        match = re.match(r'pub const \w+: &str = "(corsair\.dev/[^"]+)";', stripped)
        if match:
            meaning = re.sub(r"\[`(\w+)`\]", r"\1", " ".join(doc))
            lines.append(f"| `{match.group(1)}` | {cell(meaning)} |")
        doc = []
    lines.append("")
    return lines


# ---- subcommands ----------------------------------------------------------------------------


def subcommands(binary):
    text = run(binary, "--help")
    block = text.split("Commands:", 1)[1].split("Options:", 1)[0]
    names = []
    for line in block.splitlines():
        match = re.match(r"\s{2}([a-z][a-z0-9-]*)\s", line)
        if match and match.group(1) != "help":
            names.append(match.group(1))
    return names


def commands_section(binary):
    lines = [
        "## Commands",
        "",
        "Every flag of every subcommand, as `corsair SUBCOMMAND --help` prints it.",
        "",
    ]
    for name in subcommands(binary):
        lines += [f"### `corsair {name}`", "", "```text", run(binary, name, "--help").rstrip(), "```", ""]
    return lines


# ---- chart values ---------------------------------------------------------------------------


def values_rows():
    """(path, default, comment) for every leaf of values.yaml, with the comment lines above it."""
    text = (ROOT / "charts/corsair/values.yaml").read_text()
    values = yaml.safe_load(text)
    comments = {}
    stack = []  # (indent, key)
    pending = []
    for line in text.splitlines():
        stripped = line.strip()
        if not stripped:
            pending = []
            continue
        if stripped.startswith("#"):
            pending.append(stripped.lstrip("#").strip())
            continue
        match = re.match(r"^(\s*)([A-Za-z0-9_]+):", line)
        if not match:
            pending = []
            continue
        indent = len(match.group(1))
        while stack and stack[-1][0] >= indent:
            stack.pop()
        stack.append((indent, match.group(2)))
        comments[".".join(k for _, k in stack)] = " ".join(pending)
        pending = []

    rows = []

    def leaves(prefix, node, inherited):
        for key, value in node.items():
            path = f"{prefix}.{key}" if prefix else key
            comment = comments.get(path, "")
            if isinstance(value, dict) and value and not path.endswith(("resources.requests", "resources.limits")):
                leaves(path, value, comment or inherited)
            else:
                rows.append((path, value, comment or inherited))

    leaves("", values, "")
    return rows


def schema_at(schema, root, path):
    node = root
    for key in path.split("."):
        while "$ref" in node:
            node = resolve(schema, node["$ref"])
        node = node.get("properties", {}).get(key, {})
    while "$ref" in node:
        node = resolve(schema, node["$ref"])
    return node


def resolve(schema, ref):
    node = schema
    for part in ref.lstrip("#/").split("/"):
        node = node[part]
    return node


def values_section():
    schema = json.loads((ROOT / "charts/corsair/values.schema.json").read_text())
    lines = [
        "## Helm chart values",
        "",
        "From `charts/corsair/values.yaml` (defaults and comments) and `values.schema.json` (types).",
        "",
        "| value | type | default | meaning |",
        "|---|---|---|---|",
    ]
    for path, default, comment in values_rows():
        node = schema_at(schema, schema, path)
        kind = node.get("type") or ("enum: " + ", ".join(map(str, node["enum"])) if "enum" in node else "")
        if isinstance(kind, list):
            kind = " or ".join(kind)
        shown = json.dumps(default) if not isinstance(default, str) else (f'"{default}"' if default == "" else default)
        lines.append(f"| `{path}` | {cell(kind) or '–'} | `{cell(shown)}` | {cell(comment) or '–'} |")
    lines.append("")
    return lines


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--bin", required=True, help="the built corsair binary")
    args = parser.parse_args()
    lines = [
        "# Corsair reference",
        "",
        "<!-- Generated by `make generate` (docs/reference.py); do not edit by hand. -->",
        "",
        "Everything a user can set: the CorsPolicy fields, the annotations, every command's flags "
        "and the Helm chart's values. The README explains how they fit together.",
        "",
    ]
    lines += corspolicy_section(args.bin)
    lines += annotations_section()
    lines += commands_section(args.bin)
    lines += values_section()
    sys.stdout.write("\n".join(lines).rstrip() + "\n")


if __name__ == "__main__":
    main()
