#!/usr/bin/env bash
# Builds the sidecar binary, `corsair-proxy`, with profile-guided optimisation: what the sidecar
# image ships (Dockerfile target `sidecar`).
#
#   bash scripts/sidecar-pgo.sh [OUT]        # OUT defaults to ${CARGO_TARGET_DIR:-target}/pgo/corsair-proxy
#
# 1. builds an instrumented corsair-proxy (-Cprofile-generate) in target/pgo/generate;
# 2. trains it: the CORS work the sidecar exists for, through it to an nginx upstream on
#    loopback (benches/proxy's upstream), under deploy/examples/routes-policy.yaml: browser-shaped
#    requests over that policy's routes, allowed and refused, with and without an Origin, over
#    HTTP/1.1 keep-alive with wrk (scripts/sidecar-pgo.lua, 3 × TRAIN_SECONDS), GETs over h2c
#    with h2load (TRAIN_SECONDS, default 5), and uploads of 1 MiB with curl. Not the benchmark's
#    policy or requests: a profile of exactly what benches/proxy measures would flatter it;
# 3. merges the profile with llvm-profdata and builds again with it (-Cprofile-use) in
#    target/pgo/use, then copies the binary to OUT.
#
# Why: a request's path crosses hyper, http, tokio and corsair's own code, more than the
# instruction cache holds; the profile lets LLVM lay the hot path out together and move cold
# code away (docs/benchmarks.md, "Profile-guided build").
#
# llvm-profdata must read the raw profiles of rustc's LLVM: LLVM_PROFDATA if set, else the
# rustup component llvm-tools, an exact match (added with rustup when missing), else, when
# rustup cannot add it, Debian's llvm-profdata-19 (read rustc 1.95's LLVM 22 profiles here).
# wrk, h2load (nghttp2-client), nginx (nginx-light) and curl are installed with apt-get when
# missing, as is llvm-19 when no llvm-profdata is found. Any failure stops the build: there is
# no silent fallback to an unprofiled binary.
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
PGO_DIR=${CARGO_TARGET_DIR:-$ROOT/target}/pgo
OUT=${1:-$PGO_DIR/corsair-proxy}
TRAIN_SECONDS=${TRAIN_SECONDS:-5}
BENCH=$ROOT/benches/proxy
ORIGIN=https://shop.example.com
POLICY=$ROOT/deploy/examples/routes-policy.yaml
UPSTREAM_PORT=${PGO_UPSTREAM_PORT:-18180}
PROXY_PORT=${PGO_PROXY_PORT:-18181}
ADMIN_PORT=${PGO_ADMIN_PORT:-18182}
BUILD=(cargo build --release --locked -p corsair-proxy --bin corsair-proxy)

log() { echo "== sidecar-pgo: $*" >&2; }
die() { echo "sidecar-pgo: $*" >&2; exit 1; }

# --- tools ---------------------------------------------------------------------------------
# Where the llvm-profdata of rustc's own LLVM is, once the rustup component llvm-tools is added.
toolchain_profdata() {
    echo "$(rustc --print sysroot)/lib/rustlib/$(rustc -vV | sed -n 's/^host: //p')/bin/llvm-profdata"
}
find_profdata() {
    if [[ -n ${LLVM_PROFDATA:-} ]]; then echo "$LLVM_PROFDATA"; return; fi
    if [[ -x $(toolchain_profdata) ]]; then
        toolchain_profdata
    elif command -v llvm-profdata-19 >/dev/null; then
        command -v llvm-profdata-19
    fi
}

if [[ -z ${LLVM_PROFDATA:-} && ! -x $(toolchain_profdata) ]] && command -v rustup >/dev/null; then
    log "adding the rustup component llvm-tools (the llvm-profdata of rustc's own LLVM)"
    timeout 300 rustup component add llvm-tools >&2 || log "rustup could not add llvm-tools; trying Debian's llvm-19"
