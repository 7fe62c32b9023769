#!/usr/bin/env bash
# Controller benchmark: reconcile 1,000 CorsPolicies against the in-memory mock API server
# (time total and per policy) and the process memory. Release build (the bench profile).
# Usage: bash benches/controller/run.sh
set -euo pipefail
cd "$(dirname "$0")/../.."
echo "machine: $(nproc) cores, $(uname -sr)"
cargo bench -p corsair-controller --features fixtures --bench reconcile
