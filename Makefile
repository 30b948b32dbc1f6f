# llm-capacity: `make run` and `make test` are all a new machine needs.
SHELL := /bin/bash
.DEFAULT_GOAL := build

VENV      := .venv
PY        := $(VENV)/bin/python
ENVOY     := $(VENV)/bin/envoy
TOOLS     := .tools
WASM      := target/wasm32-wasip1/release/llm_capacity.wasm
EMULATOR  := target/release/llm-emulator
# The test runner must match the wasm-bindgen version Cargo.lock resolved.
WBG_VERSION = $(shell awk '/^name = "wasm-bindgen"$$/ {getline; gsub(/"/, "", $$3); print $$3}' Cargo.lock)
WBG_RUNNER  = $(TOOLS)/wasm-bindgen-$(WBG_VERSION)/bin/wasm-bindgen-test-runner

.PHONY: setup build emulator test test-unit test-wasm test-e2e test-fuzz fuzz fuzz-tool run lint clean bench-tokens bench bench-sessions dashboard build-fault build-hostcalls soak build-rls test-rls bench-global test-rules

## setup: Rust targets, Python venv (Envoy 1.40, openai, anthropic), wasm test runner
setup: $(TOOLS)/targets.stamp $(VENV)/stamp wasm-runner

# Commands the tests run, with the Debian package that provides each: node runs
# the wasm32 core tests, curl is what `make run` prints (and its test runs),
# openssl makes the certificates of the mTLS tenant test, g++ builds libFuzzer
# for the fuzz smoke, wrk loads Envoy in the benchmark (and its smoke test),
# redis-server holds the counters of the global rate-limit engine (tests/rls),
# prometheus (and its promtool) evaluates the shipped alerts and the dashboard.
DEBIAN_TOOLS := node:nodejs curl:curl openssl:openssl g++:g++ wrk:wrk redis-server:redis-server prometheus:prometheus promtool:prometheus

