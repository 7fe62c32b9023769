#!/usr/bin/env bash
# Seeds each fuzz target's corpus directory from the test fixtures and the examples.
# Usage: fuzz/seed.sh CORPUS_ROOT   (creates CORPUS_ROOT/<target>/ for every target)
set -euo pipefail
root=$1
repo=$(cd "$(dirname "$0")/.." && pwd)
mkdir -p "$root"/{policy,request_headers,origin,decide,admission_review}

# policy: the example policies, and the policy objects of the admission fixtures as JSON manifests.
cp "$repo"/deploy/examples/*-policy.yaml "$root/policy/"
for f in "$repo"/tests/fixtures/admission/policy-*.json; do
  # A DELETE review carries its policy as oldObject.
  python3 -c 'import json,sys; r=json.load(open(sys.argv[1]))["request"]; print(json.dumps(r["object"] or r["oldObject"]))' \
    "$f" > "$root/policy/$(basename "$f")"
done

# request_headers: field lines as browsers send them, and a few hostile ones.
printf 'content-type' > "$root/request_headers/simple"
printf 'content-type, x-token\nauthorization' > "$root/request_headers/two-lines"
printf ' ,, X-A ,\t' > "$root/request_headers/empties"

# origin: byte 0 (even) checks a policy entry, byte 1 (odd) a request Origin. Entries come from
# the example policies.
i=0
while read -r o; do
  printf '\x00%s' "$o" > "$root/origin/entry-$i"
  printf '\x01%s' "$o" > "$root/origin/request-$i"
  i=$((i + 1))
done < <(grep -ho 'https\?://[^" ,]*' "$repo"/deploy/examples/*-policy.yaml | sort -u)
for o in 'https://*.example.org' 'https://x.example.org' 'https://pr-7.preview.example.io' \
         'https://[::1]:8443' 'null' 'https://app.example.com.evil.test'; do
  printf '\x00%s' "$o" > "$root/origin/entry-$i"
  printf '\x01%s' "$o" > "$root/origin/request-$i"
  i=$((i + 1))
done

# admission_review: every admission fixture, for both webhooks (first byte 0: inject, 1: validate).
for f in "$repo"/tests/fixtures/admission/*.json; do
  name=$(basename "$f" .json)
  { printf '\x00'; cat "$f"; } > "$root/admission_review/inject-$name"
  { printf '\x01'; cat "$f"; } > "$root/admission_review/validate-$name"
done

# Every input a fuzzer once failed on is kept under fuzz/regressions/<target>/ and replayed by
# every run: a fixed bug that comes back fails at once, not when the fuzzer finds it again.
for target_dir in "$repo"/fuzz/regressions/*/; do
  [ -d "$target_dir" ] || continue
  target=$(basename "$target_dir")
  for f in "$target_dir"*; do
    [ -f "$f" ] || continue
    cp "$f" "$root/$target/regression-$(basename "$f")"
  done
done
