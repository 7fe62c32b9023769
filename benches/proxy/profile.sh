#!/usr/bin/env bash
# Instructions per request (callgrind), corsair and nginx doing the same CORS job: allowed GETs
# (proxied) and allowed preflights (answered by the proxy). Instruction counts do not depend on
# what else the machine is doing, so this can run on a busy machine, unlike run.sh.
#
#   bash benches/proxy/profile.sh            # PROXY_BIN=... to profile a given binary
#   H2=1 bash benches/proxy/profile.sh       # also allowed GETs over h2c (h2load, nghttp2-client)
#
# Each server runs under valgrind --tool=callgrind with one worker; wrk sends $LOAD_SECONDS seconds
# (default 5) of one kind of request over 4 keep-alive connections after a warm-up; the counters
# are zeroed after the warm-up (callgrind_control -z) and dumped after the load (-d), and the
# instructions of the dump are divided by the requests wrk completed in between. KEEP=DIR keeps
# each dump as DIR/PID-get.callgrind and DIR/PID-preflight.callgrind, for callgrind_annotate.
#
# SIM=1 also simulates the caches and branch predictors (callgrind --cache-sim=yes
# --branch-sim=yes, the host's cache sizes) and prints, per request, the first-level instruction
# and data cache misses, the last-level misses, and the mispredicted conditional and indirect
# branches: why a process that runs fewer instructions can still take longer. The simulation sees
# one process alone; the kernel and the upstream sharing its core evict more in a real run.
set -euo pipefail

HERE=$(cd "$(dirname "$0")" && pwd)
ROOT=$(cd "$HERE/../.." && pwd)
SECONDS_LOAD=${LOAD_SECONDS:-5}
ORIGIN=https://app.example.com
UPSTREAM_PORT=18080
PROXY_PORT=18081
ADMIN_PORT=18082
NGINX_PORT=18083
NGINX_H2_PORT=18084

die() { echo "profile.sh: $*" >&2; exit 1; }
for tool in valgrind callgrind_control wrk nginx curl; do
    command -v $tool >/dev/null || die "$tool is missing (valgrind, wrk, nginx-light, curl)"
done

if [[ -z ${PROXY_BIN:-} ]]; then
    # The sidecar image's build (profile-guided), with line tables for callgrind_annotate.
    PROXY_BIN=${CARGO_TARGET_DIR:-$ROOT/target}/pgo/corsair-proxy
    CARGO_PROFILE_RELEASE_DEBUG=line-tables-only bash "$ROOT/scripts/sidecar-pgo.sh" "$PROXY_BIN" >&2
fi
# The proxy starts in the work directory below: a relative path is resolved here, first.
[[ -x $PROXY_BIN ]] || die "no binary at $PROXY_BIN"
PROXY_BIN=$(realpath "$PROXY_BIN")
PROXY_CMD=("$PROXY_BIN")
[[ $(basename "$PROXY_BIN") == corsair ]] && PROXY_CMD+=(proxy)

WORK=$(mktemp -d /tmp/corsair-profile.XXXXXX)
mkdir -p "$WORK/tmp"
PIDS=()
# The work directory goes with a run that succeeded (KEEP=DIR keeps the dumps); a failed run
# leaves it for its logs.
cleanup() {
    local status=$?
    for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done
    wait 2>/dev/null || true
    if (( status == 0 )); then rm -rf "$WORK"; else echo "profile.sh: logs in $WORK" >&2; fi
}
trap cleanup EXIT

wait_port() {
    for _ in $(seq 600); do
        curl -s -o /dev/null "http://127.0.0.1:$1/" && return 0
        sleep 0.1
    done
    die "nothing listens on $1 (logs in $WORK)"
}

nginx -p "$WORK" -c "$HERE/nginx-upstream.conf" -g 'daemon off;' &
PIDS+=($!)
wait_port $UPSTREAM_PORT

# Loads for per_request: each takes its phase ("warm" or "run") and prints, for "run", the
# number of requests completed. wrk_load MIX PORT: one kind of HTTP/1.1 request from mix.lua.
wrk_load() {
    local phase=$1 mix=$2 port=$3 seconds=2 out requests
    [[ $phase == run ]] && seconds=$SECONDS_LOAD
    out=$(MIX=$mix wrk -t1 -c4 -d"${seconds}s" -s "$HERE/mix.lua" "http://127.0.0.1:$port/")
    [[ $phase == run ]] || return 0
    requests=$(sed -n 's/^RESULT .* requests=\([0-9]*\) .*/\1/p' <<<"$out")
    [[ -n $requests && $requests != 0 ]] || die "wrk completed no request on port $port:"$'\n'"$out"
    echo "$requests"
}

# h2load_load PORT (H2=1): allowed GETs over h2c, 4 connections of 10 streams, a fixed count of
# requests after a warm-up of 2,000.
h2load_load() {
    local phase=$1 port=$2 out requests
    if [[ $phase != run ]]; then
        h2load -n 2000 -c 4 -m 10 -H "origin: $ORIGIN" "http://127.0.0.1:$port/api/items" >/dev/null
        return 0
    fi
    out=$(h2load -n "$H2_REQUESTS" -c 4 -m 10 -H "origin: $ORIGIN" "http://127.0.0.1:$port/api/items")
    requests=$(sed -n 's/^requests: .* \([0-9]*\) succeeded.*/\1/p' <<<"$out")
    [[ -n $requests && $requests != 0 ]] || die "h2load completed no request on port $port:"$'\n'"$out"
    echo "$requests"
}

