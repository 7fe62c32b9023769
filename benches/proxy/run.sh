#!/usr/bin/env bash
# Proxy benchmark (not a test): corsair and nginx answering the same CORS policy in front of the
# same upstream, side by side in one run, for every row of the proxy goals in docs/benchmarks.md.
#
#   bash benches/proxy/run.sh                       # everything (about 15 minutes)
#   SETUPS=pinned WORKLOADS=mix CONNECTIONS=64 ROUNDS=1 DURATION=3s bash benches/proxy/run.sh
#
# Setups (SETUPS, default "pinned unpinned"):
#   pinned    the upstream and the proxy under test share CPU $SERVER_CPU (default 0), the load
#             generator runs alone on CPU $LOAD_CPU (default 1); corsair runs 1 worker thread and
#             nginx 1 worker process, so both proxies get the same single core.
#   unpinned  nothing pinned; corsair runs 2 worker threads, nginx 2 worker processes (the
#             upstream too), and the load generator shares the 2 cores with them.
# Workloads (WORKLOADS, default "get preflight mix"), with wrk -c $CONNECTIONS (default "64 256"):
#   get        allowed simple GETs, proxied to the upstream;
#   preflight  allowed preflights, answered by the proxy;
#   mix        3 GETs : 1 preflight; the upstream alone is measured too, as a ceiling.
# HTTP/2 (H2=1, default): allowed GETs over h2c with h2load against both proxies' h2c ports.
# Each figure is the median of $ROUNDS rounds (default 3) of $DURATION (default 5s) after a
# $WARMUP warm-up (default 1s); the servers are measured in turn within every round, so a burst
# of other work does not land on one server only.
#
# Memory: corsair's VmRSS 1 s after one allowed request (the goal's idle RSS; the binary's pages
# are dropped from the page cache before it starts, as a pod's first start on a node finds them:
# the kernel maps cached pages around each fault, so a fully cached binary reads up to 0.7 MiB
# more), and its peak during each run (the kernel's high-water mark, reset before each run).
# CPU/request: the user + system CPU time of the server's own processes during the measured run,
# divided by the requests it served; the system (kernel) part is reported beside it, since it
# bounds what any user-space work can gain.
#
# The engine row (ENGINE=1, default): the policy engine's path from an `http::Request` to
# response headers against tower-http's CorsLayer, with criterion (crates/corsair-policy/benches/
# decide.rs), run after the servers have stopped and built before anything is measured; its
# means are read from criterion's estimates and reported in the goals table (criterion's own
# report, with the decision-only and exact-origin figures, is engine.log in the work directory).
# Beside each ratio it reports the ratio's ceiling: tower-http against the insertion of the
# decided headers alone, which any path ending in a header map pays.
#
# ALSO="NAME=BINARY ..." runs more proxy builds beside corsair in the same setups and rounds
# (reported as corsair-NAME; ports from 18085), to compare builds side by side. FLOOR=1 adds
# the floor (crates/corsair-proxy/benches/floor.rs, built here): the least work an HTTP/1.1
# CORS proxy on tokio can do per request, with no hyper and no header map, which bounds what
# any such design could reach beside nginx. Every server beside corsair gets its own table
# against nginx after the goals.
#
# The "load CPU" column is wrk's own CPU time over the run, in % of one core: at 100 % with one
# wrk thread (pinned), the load generator, not the server, set the requests/s.
#
# Everything listens on 127.0.0.1 (ports 18080-18099). wrk, h2load (nghttp2-client) and nginx
# (nginx-light) are Debian packages, installed with apt-get when missing. PROXY_BIN is the
# sidecar binary to run (`corsair-proxy`, or `corsair` whose `proxy` subcommand is used); by
# default this checkout's `corsair-proxy` as the sidecar image builds it, with profile-guided
# optimisation (scripts/sidecar-pgo.sh: two release builds and a 20-second training).
set -euo pipefail

