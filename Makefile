# Tessera: two newcomer commands, `make demo` and `make test` (see README.md).
SHELL := /bin/bash
WASM_TARGET := wasm32-unknown-unknown
WASM_OUT := target/$(WASM_TARGET)/wasm-release/tessera_worker.wasm
PKG := www/pkg
TESSERA := target/release/tessera
export CHROMEDRIVER ?= /usr/bin/chromedriver
# binaryen from npm (pinned in scripts/bootstrap): Debian's binaryen 108 corrupts the externref
# table that wasm-bindgen 0.2.130 emits.
WASM_OPT := $(or $(XDG_CACHE_HOME),$(HOME)/.cache)/tessera/npm/node_modules/.bin/wasm-opt

# When rustup could not add the wasm32 target, scripts/debian-wasm-toolchain built a wasm32 std
# for Debian's rustc-web: use that toolchain (it must come before ~/.cargo/bin on PATH).
ifneq ($(wildcard /usr/lib/rustlib/wasm32-unknown-unknown/lib/.tessera-std-stamp),)
ifeq ($(wildcard $(shell rustc --print sysroot 2>/dev/null)/lib/rustlib/wasm32-unknown-unknown),)
export PATH := /usr/bin:$(PATH)
endif
endif

.PHONY: bootstrap build wasm scheduler demo test test-native test-browser test-e2e test-sdk test-sdk-scale bench clean

bootstrap:
	@scripts/bootstrap

scheduler:
	cargo build --release -p tessera-cli

# The worker core: wasm → wasm-bindgen (ES module for the page) → wasm-opt -Oz; then its size,
# raw and gzipped (`scripts/core-size` alone also fails above its limit). Without binaryen's
# inlining-optimizing pass the core is 3 % larger raw but 6 KB smaller gzipped and 4 KB smaller
# as brotli (inlined copies compress worse than calls); the producers and target-features
# sections are left out too.
wasm:
	cargo build --profile wasm-release --target $(WASM_TARGET) -p tessera-worker
	wasm-bindgen --target web --no-typescript --out-dir $(PKG) $(WASM_OUT)
	$(WASM_OPT) -Oz --skip-pass=inlining-optimizing --strip-producers --strip-target-features --enable-bulk-memory --enable-nontrapping-float-to-int --enable-sign-ext --enable-mutable-globals --enable-reference-types --enable-multivalue \
		-o $(PKG)/tessera_worker_bg.wasm $(PKG)/tessera_worker_bg.wasm
	@scripts/core-size --report $(PKG)

# A sub-make, so that a toolchain the bootstrap just installed is picked up. The worker core comes
# first: the scheduler binary embeds it (scheduler/build.rs).
build: bootstrap
	@$(MAKE) --no-print-directory wasm scheduler

demo: build
	@scripts/demo

test: build
	$(MAKE) test-native test-browser test-e2e test-sdk

# Protocol, scheduler (real SQLite, real HTTP) and worker-core decisions.
test-native:
	cargo test -p tessera-protocol -p tessera-scheduler -p tessera-cli -p tessera-worker

# wasm-bindgen tests with a live scheduler on a loopback port: all in headless Chromium, the
# engine-dependent ones in headless Firefox ESR too (FIREFOX_TESTS=all for every one; see the script).
# Without a scheduler, `wasm-pack test --headless --chrome crate` runs the scheduler-free ones.
test-browser:
	scripts/with-scheduler scripts/browser-tests

# The real `tessera serve`, `tessera deploy` and `tessera worker` with headless Chromium.
test-e2e:
	TESSERA_BIN=$(CURDIR)/$(TESSERA) cargo test -p tessera-e2e -- --test-threads=1

# The Python SDK (sdk/python) with pytest, against a real `tessera serve` and `tessera worker`,
# from the venv scripts/sdk-venv keeps up to date (outside the repo).
# The open-job test adds 200,000 slices in pages (TESSERA_OPEN_JOB_SLICES=N for fewer while working
# on the SDK); test-sdk-scale runs that test alone, with its timings printed.
test-sdk:
	cd sdk/python && TESSERA_BIN=$(CURDIR)/$(TESSERA) "$$($(CURDIR)/scripts/sdk-venv)" -m pytest -q -p no:cacheprovider

test-sdk-scale:
	cd sdk/python && TESSERA_BIN=$(CURDIR)/$(TESSERA) "$$($(CURDIR)/scripts/sdk-venv)" -m pytest -q -s -p no:cacheprovider tests/test_open.py -k bounded_memory

bench: build
	cargo build --release -p tessera-load
	@scripts/bench
	@scripts/bench-load
	@scripts/bench-sdk
	@$(MAKE) --no-print-directory test-sdk-scale

clean:
	cargo clean
	rm -rf $(PKG)
