#!/usr/bin/env bash
# Kernel work per request, counted with perf's tracepoints, corsair and nginx doing the same CORS
# job: allowed GETs (proxied) and allowed preflights. By default: system calls, context switches
# (sched_switch), user page faults, packets sent (net_dev_xmit: on loopback every packet, data or
# bare ACK, is sent once and received in a softirq) and softirqs, each for the proxy and for the
# upstream while it serves that proxy. Counts, not speeds: they do not depend on the machine's
# load. Each server runs one worker on CPU 0, wrk -c64 on CPU 1.
#
#   bash benches/proxy/syscalls.sh                      # the release build of this checkout
#   BINS="a=/path/corsair-proxy b=/other/corsair-proxy" bash benches/proxy/syscalls.sh
#   EVENTS="raw_syscalls:sys_enter syscalls:sys_enter_epoll_wait" bash benches/proxy/syscalls.sh
#
# Needs perf (Debian linux-perf) with access to tracepoints (root), wrk and nginx-light.
set -euo pipefail

HERE=$(cd "$(dirname "$0")" && pwd)
ROOT=$(cd "$HERE/../.." && pwd)
SECONDS_LOAD=${LOAD_SECONDS:-3}
die() { echo "syscalls.sh: $*" >&2; exit 1; }
for tool in perf wrk nginx curl taskset; do
    command -v $tool >/dev/null || die "$tool is missing (linux-perf, wrk, nginx-light, curl)"
done
if [[ -z ${BINS:-} ]]; then
    (cd "$ROOT" && cargo build --release --locked -p corsair-proxy --features cli --bin corsair-proxy >&2)
    BINS="corsair=$ROOT/target/release/corsair-proxy"
fi

WORK=$(mktemp -d /tmp/corsair-syscalls.XXXXXX)
mkdir -p "$WORK/tmp"
PIDS=()
cleanup() { for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done; wait 2>/dev/null || true; }
trap cleanup EXIT
wait_port() {
    for _ in $(seq 100); do curl -s -o /dev/null "http://127.0.0.1:$1/" && return 0; sleep 0.1; done
    die "nothing listens on $1 (logs in $WORK)"
}

sed 's/^worker_processes .*/worker_processes 1;/' "$HERE/nginx-upstream.conf" >"$WORK/upstream.conf"
taskset -c 0 nginx -p "$WORK" -c "$WORK/upstream.conf" -g 'daemon off;' &
UPSTREAM_MASTER=$!
PIDS+=($!)
wait_port 18080
sed 's/^worker_processes .*/worker_processes 1;/' "$HERE/nginx-cors.conf" >"$WORK/nginx.conf"
taskset -c 0 nginx -p "$WORK" -c "$WORK/nginx.conf" -g 'daemon off;' &
NGINX_MASTER=$!
PIDS+=($!)
wait_port 18083
NAMES=(nginx)
declare -A PID_OF PORT_OF
PID_OF[nginx]=$(pgrep -P "$NGINX_MASTER" | head -n1)
PORT_OF[nginx]=18083
port=18085
for entry in $BINS; do
    name=${entry%%=*}
    taskset -c 0 env CORSAIR_LOG=warn "${entry#*=}" --policy "$HERE/policy.yaml" \
        --upstream http://127.0.0.1:18080 --listen "127.0.0.1:$port" \
        --admin "127.0.0.1:$((port + 1))" --worker-threads 1 >"$WORK/$name.log" 2>&1 &
    PIDS+=($!)
    PID_OF[$name]=$!
    PORT_OF[$name]=$port
    wait_port "$port"
    NAMES=("$name" "${NAMES[@]}")
    port=$((port + 2))
done

EVENTS=${EVENTS:-"raw_syscalls:sys_enter sched:sched_switch exceptions:page_fault_user net:net_dev_xmit irq:softirq_entry"}
UPSTREAM_WORKER=$(pgrep -P "$UPSTREAM_MASTER" | head -n1)
perf_events=()
header="| server | request | requests |"
rule="|---|---|---:|"
for event in $EVENTS; do
    perf_events+=(-e "$event")
    header+=" ${event#*:} per request (upstream's) |"
    rule+="---:|"
done
echo "$header"
echo "$rule"
# The count of $1 in perf's CSV file $2, per request ($3).
per_request() { awk -F, -v e="$1" -v r="$3" '$3 == e { printf "%.2f", $1 / r }' "$2"; }
for mix in get preflight; do
    for name in "${NAMES[@]}"; do
        url="http://127.0.0.1:${PORT_OF[$name]}/"
        MIX=$mix taskset -c 1 wrk -t1 -c64 -d1s -s "$HERE/mix.lua" "$url" >/dev/null
        perf stat -x, "${perf_events[@]}" -p "${PID_OF[$name]}" -o "$WORK/perf.$name.$mix" \
            -- sleep $((SECONDS_LOAD + 1)) &
        proxy_perf=$!
        perf stat -x, "${perf_events[@]}" -p "$UPSTREAM_WORKER" -o "$WORK/upstream.$name.$mix" \
            -- sleep $((SECONDS_LOAD + 1)) &
        upstream_perf=$!
        sleep 0.2
        out=$(MIX=$mix taskset -c 1 wrk -t1 -c64 -d"${SECONDS_LOAD}s" -s "$HERE/mix.lua" "$url")
        wait $proxy_perf $upstream_perf
        requests=$(sed -n 's/^RESULT .* requests=\([0-9]*\) .*/\1/p' <<<"$out")
        [[ ${requests:-0} != 0 ]] || die "no requests for $name $mix: $out"
        row="| $name | $mix | $requests |"
        for event in $EVENTS; do
            count=$(per_request "$event" "$WORK/perf.$name.$mix" "$requests")
            [[ -n $count ]] || die "perf counted no $event for $name $mix (is it a tracepoint here?)"
            row+=" $count ($(per_request "$event" "$WORK/upstream.$name.$mix" "$requests")) |"
        done
        # perf counts for a second longer than wrk runs; the idle servers do little then.
        echo "$row"
    done
done
echo "($(date -u '+%Y-%m-%d %H:%M UTC'), $(uname -r))"
