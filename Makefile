.PHONY: run up down test test-fast fmt lint type check bootstrap clean

UV ?= uv
PY := .venv/bin/python

bootstrap:
	@deploy/local/stack.sh bootstrap

run:        ## the local stack in the foreground (Ctrl-C stops it); MONITORING=1: also Prometheus
	@deploy/local/stack.sh run

up:         ## the local stack in the background, returns when ready; MONITORING=1 as for run
	@deploy/local/stack.sh up

down:       ## stop what `make up` started
	@deploy/local/stack.sh down

tests/node/node_modules: tests/node/package-lock.json
	cd tests/node && npm ci --no-audit --no-fund --loglevel=error
	@touch $@

test: bootstrap tests/node/node_modules  ## every level: tests/unit, tests/service, tests/e2e
	$(PY) -m pytest $(PYTEST_ARGS)

test-fast: bootstrap  ## the unit level only (no process started), under a minute
	$(PY) -m pytest tests/unit $(PYTEST_ARGS)

fmt: bootstrap
	.venv/bin/ruff format services tools tests clients deploy bench testing gateway
	.venv/bin/ruff check --fix services tools tests clients deploy bench testing gateway

lint: bootstrap
	.venv/bin/ruff check services tools tests clients deploy bench testing gateway
	.venv/bin/ruff format --check services tools tests clients deploy bench testing gateway

type: bootstrap
	.venv/bin/mypy

check: lint type test

chaos: bootstrap   ## the combined fault run (CHAOS_SECONDS, default 180); docs/reliability.md
	$(PY) tests/chaos.py $(CHAOS_ARGS)
.PHONY: chaos

clean:
	rm -rf .venv .mypy_cache .ruff_cache .pytest_cache

bench/node/node_modules: bench/node/package-lock.json
	cd bench/node && npm ci --no-audit --no-fund --loglevel=error
	@touch $@

bench-deps: bootstrap bench/node/node_modules
	@command -v wrk >/dev/null || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends wrk >/dev/null; }

bench: bench-deps  ## quick benchmarks (minutes): prints the table, writes bench/results/
	$(PY) -m bench --mode quick $(BENCH_ARGS)

bench-full: bench-deps  ## full benchmarks: also writes docs/benchmarks.md
	$(PY) -m bench --mode full $(BENCH_ARGS)
.PHONY: bench bench-full bench-deps

# The files, not a deployment: deploy/env.example as the .env, with placeholders for the secrets
# docker-compose.yml requires.
COMPOSE_CONFIG := REDIS_PASSWORD=placeholder-password MONGO_INITDB_ROOT_USERNAME=placeholder \
	MONGO_INITDB_ROOT_PASSWORD=placeholder-password docker-compose --env-file deploy/env.example

compose-config:  ## docker-compose.yml is valid (offline; needs docker-compose)
	$(COMPOSE_CONFIG) -f docker-compose.yml config -q
	$(COMPOSE_CONFIG) -f docker-compose.yml -f deploy/compose.test.yml config -q

compose-test:  ## the compose stack for real with podman: build, up, checks, down (root or sudo)
	@deploy/compose_test.sh
.PHONY: compose-config compose-test
