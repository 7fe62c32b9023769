#!/usr/bin/env bash
# Proxy throughput benchmark (not a test): the upstream alone, corsair in front of it, and nginx
# answering the same CORS policy in front of the same upstream, measured with wrk in one run.
#
#   bash benches/proxy/run.sh               # 3 rounds of 10 s per server, 64 and 256 connections
#   DURATION=5s ROUNDS=1 CONNECTIONS="256" bash benches/proxy/run.sh
#
# The three servers are measured in turn, round after round, and the median of each figure is
# reported, so that a burst of other work on the machine does not land on one server only.
#
# Everything listens on 127.0.0.1 (ports 18080-18083). wrk and nginx are Debian packages; they are
# installed with apt-get when missing. corsair is the release build of this checkout, or the
# binary named by CORSAIR_BIN.
#
# Pinning (2 cores): wrk runs alone on CPU $WRK_CPU (default 1); the upstream and the proxy under
# test share CPU $SERVER_CPU (default 0). corsair then runs one tokio worker (tokio sizes its pool
# from the CPU affinity) and nginx one worker process, so both proxies get the same single core.
# On a machine busy with other work, NICE=-10 (as root) gives every benchmark process a larger
# share of its core; the report prints the load average either way.
set -euo pipefail

HERE=$(cd "$(dirname "$0")" && pwd)
ROOT=$(cd "$HERE/../.." && pwd)
DURATION=${DURATION:-10s}
WARMUP=${WARMUP:-2s}
ROUNDS=${ROUNDS:-3}
CONNECTIONS=${CONNECTIONS:-"64 256"}
WRK_CPU=${WRK_CPU:-1}
SERVER_CPU=${SERVER_CPU:-0}
NICE=${NICE:-0}
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
# "anonymous X MiB + file-backed Y MiB": the file-backed part is the mapped binary, shared and
# reclaimable; the anonymous part is what the process allocated.
rss_split() { awk '/^RssAnon:/ { a = $2 } /^RssFile:/ { f = $2 } END { printf "anonymous %.1f MiB + file-backed %.1f MiB", a / 1024, f / 1024 }' "/proc/$1/status"; }
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

if [[ -n ${CORSAIR_BIN:-} ]]; then
    BIN=$CORSAIR_BIN
else
    log "building corsair (release)"
    (cd "$ROOT" && cargo build --release --locked --bin corsair >&2)
    BIN=${CARGO_TARGET_DIR:-$ROOT/target}/release/corsair
fi
[[ -x $BIN ]] || die "no binary at $BIN"

WORK=$(mktemp -d /tmp/corsair-bench.XXXXXX)
mkdir -p "$WORK/tmp"
log "work directory (logs): $WORK"

nice -n "$NICE" taskset -c "$SERVER_CPU" nginx -p "$WORK" -c "$HERE/nginx-upstream.conf" -g 'daemon off;' &
UPSTREAM_PID=$!
PIDS+=($UPSTREAM_PID)
wait_port $UPSTREAM_PORT "upstream nginx"

CORSAIR_LOG=${CORSAIR_LOG:-warn} nice -n "$NICE" taskset -c "$SERVER_CPU" "$BIN" proxy \
    --policy "$HERE/policy.yaml" --upstream "http://127.0.0.1:$UPSTREAM_PORT" \
    --listen "127.0.0.1:$CORSAIR_PORT" --admin "127.0.0.1:$CORSAIR_ADMIN_PORT" \
    >"$WORK/corsair.log" 2>&1 &
CORSAIR_PID=$!
PIDS+=($CORSAIR_PID)
wait_port $CORSAIR_PORT corsair

nice -n "$NICE" taskset -c "$SERVER_CPU" nginx -p "$WORK" -c "$HERE/nginx-cors.conf" -g 'daemon off;' &
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
UPSTREAM_WORKER=$(pgrep -P "$UPSTREAM_PID" | head -n1)
RSS_IDLE=$(rss_kib $CORSAIR_PID)
RSS_IDLE_SPLIT=$(rss_split $CORSAIR_PID)
log "corsair idle RSS: $(mib "$RSS_IDLE") MiB; nginx worker: $(mib "$(rss_kib "$NGINX_WORKER")") MiB"

CLK_TCK=$(getconf CLK_TCK)
# User + system CPU time of a process (all its threads), in clock ticks.
cpu_ticks() { awk '{ print $14 + $15 }' "/proc/$1/stat"; }