fi
missing=()
command -v wrk >/dev/null || missing+=(wrk)
command -v h2load >/dev/null || missing+=(nghttp2-client)
command -v nginx >/dev/null || missing+=(nginx-light)
command -v curl >/dev/null || missing+=(curl)
[[ -n $(find_profdata) ]] || missing+=(llvm-19)
if ((${#missing[@]})); then
    log "installing ${missing[*]}"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi
PROFDATA=$(find_profdata)
[[ -n $PROFDATA ]] || die "no llvm-profdata (rustup component add llvm-tools, or Debian llvm-19)"
for port in $UPSTREAM_PORT $PROXY_PORT $ADMIN_PORT; do
    if (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then
        die "port $port is in use (PGO_UPSTREAM_PORT, PGO_PROXY_PORT, PGO_ADMIN_PORT move them)"
    fi
done

# --- 1. instrumented build -----------------------------------------------------------------
RAW=$PGO_DIR/raw
rm -rf "$RAW"
mkdir -p "$RAW"
log "building the instrumented binary"
(cd "$ROOT" && RUSTFLAGS="${RUSTFLAGS:-} -Cprofile-generate=$RAW" \
    CARGO_TARGET_DIR="$PGO_DIR/generate" "${BUILD[@]}" >&2)

# --- 2. training ---------------------------------------------------------------------------
WORK=$(mktemp -d /tmp/corsair-pgo.XXXXXX)
mkdir -p "$WORK/tmp"
PIDS=()
DONE=
# The work directory (logs, the upload body) is kept only when the build failed, for its logs.
cleanup() {
    for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done
    wait 2>/dev/null || true
    [[ -z $DONE ]] || rm -rf "$WORK"
}
trap cleanup EXIT

sed "s/127\.0\.0\.1:18080/127.0.0.1:$UPSTREAM_PORT/" "$BENCH/nginx-upstream.conf" >"$WORK/upstream.conf"
nginx -p "$WORK" -c "$WORK/upstream.conf" -g 'daemon off;' &
PIDS+=($!)
CORSAIR_LOG=warn "$PGO_DIR/generate/release/corsair-proxy" --policy "$POLICY" \
    --upstream "http://127.0.0.1:$UPSTREAM_PORT" --listen "127.0.0.1:$PROXY_PORT" \
    --admin "127.0.0.1:$ADMIN_PORT" --worker-threads 1 2>"$WORK/proxy.log" &
PROXY_PID=$!
PIDS+=($PROXY_PID)
URL=http://127.0.0.1:$PROXY_PORT/api/items
code=
for _ in $(seq 100); do
    code=$(curl -s -o /dev/null -w '%{http_code}' -H "origin: $ORIGIN" "$URL") || true
    [[ $code == 200 ]] && break
    sleep 0.1
done
[[ $code == 200 ]] || die "the instrumented proxy answered ${code:-nothing}, not 200 through the upstream (logs in $WORK)"

# The loads must complete with no error, and refuse only what the policy refuses: a profile of
# failures would lay out the wrong path.
out=$(wrk -t1 -c32 -d"$((3 * TRAIN_SECONDS))s" -s "$ROOT/scripts/sidecar-pgo.lua" "http://127.0.0.1:$PROXY_PORT/")
result=$(grep '^RESULT' <<<"$out") || die "wrk printed no result: $out"
log "trained on browser-shaped requests: $result"
[[ $result =~ requests=([0-9]+)\ errors=0\ non2xx=([0-9]+)\ expected_non2xx_share=([0-9.]+) ]] \
    || die "the browser-shaped load failed: $result"
awk -v n="${BASH_REMATCH[1]}" -v refused="${BASH_REMATCH[2]}" -v share="${BASH_REMATCH[3]}" \
    'BEGIN { exit !(n > 0 && refused / n > share - 0.02 && refused / n < share + 0.02) }' \
    || die "the proxy refused a share of the browser-shaped load other than the policy's: $result"
out=$(h2load -c 16 -m 10 -D "$TRAIN_SECONDS" -H "origin: $ORIGIN" "$URL" 2>&1)
grep -q ' 0 failed, 0 errored, 0 timeout' <<<"$out" || die "the h2c load failed: $out"
log "trained on h2c: $(grep '^requests:' <<<"$out")"
head -c 1048576 /dev/urandom >"$WORK/body"
for _ in $(seq 20); do
    code=$(curl -s -o /dev/null -w '%{http_code}' -H "origin: $ORIGIN" --data-binary "@$WORK/body" "$URL")
    [[ $code == 200 ]] || die "an upload through the instrumented proxy answered $code"
done
log "trained on 20 uploads of 1 MiB"

# The profile is written when the process exits on its own: SIGTERM is its graceful shutdown.
kill -TERM "$PROXY_PID"
wait "$PROXY_PID" || die "the instrumented proxy did not exit cleanly (logs in $WORK)"
compgen -G "$RAW/*.profraw" >/dev/null || die "the instrumented proxy wrote no profile in $RAW"

# --- 3. the optimised build ----------------------------------------------------------------
"$PROFDATA" merge -o "$WORK/merged.profdata" "$RAW"/*.profraw \
    || die "$PROFDATA could not read rustc's profiles; set LLVM_PROFDATA to one of rustc's LLVM ($(rustc -vV | sed -n 's/^LLVM version: //p'))"
# Named by its content, so that a new profile is a new RUSTFLAGS and cargo rebuilds with it.
PROFILE=$PGO_DIR/corsair-proxy-$(sha256sum "$WORK/merged.profdata" | cut -c1-16).profdata
rm -f "$PGO_DIR"/corsair-proxy-*.profdata
mv "$WORK/merged.profdata" "$PROFILE"
log "building with the profile"
# A profile of other code than the one being built (an instrumented binary left over from
# another checkout) is not an error to rustc: it warns per function and drops those counts,
# and the build comes out partly unprofiled, with a worse layout. That is refused here.
(cd "$ROOT" && RUSTFLAGS="${RUSTFLAGS:-} -Cprofile-use=$PROFILE" \
    CARGO_TARGET_DIR="$PGO_DIR/use" "${BUILD[@]}" 2>&1) | tee "$WORK/use.log" >&2
if mismatched=$(grep -c 'hash mismatch' "$WORK/use.log"); then
    die "the profile does not match the code built: rustc discarded the counts of $mismatched functions (an instrumented binary of other code in $PGO_DIR/generate?); remove $PGO_DIR/generate and build again"
fi
mkdir -p "$(dirname "$OUT")"
cp "$PGO_DIR/use/release/corsair-proxy" "$OUT"
DONE=1
log "built $OUT"