# Prints the instructions per request of the process $1 (under callgrind) under the load
# "$3 ..." (a load function above and its arguments), named $2 in SIM's and KEEP's files.
per_request() {
    local pid=$1 name=$2 load=("${@:3}") requests ir
    "${load[0]}" warm "${load[@]:1}"
    callgrind_control -z "$pid" >/dev/null
    requests=$("${load[0]}" run "${load[@]:1}")
    rm -f "$WORK"/callgrind.out.*
    callgrind_control -d "$pid" >/dev/null
    sleep 1
    ir=$(cat "$WORK"/callgrind.out.* 2>/dev/null | awk '/^summary:/ { s += $2 } END { print s + 0 }')
    if [[ -n ${SIM:-} ]]; then
        # Every dump names its events once ("events: Ir Dr ..."); sum each over the dumps.
        cat "$WORK"/callgrind.out.* | awk -v n="$requests" '
            /^events:/ { for (i = 2; i <= NF; i++) name[i] = $i }
            /^summary:/ { for (i = 2; i <= NF; i++) sum[name[i]] += $i }
            END {
                printf "%.0f | %.0f | %.0f | %.1f | %.0f | %.0f\n", sum["I1mr"] / n,
                    (sum["D1mr"] + sum["D1mw"]) / n, sum["ILmr"] / n,
                    (sum["DLmr"] + sum["DLmw"]) / n, sum["Bcm"] / n, sum["Bim"] / n
            }' >"$WORK/sim.$name.$pid"
    fi
    if [[ -n ${KEEP:-} ]]; then
        mkdir -p "$KEEP"
        cat "$WORK"/callgrind.out.* > "$KEEP/$pid-$name.callgrind"
    fi
    awk -v ir="$ir" -v n="$requests" 'BEGIN { printf "%.1f", ir / n / 1000 }'
}

H2=${H2:-0}
H2_REQUESTS=${H2_REQUESTS:-5000}
if [[ $H2 == 1 ]]; then command -v h2load >/dev/null || die "h2load is missing (nghttp2-client)"; fi

SIM_ARGS=()
[[ -n ${SIM:-} ]] && SIM_ARGS=(--cache-sim=yes --branch-sim=yes)
(cd "$WORK" && CORSAIR_LOG=warn exec valgrind --tool=callgrind "${SIM_ARGS[@]}" --callgrind-out-file="$WORK/callgrind.out.%p" \
    "${PROXY_CMD[@]}" --policy "$HERE/policy.yaml" --upstream "http://127.0.0.1:$UPSTREAM_PORT" \
    --listen "127.0.0.1:$PROXY_PORT" --admin "127.0.0.1:$ADMIN_PORT" --worker-threads 1 \
    >"$WORK/corsair.log" 2>&1) &
PIDS+=($!)
wait_port $PROXY_PORT
CORSAIR_PID=$(pgrep -f "callgrind.*--listen 127.0.0.1:$PROXY_PORT" | head -n1)
C_GET=$(per_request "$CORSAIR_PID" get wrk_load get $PROXY_PORT)
C_PRE=$(per_request "$CORSAIR_PID" preflight wrk_load preflight $PROXY_PORT)
if [[ $H2 == 1 ]]; then C_H2=$(per_request "$CORSAIR_PID" h2c h2load_load $PROXY_PORT); fi

sed 's/^worker_processes .*/worker_processes 1;/' "$HERE/nginx-cors.conf" >"$WORK/nginx.conf"
(cd "$WORK" && exec valgrind --tool=callgrind "${SIM_ARGS[@]}" --trace-children=yes --callgrind-out-file="$WORK/callgrind.out.%p" \
    nginx -p "$WORK" -c "$WORK/nginx.conf" -g 'daemon off; master_process off;' >"$WORK/nginx.log" 2>&1) &
PIDS+=($!)
wait_port $NGINX_PORT
NGINX_PID=$(pgrep -f "callgrind.*nginx.conf" | head -n1)
N_GET=$(per_request "$NGINX_PID" get wrk_load get $NGINX_PORT)
N_PRE=$(per_request "$NGINX_PID" preflight wrk_load preflight $NGINX_PORT)
if [[ $H2 == 1 ]]; then N_H2=$(per_request "$NGINX_PID" h2c h2load_load $NGINX_H2_PORT); fi

echo "| request | corsair (k instructions) | nginx (k instructions) | corsair ÷ nginx |"
echo "|---|---:|---:|---:|"
echo "| allowed GET (proxied) | $C_GET | $N_GET | $(awk -v a="$C_GET" -v b="$N_GET" 'BEGIN { printf "%.2f", a / b }') |"
echo "| allowed preflight | $C_PRE | $N_PRE | $(awk -v a="$C_PRE" -v b="$N_PRE" 'BEGIN { printf "%.2f", a / b }') |"
if [[ $H2 == 1 ]]; then
    echo "| allowed GET over h2c (proxied) | $C_H2 | $N_H2 | $(awk -v a="$C_H2" -v b="$N_H2" 'BEGIN { printf "%.2f", a / b }') |"
fi
if [[ -n ${SIM:-} ]]; then
    echo
    echo "| request | server | L1 instruction misses | L1 data misses | last-level instruction misses | last-level data misses | mispredicted conditional branches | mispredicted indirect branches |"
    echo "|---|---|---:|---:|---:|---:|---:|---:|"
    for mix in get preflight; do
        echo "| $mix | corsair | $(cat "$WORK/sim.$mix.$CORSAIR_PID") |"
        echo "| $mix | nginx | $(cat "$WORK/sim.$mix.$NGINX_PID") |"
    done
fi
echo "($PROXY_BIN, $(date -u '+%Y-%m-%d %H:%M UTC'), $(valgrind --version))"
