#!/usr/bin/env bash
# Binary size and idle memory of the sidecar (not a test): `corsair proxy` (the full binary, which
# links kube) against `corsair-proxy` (the slim binary the webhook injects).
#
#   bash benches/binaries.sh                 # release build of both, 3 starts each
#   STARTS=1 bash benches/binaries.sh
#   CORSAIR_BIN=... CORSAIR_PROXY_BIN=... bash benches/binaries.sh   # measure given binaries
#
# Each binary is built on its own, as its image builds it (Dockerfile): `corsair` with its
# package's features, `corsair-proxy` with only the proxy package's and profile-guided
# (scripts/sidecar-pgo.sh). For each start the proxy runs
# benches/proxy/policy.yaml in front of a trivial upstream (python3's http.server), serves one
# allowed request, and 1 s later VmRSS, RssAnon and RssFile are read from /proc/PID/status.
# RssFile is mostly pages of the mapped binary (shared, reclaimable); RssAnon is what the process
# allocated. RssFile depends on what of the file is in the page cache: the kernel maps cached
# pages around each page fault, so a binary just copied or linked (all of it cached) shows up to
# 0.7 MiB more than the same binary read cold. Each start therefore first drops the binary's
# pages from the cache (posix_fadvise DONTNEED), as a pod's first start on a node finds it.
# Everything listens on 127.0.0.1 ports 18090-18092.
set -euo pipefail

HERE=$(cd "$(dirname "$0")" && pwd)
ROOT=$(cd "$HERE/.." && pwd)
STARTS=${STARTS:-3}
UPSTREAM_PORT=18090
PROXY_PORT=18091
ADMIN_PORT=18092
ORIGIN=https://app.example.com

log() { echo "== $*" >&2; }
die() { echo "binaries.sh: $*" >&2; exit 1; }

for tool in curl python3; do
    command -v "$tool" >/dev/null || die "needs $tool"
done
port_free() { ! ss -Hltn "sport = :$1" | grep -q .; }
for port in $UPSTREAM_PORT $PROXY_PORT $ADMIN_PORT; do
    port_free "$port" || die "port $port is in use"
done

TARGET=${CARGO_TARGET_DIR:-$ROOT/target}
if [[ -z ${CORSAIR_BIN:-} ]]; then
    log "building corsair (release)"
    (cd "$ROOT" && cargo build --release --locked -p corsair --bin corsair >&2)
    CORSAIR_BIN=$TARGET/release/corsair
fi
if [[ -z ${CORSAIR_PROXY_BIN:-} ]]; then
    log "building corsair-proxy as the sidecar image does (profile-guided)"
    CORSAIR_PROXY_BIN=$TARGET/pgo/corsair-proxy
    bash "$ROOT/scripts/sidecar-pgo.sh" "$CORSAIR_PROXY_BIN"
fi
[[ -x $CORSAIR_BIN && -x $CORSAIR_PROXY_BIN ]] || die "binaries missing"

WORK=$(mktemp -d /tmp/corsair-binaries.XXXXXX)
mkdir -p "$WORK/www"
echo '{"items":[]}' >"$WORK/www/index.json"
log "work directory (logs): $WORK"

PIDS=()
cleanup() {
    for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done
    wait 2>/dev/null || true
}
trap cleanup EXIT

python3 -m http.server --bind 127.0.0.1 --directory "$WORK/www" "$UPSTREAM_PORT" \
    >"$WORK/upstream.log" 2>&1 &
PIDS+=($!)
for _ in $(seq 100); do
    curl -sf -o /dev/null "http://127.0.0.1:$UPSTREAM_PORT/index.json" && break
    sleep 0.1
done
curl -sf -o /dev/null "http://127.0.0.1:$UPSTREAM_PORT/index.json" || die "the upstream did not start"

mib() { awk -v k="$1" 'BEGIN { printf "%.1f", k / 1024 }'; }
field_kib() { awk -v f="$1:" '$1 == f { print $2 }' "/proc/$2/status"; }
# Median of the numbers on stdin, one a line.
median() { sort -n | awk '{ v[NR] = $1 } END { print (NR % 2) ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2 }'; }

# One start: prints "VmRSS RssAnon RssFile" in KiB.
evict() { python3 "$HERE/evict.py" "$1"; }

measure_once() {
    local name=$1 pid
    shift
    evict "$1"
    CORSAIR_LOG=warn "$@" --policy "$HERE/proxy/policy.yaml" \
        --upstream "http://127.0.0.1:$UPSTREAM_PORT" \
        --listen "127.0.0.1:$PROXY_PORT" --admin "127.0.0.1:$ADMIN_PORT" \
        >>"$WORK/$name.log" 2>&1 &
    pid=$!
    for _ in $(seq 100); do
        curl -sf -o /dev/null "http://127.0.0.1:$ADMIN_PORT/readyz" && break
        sleep 0.1
    done
    curl -sf -o /dev/null "http://127.0.0.1:$ADMIN_PORT/readyz" || die "$name did not become ready (log: $WORK/$name.log)"
    local headers
    headers=$(curl -s -D - -o /dev/null -H "Origin: $ORIGIN" "http://127.0.0.1:$PROXY_PORT/index.json" | tr -d '\r')
    grep -qi "^access-control-allow-origin: $ORIGIN\$" <<<"$headers" \
        || die "$name: the allowed request lacks Access-Control-Allow-Origin:"$'\n'"$headers"
    sleep 1
    echo "$(field_kib VmRSS $pid) $(field_kib RssAnon $pid) $(field_kib RssFile $pid)"
    kill -TERM "$pid"
    wait "$pid" || die "$name did not exit 0 on SIGTERM"
}

declare -A RESULT
run() {
    local name=$1
    shift
    : >"$WORK/$name.rss"
    for start in $(seq "$STARTS"); do
        log "$name: start $start/$STARTS"
        measure_once "$name" "$@" >>"$WORK/$name.rss"
    done
    local rss anon file
    rss=$(cut -d' ' -f1 "$WORK/$name.rss" | median)
    anon=$(cut -d' ' -f2 "$WORK/$name.rss" | median)
    file=$(cut -d' ' -f3 "$WORK/$name.rss" | median)
    RESULT[$name]="$(mib "$rss") | $(mib "$anon") | $(mib "$file")"
}

run "corsair proxy" "$CORSAIR_BIN" proxy
run "corsair-proxy" "$CORSAIR_PROXY_BIN"

bytes_mib() { awk -v b="$(stat -c %s "$1")" 'BEGIN { printf "%.1f", b / 1048576 }'; }
size() {
    local stripped=""
    if command -v strip >/dev/null; then
        strip -o "$WORK/stripped" "$1"
        stripped=" ($(bytes_mib "$WORK/stripped") MiB stripped)"
    fi
    echo "$(bytes_mib "$1") MiB$stripped"
}

echo
echo "Sidecar binaries ($CORSAIR_BIN, $CORSAIR_PROXY_BIN);"
echo "idle RSS after one request, median of $STARTS starts"
echo "(MiB; per-start figures in $WORK/*.rss, KiB: VmRSS RssAnon RssFile)."
echo
echo "| binary | size on disk | VmRSS | RssAnon | RssFile |"
echo "|---|---|---|---|---|"
echo "| \`corsair proxy\` | $(size "$CORSAIR_BIN") | ${RESULT[corsair proxy]} |"
echo "| \`corsair-proxy\` | $(size "$CORSAIR_PROXY_BIN") | ${RESULT[corsair-proxy]} |"
