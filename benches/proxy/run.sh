#!/usr/bin/env bash
# Proxy throughput benchmark (not a test): the upstream alone, corsair in front of it, and nginx
# answering the same CORS policy in front of the same upstream, measured with wrk in one run.
#
#   bash benches/proxy/run.sh               # 10 s per run, 64 and 256 connections
#   DURATION=5s CONNECTIONS="256" bash benches/proxy/run.sh
#
# Everything listens on 127.0.0.1 (ports 18080-18083). wrk and nginx are Debian packages; they are
# installed with apt-get when missing. corsair is the release build of this checkout.
#
# Pinning (2 cores): wrk runs alone on CPU $WRK_CPU (default 1); the upstream and the proxy under
# test share CPU $SERVER_CPU (default 0). corsair then runs one tokio worker (tokio sizes its pool
# from the CPU affinity) and nginx one worker process, so both proxies get the same single core.
set -euo pipefail

HERE=$(cd "$(dirname "$0")" && pwd)
ROOT=$(cd "$HERE/../.." && pwd)
DURATION=${DURATION:-10s}
WARMUP=${WARMUP:-2s}
CONNECTIONS=${CONNECTIONS:-"64 256"}
WRK_CPU=${WRK_CPU:-1}
SERVER_CPU=${SERVER_CPU:-0}
UPSTREAM_PORT=18080
CORSAIR_PORT=18081
CORSAIR_ADMIN_PORT=18082
NGINX_PORT=18083
ORIGIN=https://app.example.com

log() { echo "== $*" >&2; }
die() { echo "run.sh: $*" >&2; exit 1; }

