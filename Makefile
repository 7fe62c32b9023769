# `make test` is the one command that runs every test; it installs what the tests need first.
# CI (.ci/run) calls exactly `make test` on a fresh clone.

SHELL := /bin/bash
.SHELLFLAGS := -eu -o pipefail -c
VENV := $(CURDIR)/.venv
PY_DEPS := kubernetes-validate==1.37.0 helm-python-sdk==0.2.2 pytest==8.3.4 PyYAML==6.0.2
export PATH := $(VENV)/bin:$(PATH)
export CARGO_TERM_COLOR ?= never

.PHONY: test deps deps-apt deps-python deps-kubectl lint deny rust-test fuzz fuzz-tools fuzz-test chart-test pgo-test demo bench generate soak

test: deps lint deny rust-test fuzz-test chart-test pgo-test
	@echo "make test: all suites passed"

deps: deps-apt deps-python deps-kubectl

# Debian packages the tests use: Chromium for the browser test, procps for `kill`, a C and C++
# compiler (ring's build script, the fuzzers' libFuzzer) and Python with venv (the chart tests'
# virtualenv, the fuzz corpus seeding), each only when missing.
PY_VENV_OK := $(shell python3 -c 'import venv, ensurepip' 2>/dev/null && echo yes)
APT_NEEDS := $(if $(wildcard /usr/bin/chromium),,chromium) $(if $(wildcard /bin/kill /usr/bin/kill),,procps) \
	$(if $(and $(shell command -v cc 2>/dev/null),$(shell command -v c++ 2>/dev/null)),,build-essential) \
	$(if $(PY_VENV_OK),,python3 python3-venv)
deps-apt:
	@if [ -n "$(strip $(APT_NEEDS))" ]; then \
		echo "installing Debian packages: $(strip $(APT_NEEDS))"; \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $(APT_NEEDS) >/dev/null; \
	fi

# kubectl with its built-in kustomize, for the `kubectl apply -k deploy/` test: Debian's
# kubernetes-client unpacked under target/tools (not installed, so no system kubectl is touched).
KUBECTL_DIR := $(CURDIR)/target/tools/kubernetes-client
export CORSAIR_KUBECTL := $(KUBECTL_DIR)/usr/bin/kubectl
deps-kubectl: $(CORSAIR_KUBECTL)
$(CORSAIR_KUBECTL):
	mkdir -p $(CURDIR)/target/tools
	cd $(CURDIR)/target/tools && rm -f kubernetes-client_*.deb && \
		{ apt-get download kubernetes-client 2>/dev/null || { apt-get update -qq && apt-get download kubernetes-client; }; } && \
		dpkg-deb -x kubernetes-client_*.deb $(KUBECTL_DIR) && rm -f kubernetes-client_*.deb
	$(CORSAIR_KUBECTL) version --client >/dev/null

# PyPI packages: the Kubernetes schema validator and Helm (Go library, no binary) for the chart.
deps-python: $(VENV)/.installed
$(VENV)/.installed: Makefile
	python3 -m venv $(VENV)
	$(VENV)/bin/pip install -q --disable-pip-version-check $(PY_DEPS)
	touch $@

lint:
	cargo fmt --all -- --check
	cargo clippy --workspace --all-targets --locked -- -D warnings
	# The controller crate without its runtime, as the AdmissionReview fuzz target links it.
	cargo clippy -p corsair-controller --no-default-features --all-targets --locked -- -D warnings

# Dependency policy (deny.toml): licenses, bans and sources need no network beyond crates.io;
# advisories need the RustSec database from GitHub, checked only when it can be fetched.
# cargo-deny's own release profile is fat LTO at one codegen unit: installed without them, it
# builds in 202 s instead of 247 on 2 cores and checks this workspace as fast.
deny:
	@command -v cargo-deny >/dev/null || \
		CARGO_PROFILE_RELEASE_LTO=false CARGO_PROFILE_RELEASE_CODEGEN_UNITS=16 cargo install cargo-deny --locked
	cargo deny check licenses bans sources
	@if timeout 120 cargo deny fetch db >/dev/null 2>&1; then \
		cargo deny check --disable-fetch advisories; \
	else \
		echo "cargo deny: advisories NOT checked: the RustSec database (github.com/RustSec/advisory-db) cannot be fetched from this network"; \
	fi

rust-test:
	cargo test --workspace --locked --no-fail-fast

# The sidecar image's binary is built with profile-guided optimisation (scripts/sidecar-pgo.sh;
# here with 1 s loads for its training instead of 5): that build, then the binary's
# hostile-input and fault suites run against the binary it made (`--workspace`, so that the test
# binaries are rust-test's, not built again with other features).
pgo-test:
	TRAIN_SECONDS=1 bash scripts/sidecar-pgo.sh
	CORSAIR_PROXY_BIN=$(CURDIR)/target/pgo/corsair-proxy cargo test --workspace --locked --test proxy_hostile --test proxy_faults

