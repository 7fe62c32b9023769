#!/usr/bin/env bash
# System calls per request (perf's raw_syscalls:sys_enter tracepoint), corsair and nginx doing
# the same CORS job: allowed GETs (proxied) and allowed preflights. A count, not a speed: it
# does not depend on the machine's load. Each server runs one worker on CPU 0, wrk -c64 on CPU 1.
#
#   bash benches/proxy/syscalls.sh                      # the release build of this checkout
#   BINS="a=/path/corsair-proxy b=/other/corsair-proxy" bash benches/proxy/syscalls.sh
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

echo "| server | request | requests | system calls | per request |"
echo "|---|---|---:|---:|---:|"
for mix in get preflight; do
    for name in "${NAMES[@]}"; do
        url="http://127.0.0.1:${PORT_OF[$name]}/"
        MIX=$mix taskset -c 1 wrk -t1 -c64 -d1s -s "$HERE/mix.lua" "$url" >/dev/null
        perf stat -x, -e raw_syscalls:sys_enter -p "${PID_OF[$name]}" -o "$WORK/perf.$name.$mix" \
            -- sleep $((SECONDS_LOAD + 1)) &
        perf_pid=$!
        sleep 0.2
        out=$(MIX=$mix taskset -c 1 wrk -t1 -c64 -d"${SECONDS_LOAD}s" -s "$HERE/mix.lua" "$url")
        wait $perf_pid
        requests=$(sed -n 's/^RESULT .* requests=\([0-9]*\) .*/\1/p' <<<"$out")
        calls=$(awk -F, '/raw_syscalls/ { print $1 }' "$WORK/perf.$name.$mix")
        [[ ${requests:-0} != 0 && -n $calls ]] || die "no count for $name $mix: $out"
        # perf counts for a second longer than wrk runs; the idle server makes few calls then.
        echo "| $name | $mix | $requests | $calls | $(awk -v c="$calls" -v r="$requests" 'BEGIN { printf "%.2f", c / r }') |"
    done
done
echo "($(date -u '+%Y-%m-%d %H:%M UTC'), $(uname -r))"