# Prints "rps p50_us p99_us errors non2xx cpu_us_per_request" for one wrk run against a port;
# the CPU time is that of process $3 (the server under test) during the measured run only.
measure() {
    local port=$1 conns=$2 pid=$3 out before after
    nice -n "$NICE" taskset -c "$WRK_CPU" wrk -t1 -c"$conns" -d"$WARMUP" --timeout 5s -s "$HERE/mix.lua" \
        "http://127.0.0.1:$port/" >/dev/null
    before=$(cpu_ticks "$pid")
    out=$(nice -n "$NICE" taskset -c "$WRK_CPU" wrk -t1 -c"$conns" -d"$DURATION" --timeout 5s -s "$HERE/mix.lua" \
        "http://127.0.0.1:$port/")
    after=$(cpu_ticks "$pid")
    echo "$out" >>"$WORK/wrk.log"
    sed -n 's/^RESULT rps=\([0-9]*\) p50_us=\([0-9]*\) p99_us=\([0-9]*\) requests=\([0-9]*\) errors=\([0-9]*\) non2xx=\([0-9]*\)$/\1 \2 \3 \5 \6 \4/p' <<<"$out" \
        | awk -v ticks=$((after - before)) -v hz="$CLK_TCK" '{ printf "%s %s %s %s %s %.1f\n", $1, $2, $3, $4, $5, ticks / hz * 1e6 / $6 }'
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
# Median of column $2 of file $1 (one run per line).
median() { cut -d' ' -f"$2" "$1" | sort -n | awk '{ v[NR] = $1 } END { print (NR % 2) ? v[(NR + 1) / 2] : int((v[NR / 2] + v[NR / 2 + 1]) / 2) }'; }
verdict() { if awk "BEGIN { exit !($1) }"; then echo "met"; else echo "NOT met"; fi; }

LOAD_BEFORE=$(cut -d' ' -f1-3 /proc/loadavg)
declare -A PORT=([upstream]=$UPSTREAM_PORT [corsair]=$CORSAIR_PORT [nginx]=$NGINX_PORT)
declare -A SERVER_PID=([upstream]=$UPSTREAM_WORKER [corsair]=$CORSAIR_PID [nginx]=$NGINX_WORKER)
declare -A PEAK
for conns in $CONNECTIONS; do
    PEAK[$conns]=0
    for round in $(seq "$ROUNDS"); do
        for target in upstream corsair nginx; do
            log "$conns connections, round $round/$ROUNDS: $target"
            [[ $target == corsair ]] && start_sampler $CORSAIR_PID
            measure "${PORT[$target]}" "$conns" "${SERVER_PID[$target]}" >>"$WORK/runs.$conns.$target"
            if [[ $target == corsair ]]; then
                peak=$(stop_sampler)
                ((peak > PEAK[$conns])) && PEAK[$conns]=$peak
            fi
        done
    done
done
RSS_AFTER=$(rss_kib $CORSAIR_PID)
RSS_AFTER_SPLIT=$(rss_split $CORSAIR_PID)
NGINX_RSS=$(rss_kib "$NGINX_WORKER")
LOAD_AFTER=$(cut -d' ' -f1-3 /proc/loadavg)

echo
echo "Median of $ROUNDS runs of $DURATION each (after a $WARMUP warm-up), wrk -t1, mix: 3 GET : 1 preflight."
echo
echo "CPU/request: CPU time of the server process itself (the upstream's worker for \"upstream alone\";"
echo "not the upstream's share when a proxy is measured) over requests served; less sensitive to other load than requests/s, but not immune to it."
echo
echo "| connections | server | requests/s | p50 (ms) | p99 (ms) | CPU/request (µs) | errors | non-2xx |"
echo "|---|---|---:|---:|---:|---:|---:|---:|"
for conns in $CONNECTIONS; do
    for target in upstream corsair nginx; do
        f=$WORK/runs.$conns.$target
        name=$target; [[ $target == upstream ]] && name="upstream alone"
        echo "| $conns | $name | $(median "$f" 1) | $(ms "$(median "$f" 2)") | $(ms "$(median "$f" 3)") | $(median "$f" 6) | $(awk '{ s += $4 } END { print s }' "$f") | $(awk '{ s += $5 } END { print s }' "$f") |"
    done
done
echo
for conns in $CONNECTIONS; do
    c_rps=$(median "$WORK/runs.$conns.corsair" 1); n_rps=$(median "$WORK/runs.$conns.nginx" 1)
    c_p99=$(median "$WORK/runs.$conns.corsair" 3); n_p99=$(median "$WORK/runs.$conns.nginx" 3)
    ratio=$(awk -v a="$c_rps" -v b="$n_rps" 'BEGIN { printf "%.2f", a / b }')
    c_cpu=$(median "$WORK/runs.$conns.corsair" 6); n_cpu=$(median "$WORK/runs.$conns.nginx" 6)
    echo "- $conns connections: corsair/nginx throughput ${ratio}x (goal >= 1.2x: $(verdict "$ratio >= 1.2")); p99 $(ms "$c_p99") ms vs nginx $(ms "$n_p99") ms (goal: no worse: $(verdict "$c_p99 <= $n_p99")); CPU per request ${c_cpu} µs vs nginx ${n_cpu} µs (nginx/corsair $(awk -v a="$n_cpu" -v b="$c_cpu" 'BEGIN { printf "%.2f", a / b }')x); corsair peak RSS $(mib "${PEAK[$conns]}") MiB"
done
echo "- corsair RSS idle before load: $(mib "$RSS_IDLE") MiB (goal < 10 MiB: $(verdict "$RSS_IDLE < 10240")), $RSS_IDLE_SPLIT; idle after load: $(mib "$RSS_AFTER") MiB, $RSS_AFTER_SPLIT"
if [[ -n ${PEAK[256]:-} ]]; then
    echo "- corsair peak RSS under 256 connections: $(mib "${PEAK[256]}") MiB (goal < 40 MiB: $(verdict "${PEAK[256]} < 40960"))"
fi
echo "- corsair binary: $(du -h "$BIN" | cut -f1) ($BIN)"
echo "- nginx (CORS) worker RSS after load: $(mib "$NGINX_RSS") MiB"
echo "- $(date -u '+%Y-%m-%d %H:%M UTC'); $(nproc) CPUs: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ *//'); load average before $LOAD_BEFORE, after $LOAD_AFTER; $(wrk -v 2>&1 | head -n1 | cut -d' ' -f1-2); $(nginx -v 2>&1 | cut -d' ' -f3); wrk on CPU $WRK_CPU, upstream and proxy on CPU $SERVER_CPU, nice $NICE"