# Fuzzing (cargo-fuzz, nightly): every target runs FUZZ_SECONDS from a corpus seeded with the
# test fixtures and the examples (fuzz/seed.sh). A crash stops make; the input that caused it is
# in fuzz/artifacts/<target>/. `make test` runs each target for 20 seconds.
FUZZ_SECONDS ?= 60
# AddressSanitizer by default; `make test` fuzzes without it (FUZZ_SANITIZER=none): the crates
# forbid unsafe code, and the ASan build of the kube types that the webhook target links took
# about 13 CPU-minutes alone, most of the CI budget.
FUZZ_SANITIZER ?= address
# cargo-fuzz builds every crate at one codegen unit by default, for the fastest fuzzing.
# `make test`'s 20 s runs take 16: its fuzz step took 9.1 minutes instead of 9.8 (measured
# when the webhook target was a package of its own: it took 4.9 minutes instead of 6.2).
FUZZ_CODEGEN_UNITS ?= 1
# Under target/, so that `cargo clean` takes the fuzz builds too.
FUZZ_TARGET_DIR := $(CURDIR)/target/fuzz
FUZZ_CORPUS := $(CURDIR)/target/fuzz-corpus
FUZZ_TARGETS := policy request_headers origin decide admission_review
# cargo-fuzz needs a nightly toolchain: installed with rustup (minimal profile) when missing.
fuzz-tools:
	@rustup run nightly rustc --version >/dev/null 2>&1 || rustup toolchain install nightly --profile minimal
	@command -v cargo-fuzz >/dev/null || cargo install cargo-fuzz --locked

fuzz: fuzz-tools
	bash fuzz/seed.sh $(FUZZ_CORPUS)
	@for target in $(FUZZ_TARGETS); do \
		echo "fuzz: $$target ($(FUZZ_SECONDS) s)"; \
		log=$(FUZZ_CORPUS)/$$target.log; \
		if ! cargo +nightly fuzz run --fuzz-dir fuzz --target-dir $(FUZZ_TARGET_DIR) -s $(FUZZ_SANITIZER) --codegen-units $(FUZZ_CODEGEN_UNITS) -a $$target \
			$(FUZZ_CORPUS)/$$target -- -max_total_time=$(FUZZ_SECONDS) -print_final_stats=1 >$$log 2>&1; then \
			tail -n 60 $$log; echo "fuzz: $$target FAILED (log: $$log)"; exit 1; \
		fi; \
		grep -E '^stat::(number_of_executed_units|new_units_added):' $$log | tr '\n' ' '; echo; \
	done

fuzz-test:
	$(MAKE) fuzz FUZZ_SECONDS=20 FUZZ_SANITIZER=none FUZZ_CODEGEN_UNITS=16

# Helm chart: lint, render and validate with real Helm (Go library via helm-python-sdk).
chart-test: deps-python
	cargo test --workspace --locked --no-run  # builds target/debug/corsair as rust-test does (same features)
	CORSAIR_BIN=$(CURDIR)/target/debug/corsair $(VENV)/bin/pytest -q charts/tests

# Regenerates the committed CRD (deploy/ and the chart's copy) from the Rust types, and the
# chart's copy of the Grafana dashboard (Helm reads files only inside the chart).
# docs/reference.md is written from the CRD, names.rs, every subcommand's --help and the chart's
# values (docs/reference.py); charts/tests/test_reference.py fails when it is stale.
generate: deps-python
	cargo build -q --bin corsair
	target/debug/corsair crd > deploy/crd.yaml
	cp deploy/crd.yaml charts/corsair/crds/corspolicies.corsair.dev.yaml
	cp deploy/grafana/corsair.json charts/corsair/dashboards/corsair.json
	$(VENV)/bin/python docs/reference.py --bin target/debug/corsair > docs/reference.md

demo:
	cargo run --release -- demo

# Benchmarks (not tests): numbers and how to read them are in docs/benchmarks.md.
bench:
	bash benches/proxy/run.sh
	cargo bench --bench webhook
	WEBHOOK_BENCH_RATE=5000 cargo bench --bench webhook
	bash benches/controller/run.sh
	bash benches/controller/scale.sh
	bash benches/binaries.sh

# The soak (not run by make test or CI): 10 minutes of mixed load against `corsair proxy` with a
# policy swap every 30 s; RSS and open fds sampled every 10 s must stay flat after a 2-minute
# warm-up. SOAK_SECONDS, SOAK_RELOAD_SECONDS, SOAK_SAMPLE_SECONDS, SOAK_WARMUP_SECONDS override.
# Series in target/soak/; criterion and the last run in docs/reliability.md.
soak:
	cargo test --locked --test proxy_soak -- --ignored --nocapture
