#!/usr/bin/env bash
# Scale benchmark: `corsair controller` against a fake API server holding 10,000 Deployments
# (about 5 KB each, with managedFields and last-applied-configuration) across 100 namespaces,
# 500 of them annotated, and 1,000 CorsPolicies. See benches/controller/scale.py.
# Usage: bash benches/controller/scale.sh            (builds the release binary)
#        CORSAIR_BIN=path/to/corsair bash benches/controller/scale.sh
#        SCALE_ARGS="--deployments 200 --namespaces 10 --annotated 20 --policies 30 --idle 3" ...
set -euo pipefail
cd "$(dirname "$0")/../.."
echo "machine: $(nproc) cores, $(uname -sr), load average: $(cut -d' ' -f1-3 /proc/loadavg)"
if [ -z "${CORSAIR_BIN:-}" ]; then
  cargo build --release --locked --bin corsair
  CORSAIR_BIN=target/release/corsair
fi
# shellcheck disable=SC2086
python3 benches/controller/scale.py --bin "$CORSAIR_BIN" ${SCALE_ARGS:-} --json "${SCALE_JSON:-target/controller-scale.json}"
echo "load average after: $(cut -d' ' -f1-3 /proc/loadavg)"