HERE=$(cd "$(dirname "$0")" && pwd)
ROOT=$(cd "$HERE/../.." && pwd)
SETUPS=${SETUPS:-"pinned unpinned"}
WORKLOADS=${WORKLOADS:-"get preflight mix"}
CONNECTIONS=${CONNECTIONS:-"64 256"}
DURATION=${DURATION:-5s}
WARMUP=${WARMUP:-1s}
ROUNDS=${ROUNDS:-3}
H2=${H2:-1}
ENGINE=${ENGINE:-1}
FLOOR=${FLOOR:-0}
H2_CONNECTIONS=${H2_CONNECTIONS:-64}
H2_STREAMS=${H2_STREAMS:-10}
LOAD_CPU=${LOAD_CPU:-1}
SERVER_CPU=${SERVER_CPU:-0}
NICE=${NICE:-0}
UPSTREAM_PORT=18080
CORSAIR_PORT=18081
CORSAIR_ADMIN_PORT=18082
NGINX_PORT=18083
NGINX_H2_PORT=18084
ORIGIN=https://app.example.com

log() { echo "== $*" >&2; }
die() { echo "run.sh: $*" >&2; exit 1; }

install_missing() {
    local missing=()
    command -v wrk >/dev/null || missing+=(wrk)
    command -v h2load >/dev/null || missing+=(nghttp2-client)
    command -v nginx >/dev/null || missing+=(nginx-light)
    command -v taskset >/dev/null || missing+=(util-linux)
    command -v curl >/dev/null || missing+=(curl)
    command -v python3 >/dev/null || missing+=(python3-minimal)
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

# A kB field of /proc/PID/status: status_kib PID VmRSS (now) or VmHWM (peak since last reset).
status_kib() { awk -v field="$2:" '$1 == field { print $2 }' "/proc/$1/status"; }
rss_split() { awk '/^RssAnon:/ { a = $2 } /^RssFile:/ { f = $2 } END { printf "anonymous %.1f MiB + file-backed %.1f MiB", a / 1024, f / 1024 }' "/proc/$1/status"; }
mib() { awk -v k="$1" 'BEGIN { printf "%.1f", k / 1024 }'; }
ms() { awk -v us="$1" 'BEGIN { printf "%.2f", us / 1000 }'; }
# Median of column $2 of file $1 (one run per line).
median() { cut -d' ' -f"$2" "$1" | sort -n | awk '{ v[NR] = $1 } END { print (NR % 2) ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2 }'; }
# Verdicts compare the measured figures, not the two-decimal ratios printed beside them: 1.196×
# nginx is not the 1.2× a goal asks for.
verdict() { if awk "BEGIN { exit !($1) }"; then echo "met"; else echo "**not met**"; fi; }
ratio() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.2f", a / b }'; }

PIDS=()
cleanup() {
    for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done
    wait 2>/dev/null || true
}
trap cleanup EXIT

install_missing
(( $(nproc) > LOAD_CPU && $(nproc) > SERVER_CPU )) || die "needs CPUs $LOAD_CPU and $SERVER_CPU"
for port in $(seq 18080 18099); do
    port_free "$port" || die "port $port is in use"
done

if [[ -z ${PROXY_BIN:-} ]]; then
    log "building corsair-proxy as the sidecar image does (profile-guided)"
    PROXY_BIN=${CARGO_TARGET_DIR:-$ROOT/target}/pgo/corsair-proxy
    bash "$ROOT/scripts/sidecar-pgo.sh" "$PROXY_BIN"
fi
[[ -x $PROXY_BIN ]] || die "no binary at $PROXY_BIN"
ENGINE_BENCH=(cargo bench --locked -p corsair-policy --features http --bench decide)
if [[ $ENGINE == 1 ]]; then
    log "building the engine benchmark"
    (cd "$ROOT" && "${ENGINE_BENCH[@]}" --no-run >&2)
fi
if [[ $FLOOR == 1 ]]; then
    log "building the floor"
    FLOOR_BIN=$(cd "$ROOT" && cargo bench --locked -p corsair-proxy --bench floor --no-run \
        --message-format=json | python3 -c '
import json, sys
for line in sys.stdin:
    m = json.loads(line)
    if m.get("reason") == "compiler-artifact" and m["target"]["name"] == "floor" and m.get("executable"):
        print(m["executable"])')
    [[ -x $FLOOR_BIN ]] || die "the floor did not build"
    ALSO="${ALSO:-} floor=$FLOOR_BIN"
fi
PROXY_CMD=("$PROXY_BIN")
[[ $(basename "$PROXY_BIN") == corsair ]] && PROXY_CMD+=(proxy)

WORK=$(mktemp -d /tmp/corsair-bench.XXXXXX)
mkdir -p "$WORK/tmp"
log "work directory (logs): $WORK"
CLK_TCK=$(getconf CLK_TCK)

# "USER SYSTEM" CPU time of processes (all their threads), in clock ticks.
cpu_ticks() { local u=0 s=0 p pu ps; for p in "$@"; do read -r pu ps < <(awk '{ print $14, $15 }' "/proc/$p/stat"); u=$((u + pu)); s=$((s + ps)); done; echo "$u $s"; }

# --- servers -------------------------------------------------------------------------------
declare -A PORT H2PORT SERVER_PIDS MAIN_PID
SERVERS=()

run_pinned() { # run_pinned CPU-or-empty CMD... (in the foreground)
    local cpu=$1; shift
    if [[ -n $cpu ]]; then nice -n "$NICE" taskset -c "$cpu" "$@"; else nice -n "$NICE" "$@"; fi
}

start_nginx() { # start_nginx NAME CONF WORKERS CPU
    local name=$1 conf=$2 workers=$3 cpu=$4
    sed "s/^worker_processes .*/worker_processes $workers;/" "$HERE/$conf" >"$WORK/$name.conf"
    local cmd=(nice -n "$NICE")
    [[ -n $cpu ]] && cmd+=(taskset -c "$cpu")
    "${cmd[@]}" nginx -p "$WORK" -c "$WORK/$name.conf" -g 'daemon off;' &
    MAIN_PID[$name]=$!
    PIDS+=($!)
}

# The worker processes of an nginx master, once it has started them.
nginx_workers() {
    local master=$1 workers
    for _ in $(seq 50); do
        workers=$(pgrep -d' ' -P "$master" || true)
        [[ -n $workers ]] && { echo "$workers"; return; }
        sleep 0.1
    done
    die "nginx $master started no worker"
}

evict() { python3 "$HERE/../evict.py" "$1"; }

start_corsair() { # start_corsair NAME PORT ADMIN THREADS CPU [ENV=VALUE...]
    local name=$1 port=$2 admin=$3 threads=$4 cpu=$5; shift 5
    # nice, taskset and env each exec the next, so $! is the proxy itself.
    local cmd=(nice -n "$NICE")
    [[ -n $cpu ]] && cmd+=(taskset -c "$cpu")
    cmd+=(env CORSAIR_LOG=warn "$@" "${PROXY_CMD[@]}" --policy "$HERE/policy.yaml"
        --upstream "http://127.0.0.1:$UPSTREAM_PORT" --listen "127.0.0.1:$port"
        --admin "127.0.0.1:$admin" --worker-threads "$threads")
    "${cmd[@]}" >"$WORK/$name.log" 2>&1 &
    MAIN_PID[$name]=$!
    PIDS+=($!)
    wait_port "$port" "$name"
    SERVER_PIDS[$name]=${MAIN_PID[$name]}
    PORT[$name]=$port
    H2PORT[$name]=$port
    SERVERS+=("$name")
}

start_setup() {
    local setup=$1 cpu workers
    if [[ $setup == pinned ]]; then cpu=$SERVER_CPU; workers=1; else cpu=""; workers=2; fi
    SERVERS=()
    start_nginx upstream nginx-upstream.conf "$workers" "$cpu"
    wait_port $UPSTREAM_PORT upstream
    SERVER_PIDS[upstream]=$(nginx_workers "${MAIN_PID[upstream]}")
    PORT[upstream]=$UPSTREAM_PORT

    evict "${PROXY_CMD[0]}"
    start_corsair corsair $CORSAIR_PORT $CORSAIR_ADMIN_PORT "$workers" "$cpu"
    local port=18085 extra main_cmd=("${PROXY_CMD[@]}")
    for extra in ${ALSO:-}; do
        PROXY_CMD=("${extra#*=}")
        start_corsair "corsair-${extra%%=*}" "$port" $((port + 1)) "$workers" "$cpu"
        port=$((port + 2))
    done
    PROXY_CMD=("${main_cmd[@]}")

    start_nginx nginx nginx-cors.conf "$workers" "$cpu"
    wait_port $NGINX_PORT nginx
    SERVER_PIDS[nginx]=$(nginx_workers "${MAIN_PID[nginx]}")
    PORT[nginx]=$NGINX_PORT
    H2PORT[nginx]=$NGINX_H2_PORT
    SERVERS+=(nginx)
    LOAD_PIN=$([[ $setup == pinned ]] && echo "$LOAD_CPU" || echo "")
    WRK_THREADS=$([[ $setup == pinned ]] && echo 1 || echo 2)
}

stop_setup() {
    for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done
    wait 2>/dev/null || true
    PIDS=()
    sleep 1
}

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
    # The floor speaks HTTP/1.1 only; the h2c rows run corsair and nginx alone.
    if [[ $H2 == 1 && $name != corsair-floor ]]; then
        headers=$(curl -s --http2-prior-knowledge -D - -o /dev/null -H "Origin: $ORIGIN" \
            "http://127.0.0.1:${H2PORT[$name]}/api/items" | tr -d '\r')
        grep -q '^HTTP/2 200' <<<"$headers" || die "$name: h2c GET failed:"$'\n'"$headers"
        grep -qi "^access-control-allow-origin: $ORIGIN\$" <<<"$headers" \
            || die "$name: h2c GET lacks Access-Control-Allow-Origin"
    fi
}

# --- measuring -----------------------------------------------------------------------------
# A process's peak RSS over one run: the kernel's high-water mark (VmHWM), reset to the current
# RSS before the run (writing 5 to clear_refs, Linux 4.0+) and read after it. Nothing runs beside
# the servers while they are measured: a sampling loop did before (an awk and a sleep forked every
# 0.2 s, for corsair only), and its wake-ups landed on the measured cores, which lengthened
# corsair's tail latency alone.
reset_peak() {
    echo 5 >"/proc/$1/clear_refs" || die "cannot reset the peak RSS of $1 (/proc/$1/clear_refs)"
}

# Appends "rps p50_us p99_us errors non2xx cpu_us_per_request peak_kib sys_us_per_request
# upstream_cpu_us_per_request load_cpu_percent" for one wrk run (the upstream's CPU while it
# served this server; wrk's own CPU time in % of one core, from the subshell's `times`).
measure_wrk() {
    local out_file=$1 name=$2 conns=$3 mix=$4 out before after up_before up_after peak=0
    local url="http://127.0.0.1:${PORT[$name]}/"
    # wrk refuses a zero duration, so WARMUP=0s means no warm-up rather than a failed run.
    if [[ ${WARMUP%s} != 0 ]]; then
        MIX=$mix run_pinned "$LOAD_PIN" wrk -t"$WRK_THREADS" -c"$conns" -d"$WARMUP" --timeout 5s -s "$HERE/mix.lua" "$url" >/dev/null
    fi
    [[ $name == corsair* ]] && reset_peak "${MAIN_PID[$name]}"
    # shellcheck disable=SC2086
    before=$(cpu_ticks ${SERVER_PIDS[$name]})
    # shellcheck disable=SC2086
    up_before=$(cpu_ticks ${SERVER_PIDS[upstream]})
    out=$(MIX=$mix run_pinned "$LOAD_PIN" wrk -t"$WRK_THREADS" -c"$conns" -d"$DURATION" --timeout 5s -s "$HERE/mix.lua" "$url"; times)
    # shellcheck disable=SC2086
    after=$(cpu_ticks ${SERVER_PIDS[$name]})
    # shellcheck disable=SC2086
    up_after=$(cpu_ticks ${SERVER_PIDS[upstream]})
    [[ $name == corsair* ]] && peak=$(status_kib "${MAIN_PID[$name]}" VmHWM)
    echo "$out" >>"$WORK/wrk.log"
    sed -n 's/^RESULT rps=\([0-9]*\) p50_us=\([0-9]*\) p99_us=\([0-9]*\) requests=\([0-9]*\) errors=\([0-9]*\) non2xx=\([0-9]*\)$/\1 \2 \3 \5 \6 \4/p' <<<"$out" \
        | awk -v before="$before" -v after="$after" -v up="$up_before $up_after" -v hz="$CLK_TCK" -v peak="$peak" \
            -v load="$(tail -n1 <<<"$out")" -v secs="${DURATION%s}" '
            function seconds(t) { split(t, p, /[ms]/); return p[1] * 60 + p[2] }
            BEGIN { split(before, b); split(after, a); user = a[1] - b[1]; sys = a[2] - b[2]
                    split(up, u); upstream = u[3] + u[4] - u[1] - u[2]
                    split(load, l, " "); load_pct = (seconds(l[1]) + seconds(l[2])) / secs * 100 }
            { printf "%s %s %s %s %s %.1f %s %.1f %.1f %.0f\n", $1, $2, $3, $4, $5,
                (user + sys) / hz * 1e6 / $6, peak, sys / hz * 1e6 / $6, upstream / hz * 1e6 / $6, load_pct }' >>"$out_file"
}

# Appends "rps p50_us p99_us errors non2xx cpu_us_per_request peak_kib sys_us_per_request" for
# one h2load run.
measure_h2() {
    local out_file=$1 name=$2 out before after peak=0 secs warm
    local url="http://127.0.0.1:${H2PORT[$name]}/api/items"
    secs=${DURATION%s}; warm=${WARMUP%s}
    [[ $name == corsair* ]] && reset_peak "${MAIN_PID[$name]}"
    # shellcheck disable=SC2086
    before=$(cpu_ticks ${SERVER_PIDS[$name]})
    out=$(run_pinned "$LOAD_PIN" h2load -c "$H2_CONNECTIONS" -m "$H2_STREAMS" -t "$WRK_THREADS" \
        -D "$secs" --warm-up-time "$warm" -H "origin: $ORIGIN" "$url" 2>&1)
    # shellcheck disable=SC2086
    after=$(cpu_ticks ${SERVER_PIDS[$name]})
    [[ $name == corsair* ]] && peak=$(status_kib "${MAIN_PID[$name]}" VmHWM)
    echo "$out" >>"$WORK/h2load.log"
    awk -v before="$before" -v after="$after" -v hz="$CLK_TCK" -v peak="$peak" -v secs="$secs" '
        BEGIN { split(before, b); split(after, a); user = a[1] - b[1]; sys = a[2] - b[2] }
        /^finished in/ { gsub(",", "", $4); rps = $4 }
        /^requests:/ { failed = $10; errored = $12 }
        /^status codes:/ { gsub(",", ""); bad = $5 + $7 + $9 }
        /^time for request:/ { mean = $6; unit = mean; sub(/[0-9.]+/, "", unit); sub(/[a-z]+$/, "", mean);
            p50 = (unit == "ms") ? mean * 1000 : (unit == "s") ? mean * 1e6 : mean }
        END { printf "%.0f %d %d %d %d %.1f %s %.1f\n", rps, p50, 0, failed + errored, bad,
              (user + sys) / hz * 1e6 / (rps * secs), peak, sys / hz * 1e6 / (rps * secs) }' <<<"$out" >>"$out_file"
}

# --- the run -------------------------------------------------------------------------------
LOAD_BEFORE=$(cut -d' ' -f1-3 /proc/loadavg)
STARTED=$(date -u '+%Y-%m-%d %H:%M UTC')
declare -A IDLE_RSS IDLE_SPLIT
for setup in $SETUPS; do
    log "setup $setup: starting servers"
    start_setup "$setup"
    curl -s -o /dev/null -H "Origin: $ORIGIN" "http://127.0.0.1:$CORSAIR_PORT/api/items"
    sleep 1
    IDLE_RSS[$setup]=$(status_kib "${MAIN_PID[corsair]}" VmRSS)
    IDLE_SPLIT[$setup]=$(rss_split "${MAIN_PID[corsair]}")
    for name in "${SERVERS[@]}"; do check_proxy "$name" "${PORT[$name]}"; done
    for workload in $WORKLOADS; do
        targets=("${SERVERS[@]}")
        [[ $workload == mix ]] && targets=(upstream "${SERVERS[@]}")
        for conns in $CONNECTIONS; do
            for round in $(seq "$ROUNDS"); do
                for name in "${targets[@]}"; do
                    log "$setup $workload c$conns round $round/$ROUNDS: $name"
                    measure_wrk "$WORK/runs.$setup.$workload.$conns.$name" "$name" "$conns" "$workload"
                done
            done
        done
    done
    if [[ $H2 == 1 ]]; then
        for round in $(seq "$ROUNDS"); do
            for name in "${SERVERS[@]}"; do
                [[ $name == corsair || $name == nginx ]] || continue
                log "$setup h2c round $round/$ROUNDS: $name"
                measure_h2 "$WORK/runs.$setup.h2.$H2_CONNECTIONS.$name" "$name"
            done
        done
    fi
    stop_setup
done
LOAD_AFTER=$(cut -d' ' -f1-3 /proc/loadavg)

# The engine's cases: criterion's group names in decide.rs.
ENGINE_CASES=("simple GET, 1 origin" "preflight 2 headers, 1 origin" "simple GET, 1000 exact + 50 wildcards")
if [[ $ENGINE == 1 ]]; then
    log "engine: criterion, corsair against tower-http"
    ENGINE_STARTED=$(date -u '+%H:%M UTC')
    (cd "$ROOT" && "${ENGINE_BENCH[@]}" -- --warm-up-time 1 --measurement-time 3 \
        >"$WORK/engine.log" 2>&1) \
        || die "the engine benchmark failed (log: $WORK/engine.log)"
    CRITERION=$(cd "$ROOT" && cargo metadata --format-version 1 --no-deps \
        | python3 -c 'import json, sys; print(json.load(sys.stdin)["target_directory"])')/criterion
fi
# The mean of one criterion benchmark, in ns: engine_ns GROUP FUNCTION.
engine_ns() {
    python3 -c 'import json, sys; print("%.1f" % json.load(open(sys.argv[1]))["mean"]["point_estimate"])' \
        "$CRITERION/$1/$2/new/estimates.json"
}

# --- the report ----------------------------------------------------------------------------
echo
echo "Proxy benchmark, $STARTED: median of $ROUNDS runs of $DURATION each after a $WARMUP warm-up."
echo "Binary: $PROXY_BIN ($(du -h "$PROXY_BIN" | cut -f1)). $(nproc) CPUs: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ *//'); load average before $LOAD_BEFORE, after $LOAD_AFTER."
echo "$(wrk -v 2>&1 | head -n1 | cut -d' ' -f1-2), $(h2load --version 2>&1 | head -n1), $(nginx -v 2>&1 | cut -d' ' -f3)."
echo
echo "| setup | workload | connections | server | requests/s | p50 (ms) | p99 (ms) | CPU/request (µs) | of which system (µs) | upstream CPU/request (µs) | peak RSS (MiB) | load CPU (%) | errors | non-2xx |"
echo "|---|---|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"
rows=()
for setup in $SETUPS; do
    for workload in $WORKLOADS h2; do
        [[ $workload == h2 && $H2 != 1 ]] && continue
        conns_list=$CONNECTIONS; [[ $workload == h2 ]] && conns_list=$H2_CONNECTIONS
        for conns in $conns_list; do
            for f in "$WORK"/runs."$setup.$workload.$conns".*; do
                [[ -e $f ]] || continue
                name=$(basename "$f"); name=${name#runs."$setup.$workload.$conns".}
                p99=$(ms "$(median "$f" 3)"); [[ $workload == h2 ]] && p99="–"
                peak=$(median "$f" 7); peak=$([[ $peak == 0 ]] && echo "–" || mib "$peak")
                up=$(median "$f" 9); [[ $workload == h2 || $name == upstream ]] && up="–"
                load=$(median "$f" 10); [[ $workload == h2 ]] && load="–"
                label=$workload; [[ $workload == h2 ]] && label="h2c GET (h2load -m $H2_STREAMS; p50 column: mean)"
                echo "| $setup | $label | $conns | $name | $(median "$f" 1) | $(ms "$(median "$f" 2)") | $p99 | $(median "$f" 6) | $(median "$f" 8) | $up | $peak | $load | $(awk '{ s += $4 } END { print s }' "$f") | $(awk '{ s += $5 } END { print s }' "$f") |"
            done
        done
    done
done
echo
echo "Goals (corsair against nginx in the same setup and run):"
echo
echo "| setup | goal | measured | verdict |"
echo "|---|---|---|---|"
for setup in $SETUPS; do
    for workload in $WORKLOADS; do
        for conns in $CONNECTIONS; do
            c=$WORK/runs.$setup.$workload.$conns.corsair; n=$WORK/runs.$setup.$workload.$conns.nginx
            [[ -e $c && -e $n ]] || continue
            r=$(ratio "$(median "$c" 1)" "$(median "$n" 1)")
            echo "| $setup | $workload, $conns connections: ≥ 1.2× nginx requests/s | ${r}× ($(median "$c" 1) vs $(median "$n" 1)) | $(verdict "$(median "$c" 1) >= 1.2 * $(median "$n" 1)") |"
            if [[ $workload != mix ]]; then
                echo "| $setup | $workload, $conns connections: p99 ≤ nginx | $(ms "$(median "$c" 3)") vs $(ms "$(median "$n" 3)") ms | $(verdict "$(median "$c" 3) <= $(median "$n" 3)") |"
            else
                cr=$(ratio "$(median "$c" 6)" "$(median "$n" 6)")
                echo "| $setup | mix, $conns connections: CPU/request ≤ 0.8× nginx | ${cr}× ($(median "$c" 6) vs $(median "$n" 6) µs) | $(verdict "$(median "$c" 6) <= 0.8 * $(median "$n" 6)") |"
            fi
            if [[ $conns == 256 ]]; then
                peak=$(cut -d' ' -f7 "$c" | sort -n | tail -n1)
                echo "| $setup | RSS during 256 connections ($workload) ≤ 24 MiB | peak $(mib "$peak") MiB | $(verdict "$peak <= 24576") |"
            fi
        done
    done
    c=$WORK/runs.$setup.h2.$H2_CONNECTIONS.corsair; n=$WORK/runs.$setup.h2.$H2_CONNECTIONS.nginx
    if [[ -e $c && -e $n ]]; then
        r=$(ratio "$(median "$c" 1)" "$(median "$n" 1)")
        echo "| $setup | h2c GETs ($H2_CONNECTIONS connections × $H2_STREAMS streams): ≥ 1.2× nginx | ${r}× ($(median "$c" 1) vs $(median "$n" 1)) | $(verdict "$(median "$c" 1) >= 1.2 * $(median "$n" 1)") |"
    fi
    echo "| $setup | idle RSS after one request ≤ 8 MiB | $(mib "${IDLE_RSS[$setup]}") MiB (${IDLE_SPLIT[$setup]}) | $(verdict "${IDLE_RSS[$setup]} <= 8192") |"
done
if [[ $ENGINE == 1 ]]; then
    for case in "${ENGINE_CASES[@]}"; do
        t=$(engine_ns "$case" tower-http); c=$(engine_ns "$case" corsair)
        f=$(engine_ns "$case" "header map inserts only")
        r=$(ratio "$t" "$c")
        # The bound: the decided headers' insertion alone, with no reading and no decision.
        echo "| engine ($ENGINE_STARTED) | $case: engine path ≥ 5× tower-http's CorsLayer | ${r}× ($t vs $c ns; inserting the headers alone: $f ns, at most $(ratio "$t" "$f")×) | $(verdict "$t >= 5 * $c") |"
    done
fi

# Every other server (ALSO, FLOOR) against nginx, as the goals put corsair.
# (`if`, not `&&`: with no other server the glob stays unexpanded, and a failed test as the
# loop's last status would end the script here under `set -e -o pipefail`.)
others=$(for f in "$WORK"/runs.*.corsair-*; do if [[ -e $f ]]; then echo "${f##*.}"; fi; done | sort -u)
for other in $others; do
    echo
    echo "$other against nginx in the same setup and run:"
    echo
    echo "| setup | workload | connections | requests/s ÷ nginx | p99 $other / nginx (ms) | CPU/request ÷ nginx | load CPU $other / nginx (%) |"
    echo "|---|---|---:|---:|---|---:|---|"
    for setup in $SETUPS; do
        for workload in $WORKLOADS; do
            for conns in $CONNECTIONS; do
                o=$WORK/runs.$setup.$workload.$conns.$other; n=$WORK/runs.$setup.$workload.$conns.nginx
                [[ -e $o && -e $n ]] || continue
                echo "| $setup | $workload | $conns | $(ratio "$(median "$o" 1)" "$(median "$n" 1)")× | $(ms "$(median "$o" 3)") / $(ms "$(median "$n" 3)") | $(ratio "$(median "$o" 6)" "$(median "$n" 6)")× | $(median "$o" 10) / $(median "$n" 10) |"
            done
        done
    done
done

if [[ " $SETUPS " == *" pinned "* ]]; then
    echo
    echo "Pinned: the proxy and the upstream share one core, so a proxy that spent no user-space time"
    echo "at all would still need its system time and the upstream's for every request. That bound:"
    echo
    echo "| workload | connections | corsair system + upstream (µs) | at most (requests/s) | ÷ nginx measured |"
    echo "|---|---:|---:|---:|---:|"
    for workload in $WORKLOADS; do
        for conns in $CONNECTIONS; do
            c=$WORK/runs.pinned.$workload.$conns.corsair; n=$WORK/runs.pinned.$workload.$conns.nginx
            [[ -e $c && -e $n ]] || continue
            floor=$(awk -v s="$(median "$c" 8)" -v u="$(median "$c" 9)" 'BEGIN { printf "%.1f", s + u }')
            most=$(awk -v f="$floor" 'BEGIN { printf "%.0f", 1e6 / f }')
            echo "| $workload | $conns | $floor | $most | $(ratio "$most" "$(median "$n" 1)")× |"
        done
    done
fi