install_missing() {
    local missing=()
    command -v wrk >/dev/null || missing+=(wrk)
    command -v nginx >/dev/null || missing+=(nginx)
    command -v taskset >/dev/null || missing+=(util-linux)
    command -v curl >/dev/null || missing+=(curl)
    if ((${#missing[@]})); then
        log "installing ${missing[*]}"
        apt-get update -qq
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
    fi
}

port_free() { ! ss -Hltn "sport = :$1" | grep -q .; }

wait_port() {
    local port=$1 name=$2
    for _ in $(seq 100); do
        if curl -s -o /dev/null "http://127.0.0.1:$port/"; then return 0; fi
        sleep 0.1
    done
    die "$name did not start listening on 127.0.0.1:$port (logs in $WORK)"
}

rss_kib() { awk '/^VmRSS:/ { print $2 }' "/proc/$1/status"; }
mib() { awk -v k="$1" 'BEGIN { printf "%.1f", k / 1024 }'; }

PIDS=()
cleanup() {
    for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done
    wait 2>/dev/null || true
}
trap cleanup EXIT

install_missing
(( $(nproc) > WRK_CPU && $(nproc) > SERVER_CPU )) || die "needs CPUs $WRK_CPU and $SERVER_CPU"
for port in $UPSTREAM_PORT $CORSAIR_PORT $CORSAIR_ADMIN_PORT $NGINX_PORT; do
    port_free "$port" || die "port $port is in use"
done

log "building corsair (release)"
(cd "$ROOT" && cargo build --release --locked --bin corsair >&2)
BIN=${CARGO_TARGET_DIR:-$ROOT/target}/release/corsair
[[ -x $BIN ]] || die "no binary at $BIN"

WORK=$(mktemp -d /tmp/corsair-bench.XXXXXX)
mkdir -p "$WORK/tmp"
log "work directory (logs): $WORK"

taskset -c "$SERVER_CPU" nginx -p "$WORK" -c "$HERE/nginx-upstream.conf" -g 'daemon off;' &
PIDS+=($!)
wait_port $UPSTREAM_PORT "upstream nginx"

RUST_LOG=${RUST_LOG:-warn} taskset -c "$SERVER_CPU" "$BIN" proxy \
    --policy "$HERE/policy.yaml" --upstream "http://127.0.0.1:$UPSTREAM_PORT" \
    --listen "127.0.0.1:$CORSAIR_PORT" --admin "127.0.0.1:$CORSAIR_ADMIN_PORT" \
    >"$WORK/corsair.log" 2>&1 &
CORSAIR_PID=$!
PIDS+=($CORSAIR_PID)
wait_port $CORSAIR_PORT corsair

taskset -c "$SERVER_CPU" nginx -p "$WORK" -c "$HERE/nginx-cors.conf" -g 'daemon off;' &
NGINX_PID=$!
PIDS+=($NGINX_PID)
wait_port $NGINX_PORT "nginx (CORS)"

# Both proxies must give the same answers before their speed means anything.
check_proxy() {
    local name=$1 port=$2 headers
    headers=$(curl -s -D - -o /dev/null -H "Origin: $ORIGIN" "http://127.0.0.1:$port/api/items" | tr -d '\r')
    grep -qi "^access-control-allow-origin: $ORIGIN\$" <<<"$headers" \
        || die "$name: allowed GET lacks Access-Control-Allow-Origin: $ORIGIN:"$'\n'"$headers"
    grep -qi '^access-control-allow-origin: \*' <<<"$headers" \
        && die "$name: the upstream's Access-Control-Allow-Origin: * leaked:"$'\n'"$headers"
    grep -qi '^access-control-expose-headers: x-request-id' <<<"$headers" \
        || die "$name: allowed GET lacks Access-Control-Expose-Headers"
    headers=$(curl -s -D - -o /dev/null -X OPTIONS -H "Origin: $ORIGIN" \
        -H 'Access-Control-Request-Method: PUT' \
        -H 'Access-Control-Request-Headers: content-type,x-requested-with' \
        "http://127.0.0.1:$port/api/items" | tr -d '\r')
    grep -q '^HTTP/1.1 204' <<<"$headers" || die "$name: preflight is not 204:"$'\n'"$headers"
    grep -qi "^access-control-allow-origin: $ORIGIN\$" <<<"$headers" \
        || die "$name: preflight lacks Access-Control-Allow-Origin"
    grep -qi '^access-control-allow-credentials: true' <<<"$headers" \
        || die "$name: preflight lacks Access-Control-Allow-Credentials"
    headers=$(curl -s -D - -o /dev/null -X OPTIONS -H 'Origin: https://evil.example.com' \
        -H 'Access-Control-Request-Method: PUT' "http://127.0.0.1:$port/api/items" | tr -d '\r')
    grep -q '^HTTP/1.1 403' <<<"$headers" || die "$name: disallowed preflight is not 403"
}
check_proxy corsair $CORSAIR_PORT
check_proxy nginx $NGINX_PORT

NGINX_WORKER=$(pgrep -P "$NGINX_PID" | head -n1)
RSS_IDLE=$(rss_kib $CORSAIR_PID)
log "corsair idle RSS: $(mib "$RSS_IDLE") MiB; nginx worker: $(mib "$(rss_kib "$NGINX_WORKER")") MiB"

# Prints "rps p50_us p99_us errors non2xx" for one wrk run against a port.
measure() {
    local port=$1 conns=$2 out
    taskset -c "$WRK_CPU" wrk -t1 -c"$conns" -d"$WARMUP" --timeout 5s -s "$HERE/mix.lua" \
        "http://127.0.0.1:$port/" >/dev/null
    out=$(taskset -c "$WRK_CPU" wrk -t1 -c"$conns" -d"$DURATION" --timeout 5s -s "$HERE/mix.lua" \
        "http://127.0.0.1:$port/")
    echo "$out" >>"$WORK/wrk.log"
    sed -n 's/^RESULT rps=\([0-9]*\) p50_us=\([0-9]*\) p99_us=\([0-9]*\) requests=[0-9]* errors=\([0-9]*\) non2xx=\([0-9]*\)$/\1 \2 \3 \4 \5/p' <<<"$out"
}

# Samples a process's VmRSS every 0.2 s in the background; stop_sampler prints the peak in KiB.
start_sampler() {
    local pid=$1
    PEAK_FILE=$WORK/peak.$pid
    echo 0 >"$PEAK_FILE"
    (
        peak=0
        while kill -0 "$pid" 2>/dev/null; do
            now=$(rss_kib "$pid")
            if ((now > peak)); then peak=$now; echo "$peak" >"$PEAK_FILE"; fi
            sleep 0.2
        done
    ) &
    SAMPLER=$!
}
stop_sampler() {
    kill "$SAMPLER" 2>/dev/null || true
    wait "$SAMPLER" 2>/dev/null || true
    cat "$PEAK_FILE"
}

ms() { awk -v us="$1" 'BEGIN { printf "%.2f", us / 1000 }'; }

echo
echo "| connections | server | requests/s | p50 (ms) | p99 (ms) | errors | non-2xx |"
echo "|---|---|---:|---:|---:|---:|---:|"
SUMMARY=()
for conns in $CONNECTIONS; do
    read -r u_rps u_p50 u_p99 u_err u_bad < <(measure $UPSTREAM_PORT "$conns")
    echo "| $conns | upstream alone | $u_rps | $(ms "$u_p50") | $(ms "$u_p99") | $u_err | $u_bad |"
    start_sampler $CORSAIR_PID
    read -r c_rps c_p50 c_p99 c_err c_bad < <(measure $CORSAIR_PORT "$conns")
    peak=$(stop_sampler)
    echo "| $conns | corsair | $c_rps | $(ms "$c_p50") | $(ms "$c_p99") | $c_err | $c_bad |"
    read -r n_rps n_p50 n_p99 n_err n_bad < <(measure $NGINX_PORT "$conns")
    echo "| $conns | nginx | $n_rps | $(ms "$n_p50") | $(ms "$n_p99") | $n_err | $n_bad |"
    SUMMARY+=("$conns connections: corsair/nginx throughput $(awk -v a="$c_rps" -v b="$n_rps" 'BEGIN { printf "%.2f", a / b }')x, p99 $(ms "$c_p99") ms vs $(ms "$n_p99") ms; corsair peak RSS $(mib "$peak") MiB")
done
echo
for line in "${SUMMARY[@]}"; do echo "- $line"; done
echo "- corsair RSS idle before load: $(mib "$RSS_IDLE") MiB; idle after load: $(mib "$(rss_kib $CORSAIR_PID)") MiB"
echo "- nginx (CORS) worker RSS after load: $(mib "$(rss_kib "$NGINX_WORKER")") MiB"
echo "- $(date -u '+%Y-%m-%d %H:%M UTC'), $(nproc) CPUs: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ *//'), $(wrk -v 2>&1 | head -n1 | cut -d' ' -f1-2), $(nginx -v 2>&1 | cut -d' ' -f3), duration $DURATION (after $WARMUP warm-up) per run"
