#!/usr/bin/env bash
# What acknowledging the upstream at once (TCP_QUICKACK, see upstream.rs `QuickAck`) costs per
# request: the sidecar built with it (the release build) and without it (`--cfg
# corsair_no_quickack`, target/no-quickack), side by side: system calls per request
# (syscalls.sh), then requests/s and CPU per request on allowed GETs (run.sh with ALSO;
# WORKLOADS, SETUPS, CONNECTIONS and ROUNDS pass through). The upstream is nginx, which does not
# Nagle: this is the price paid where the fix is not needed.
set -euo pipefail

HERE=$(cd "$(dirname "$0")" && pwd)
ROOT=$(cd "$HERE/../.." && pwd)
build=(cargo build --release --locked -p corsair-proxy --features cli --bin corsair-proxy)
(cd "$ROOT" && "${build[@]}" >&2)
(cd "$ROOT" && RUSTFLAGS="--cfg corsair_no_quickack" CARGO_TARGET_DIR="$ROOT/target/no-quickack" \
    "${build[@]}" >&2)
WITH=$ROOT/target/release/corsair-proxy
WITHOUT=$ROOT/target/no-quickack/release/corsair-proxy

BINS="corsair=$WITH corsair-no-quickack=$WITHOUT" bash "$HERE/syscalls.sh"
echo
WORKLOADS=${WORKLOADS:-get} H2=0 PROXY_BIN=$WITH ALSO="no-quickack=$WITHOUT" bash "$HERE/run.sh"
