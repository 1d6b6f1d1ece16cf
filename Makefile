# geogate: `make run` starts the proxy on its embedded default, `make test` runs the whole suite.
# Both create .venv from pyproject.toml when it is missing or older than pyproject.toml, setup.py
# or the C source of the gate's native parts (proxy/_native.c), which the install compiles.

SHELL := /bin/bash
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
DEMO_DB := build/demo-geoip.mmdb
CONFIG ?= config/geogate.toml

# The newest python3.x (3.11 or later) on PATH.
PYTHON ?= $(shell for p in python3.13 python3.12 python3.11 python3; do \
	command -v $$p >/dev/null 2>&1 && $$p -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null \
	&& { echo $$p; break; }; done)

.PHONY: run test test-deps lint check venv demo-db bench-deps bench-gate clean

venv: $(STAMP)

$(STAMP): pyproject.toml setup.py proxy/_native.c
	@test -n "$(PYTHON)" || { echo "geogate needs Python 3.11 or later on PATH" >&2; exit 1; }
	@# Debian's python3 ships venv and pip as separate packages; the gate's C parts need a
	@# compiler and Python's headers (without them it installs, slower, on their Python fallbacks).
	@$(PYTHON) -c 'import ensurepip, venv, sysconfig, os, shutil, sys; \
		sys.exit(not (shutil.which("cc") and os.path.exists(os.path.join( \
		sysconfig.get_paths()["include"], "Python.h"))))' 2>/dev/null || { \
		command -v apt-get >/dev/null && apt-get update -qq && \
		apt-get install -y -qq python3-venv python3-dev gcc >/dev/null; }
	rm -rf $(VENV)
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[dev]'
	touch $(STAMP)

$(DEMO_DB): $(STAMP) config/demo/geoip.csv
	@mkdir -p build
	$(BIN)/geogate geoip build config/demo/geoip.csv -o $(DEMO_DB)

demo-db: $(DEMO_DB)

run: $(STAMP) $(DEMO_DB)
	$(BIN)/python -m proxy run-demo --config $(CONFIG)

# The Janus tests run a real Janus from Debian's package: installed with apt-get when missing.
test-deps:
	@command -v janus >/dev/null 2>&1 || test -x /usr/bin/janus || { \
		command -v apt-get >/dev/null || { echo "test-deps: install janus (no apt-get here)" >&2; exit 1; }; \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq janus >/dev/null; }

test: $(STAMP) test-deps
	$(BIN)/python -m pytest -q

lint: $(STAMP)
	$(BIN)/ruff check proxy tests loadtests
	$(BIN)/mypy

check: $(STAMP) $(DEMO_DB)
	$(BIN)/geogate check --config $(CONFIG)

bench-gate: $(STAMP)
	$(BIN)/python loadtests/bench_gate.py

# nginx is the reference relay of bench-relay; installed from the system packages when missing.
bench-deps:
	@command -v nginx >/dev/null 2>&1 || test -x /usr/sbin/nginx || { \
		command -v apt-get >/dev/null || { echo "bench-deps: install nginx (no apt-get here)" >&2; exit 1; }; \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends nginx >/dev/null; }
	@{ command -v nginx || echo /usr/sbin/nginx; } | xargs -I{} sh -c '{} -v'

# Relay benchmark: direct, geogate and nginx interleaved; BENCH_ARGS="--quick" checks it works.
.PHONY: bench-relay
BENCH_ARGS ?=
bench-relay: $(STAMP)
	$(BIN)/python -m loadtests.bench_relay $(BENCH_ARGS)

# The same through the Janus adapter, in front of a real Janus (/usr/bin/janus, Debian package).
.PHONY: bench-janus
bench-janus: $(STAMP)
	$(BIN)/python -m loadtests.bench_janus $(BENCH_ARGS)

# Eviction benchmark: 9,800 sessions, a live change evicts 1,000; BENCH_ARGS="--quick" checks it.
.PHONY: bench-evict
bench-evict: $(STAMP)
	$(BIN)/python -m loadtests.bench_evict $(BENCH_ARGS)

# Demo meeting server CPU per broadcast and join (compare trees with --server PATH twice).
.PHONY: bench-demo
bench-demo: $(STAMP)
	$(BIN)/python -m loadtests.bench_demo $(BENCH_ARGS)

clean:
	rm -rf $(VENV) build .pytest_cache .mypy_cache .ruff_cache .hypothesis