# Depends on the Makefile: a machine set up before a package was added gets it.
$(TOOLS)/targets.stamp: Makefile
	rustup target add wasm32-wasip1 wasm32-unknown-unknown
	@missing=$$(for t in $(DEBIAN_TOOLS); do command -v $${t%%:*} >/dev/null || echo $${t#*:}; done); \
	if [ -n "$$missing" ]; then \
	  echo "installing Debian packages: $$missing"; \
	  SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
	  $$SUDO apt-get update && $$SUDO apt-get install -y $$missing; \
	  case " $$missing " in *" prometheus "*) \
	    $$SUDO systemctl disable --now prometheus >/dev/null 2>&1 || true;; esac; \
	fi
	@mkdir -p $(TOOLS) && touch $@

$(VENV)/stamp: tests/requirements.txt
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check -r tests/requirements.txt
	@touch $@

.PHONY: wasm-runner
wasm-runner: Cargo.lock
	@test -x $(WBG_RUNNER) || cargo install wasm-bindgen-cli \
	  --version $(WBG_VERSION) --root $(TOOLS)/wasm-bindgen-$(WBG_VERSION)

## build: the release .wasm (lto, opt-level 3, codegen-units 1, panic abort, stripped)
build:
	cargo build --release --target wasm32-wasip1 -p llm-capacity

emulator:
	cargo build --release -p llm-emulator

## build-fault: the same .wasm with the test-only fault hooks (feature fault-injection), in target/fault
build-fault:
	CARGO_TARGET_DIR=target/fault cargo build --release --target wasm32-wasip1 -p llm-capacity --features fault-injection

## test: native unit tests, the core's tests on wasm32 under node, a fuzz smoke, end to end in real Envoy
test: setup lint build emulator test-unit test-wasm test-fuzz test-rls test-rules test-e2e

test-unit:
	cargo test --workspace

## test-rules: the shipped Prometheus alerts against their unit tests
test-rules:
	@cd envoy/prometheus && promtool test rules alerts_test.yaml >/dev/null 2>&1 || promtool test rules alerts_test.yaml

test-wasm:
	CARGO_TARGET_WASM32_UNKNOWN_UNKNOWN_RUNNER=$(abspath $(WBG_RUNNER)) \
	  cargo test --target wasm32-unknown-unknown -p llm-capacity --no-default-features --lib

test-e2e: build-fault build-rls
	$(PY) -m pytest -q tests/e2e tests/dashboard

# The global rate-limit engine (tests/rls): Envoy's RLS protocol over Limitador and
# Redis, its own workspace and target dir (tests/rls/target). patch-limitador.sh first
# makes the patched Limitador source its Cargo.toml points at (idempotent).
RLS_CARGO = tests/rls/patch-limitador.sh && cd tests/rls && cargo

## build-rls: the engine's release binary, tests/rls/target/release/llmcap-rls (the e2e tests start it)
build-rls:
	$(RLS_CARGO) build --release --locked

## test-rls: the engine against a real redis-server (installed by setup)
test-rls:
	$(RLS_CARGO) test --release --locked

# Fuzzing (tests/fuzz): cargo-fuzz and libFuzzer on the stable toolchain, so no
# sanitizer (that needs nightly); RUSTC_BOOTSTRAP lets cargo-fuzz pass its -Z flags.
FUZZ_TARGETS := config request usage provider_headers rls_response
CARGO_FUZZ_VERSION := 0.13.2
CARGO_FUZZ_ROOT := $(abspath $(TOOLS))/cargo-fuzz-$(CARGO_FUZZ_VERSION)
FUZZ_SECONDS ?= 10
FUZZ_RUNS ?= 10000000
FUZZ_RUN = cd tests/fuzz && PATH=$(CARGO_FUZZ_ROOT)/bin:$$PATH RUSTC_BOOTSTRAP=1 cargo fuzz run --fuzz-dir . -s none -O

fuzz-tool:
	@test -x $(CARGO_FUZZ_ROOT)/bin/cargo-fuzz || cargo install cargo-fuzz \
	  --version $(CARGO_FUZZ_VERSION) --locked --root $(CARGO_FUZZ_ROOT)

## test-fuzz: each fuzz target for FUZZ_SECONDS (10) from its seeds: a smoke, part of make test
test-fuzz: fuzz-tool
	@for t in $(FUZZ_TARGETS); do \
	  mkdir -p .run/fuzz/$$t && cp tests/fuzz/seeds/$$t/* .run/fuzz/$$t/ && \
	  ( $(FUZZ_RUN) $$t ../../.run/fuzz/$$t -- -max_total_time=$(FUZZ_SECONDS) -max_len=65536 ) || exit 1; \
	done

## fuzz: each fuzz target for FUZZ_RUNS executions (10 million), corpus kept in .run/fuzz
fuzz: fuzz-tool
	@for t in $(FUZZ_TARGETS); do \
	  mkdir -p .run/fuzz/$$t && cp tests/fuzz/seeds/$$t/* .run/fuzz/$$t/ && \
	  ( $(FUZZ_RUN) $$t ../../.run/fuzz/$$t -- -runs=$(FUZZ_RUNS) -max_len=65536 ) || exit 1; \
	done

## run: Envoy with the filter in front of the emulator on loopback; Ctrl-C stops both
run: setup build emulator
	@envoy/run.sh

## lint: fmt and clippy with warnings denied, on the host and on wasm32
lint:
	cargo fmt --all -- --check
	cargo clippy --workspace --all-targets -- -D warnings
	cargo clippy --release --target wasm32-wasip1 -p llm-capacity -- -D warnings
	cargo clippy --target wasm32-unknown-unknown -p llm-capacity --no-default-features --all-targets -- -D warnings

## bench-tokens: estimator accuracy (vs tiktoken) and speed (native, and wasm under node); writes tests/tokenbench/results
bench-tokens: setup
	tests/tokenbench/bench.sh

## build-hostcalls: the same .wasm counting its host calls (feature hostcall-count), in target/hostcalls
build-hostcalls:
	CARGO_TARGET_DIR=target/hostcalls cargo build --release --target wasm32-wasip1 -p llm-capacity --features hostcall-count

## bench: the filter against Envoy alone and against LiteLLM and Portkey (installed here), in one run
## (about 20 minutes); writes tests/bench/results/bench.{md,json} and docs/bench.png
bench: setup build build-hostcalls
	$(PY) -m pip install --quiet matplotlib
	$(PY) tests/bench/bench.py

## bench-global: the global tier's cost (per request, leased) against local-only limits, in one run; writes tests/bench/results/global.md (about 3 minutes)
bench-global: setup build build-rls
	$(PY) tests/bench/global_bench.py

## dashboard: render docs/dashboard.png from a real run (matplotlib in .venv, about 3 minutes)
dashboard: setup build emulator
	$(PY) -m pip install --quiet matplotlib
	$(PY) tests/dashboard/render.py

## bench-sessions: Envoy memory with 100,000 distinct budgeted sessions; writes tests/bench/results
bench-sessions: setup build emulator
	$(PY) tests/bench/sessions_bench.py

## soak: SOAK_SECONDS (600) at half the measured max rate (or SOAK_RATE), 20% provider 429s, an outage midway; writes tests/soak/results.md
SOAK_SECONDS ?= 600
soak: setup build emulator
	$(PY) tests/soak/soak.py --seconds $(SOAK_SECONDS) $(if $(SOAK_RATE),--rate $(SOAK_RATE))

clean:
	cargo clean
	rm -rf .run
