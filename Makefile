# Omni — one Makefile for a fresh clone.
#
#   make run           start PostgreSQL, NATS, an SMTP sink, the five services and the web console (Ctrl-C stops all;
#                      what dies is started again); ports: gRPC 15051-15055, tracking 8088, PostgreSQL 15432,
#                      NATS 14222, SMTP sink 2525, gateway HTTP 8089 (email links, SMS callbacks), bounce
#                      SMTP 2526, console http://127.0.0.1:8090; settings from your environment go over the defaults
#   make demo          load a small retailer's data set into a running `make run` (examples/retailer.py)
#   make test          every test below (starts its own PostgreSQL, NATS and SMTP sink on free ports)
#   make test-unit       the tests that need no server (seconds)
#   make test-integration  the tests that need PostgreSQL, NATS or the SMTP sink: omni-kit and each service
#   make test-e2e        the stories across all five services, and `omni run` with the real services
#   make test-browser  the console in Debian's Chromium (Playwright; installs chromium with apt-get when
#                      missing); screenshots go to docs/screenshots. `make test` skips these without Chromium
#   make test-faults   NATS, profile and PostgreSQL killed or stopped under load: nothing acknowledged is lost
#                      or doubled, every journey email sent once (not part of make test; minutes)
#   make test-fuzz       the long fuzz run (make test runs a short one): OMNI_FUZZ_EXAMPLES (500) per RPC and kind
#   make lint          ruff, mypy and buf lint (fastest first)
#   make bench         benchmarks; results go to bench/results/
#   make proto         regenerate Python code from protos/ (done automatically by the targets that need it)
#   make deploy-check  render the Kubernetes overlays and validate them and docker-compose.yml
#
# Every target that needs the environment depends on it: the first run creates .venv from uv.lock,
# installs buf from package-lock.json and generates the protobuf code. Nothing is needed beyond
# Python 3.11, pip, make, gcc and node/npm.

SHELL := /bin/bash
PYTHON ?= python3
TOOLS := .tools
UV := $(TOOLS)/bin/uv
VENV := .venv
PY := $(VENV)/bin/python
BUF := node_modules/.bin/buf
UV_VERSION := 0.13.9
PROTO_STAMP := libs/omni-proto/omni/.generated
PROTOS := $(shell find protos -name '*.proto') protos/omni/scopes.yaml

export UV_PROJECT_ENVIRONMENT := $(VENV)

.PHONY: help env proto run demo chromium test-browser test test-unit test-integration test-e2e test-faults test-fuzz lint fmt bench deploy-check breaking clean

help:
	@sed -n '2,20p' Makefile | sed 's/^# \{0,1\}//'

$(UV):
	$(PYTHON) -m venv $(TOOLS)
	$(TOOLS)/bin/pip install --quiet uv==$(UV_VERSION)

$(VENV)/.synced: $(UV) uv.lock pyproject.toml libs/*/pyproject.toml services/*/pyproject.toml
	$(UV) sync --frozen --all-packages
	touch $@

# `npm ci` installs exactly the lock, which lists buf's binaries for every platform (npm installs the one
# this machine needs) and kustomize's linux-x64 binary as an optional dependency, so installing never
# rewrites it.
$(BUF): package.json package-lock.json
	npm ci --no-audit --no-fund --loglevel=error
	touch $@

$(PROTO_STAMP): $(VENV)/.synced $(PROTOS) libs/omni-proto/generate.py
	$(PY) libs/omni-proto/generate.py
	touch $@

env: $(PROTO_STAMP)

proto: $(VENV)/.synced
	$(PY) libs/omni-proto/generate.py
	touch $(PROTO_STAMP)

# The console serves htmx and the Vega scripts from node_modules, so the run needs the npm packages too.
run: env $(BUF)
	$(VENV)/bin/omni run

demo: env
	$(PY) -m examples.retailer

# Debian's Chromium for the browser tests (Playwright drives it by its executable path and downloads no
# browser), with a colour emoji font for the channel icons.
chromium:
	@command -v chromium >/dev/null && dpkg -s fonts-noto-color-emoji >/dev/null 2>&1 || \
		{ apt-get update && DEBIAN_FRONTEND=noninteractive apt-get install -y chromium fonts-noto-color-emoji; }

test-browser: env $(BUF) chromium
	OMNI_SCREENSHOTS=docs/screenshots $(PY) -m pytest -q -m browser tests/console/browser

# Each test is marked unit, integration or e2e by tests/conftest.py (from the servers its fixtures need).
test: env
	$(PY) -m pytest -q

test-unit: env
	$(PY) -m pytest -q -m unit

test-integration: env
	$(PY) -m pytest -q -m integration

test-e2e: env
	$(PY) -m pytest -q -m e2e

test-faults: env
	$(PY) -m pytest -q -s -m faults tests/faults

# `make test` runs the fuzz tests too, a few examples per RPC; this is the long run (random, shrinking).
test-fuzz: env
	OMNI_FUZZ_EXAMPLES=$${OMNI_FUZZ_EXAMPLES:-500} $(PY) -m pytest -q --timeout=0 tests/fuzz

# buf reads the protos as an image built by protoc (libs/omni-proto/generate.py --image): the protos import
# buf/validate/validate.proto, which comes from the protovalidate package, not from a registry; `--path omni`
# lints and compares our files only, not what they import.
lint: env $(BUF)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy libs/omni-kit/omni_kit services tests bench examples
	$(PY) libs/omni-proto/generate.py --image $(TOOLS)/protos.binpb
	$(BUF) lint $(TOOLS)/protos.binpb --config buf.yaml --path omni

fmt: env
	$(VENV)/bin/ruff format .
	$(VENV)/bin/ruff check --fix .

breaking: $(VENV)/.synced $(BUF)
	rm -rf $(TOOLS)/main-protos && mkdir -p $(TOOLS)/main-protos
	git archive main protos | tar -x -C $(TOOLS)/main-protos
	$(PY) libs/omni-proto/generate.py --image $(TOOLS)/main-protos.binpb --protos $(TOOLS)/main-protos/protos
	$(PY) libs/omni-proto/generate.py --image $(TOOLS)/protos.binpb
	$(BUF) breaking $(TOOLS)/protos.binpb --against $(TOOLS)/main-protos.binpb \
		--config buf.yaml --against-config buf.yaml --path omni

bench: env
	$(PY) -m bench

deploy-check: env $(BUF)
	$(PY) deploy/check.py

clean:
	rm -rf $(VENV) $(TOOLS) node_modules libs/omni-proto/omni/*/ .pytest_cache .mypy_cache .ruff_cache
