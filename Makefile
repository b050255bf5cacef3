.PHONY: run up down test fmt lint type check bootstrap clean

UV ?= uv
PY := .venv/bin/python

bootstrap:
	@deploy/local/stack.sh bootstrap

run:        ## the local stack in the foreground (Ctrl-C stops it)
	@deploy/local/stack.sh run

up:         ## the local stack in the background, returns when ready
	@deploy/local/stack.sh up

down:       ## stop what `make up` started
	@deploy/local/stack.sh down

tests/node/node_modules: tests/node/package-lock.json
	cd tests/node && npm ci --no-audit --no-fund --loglevel=error
	@touch $@

test: bootstrap tests/node/node_modules
	$(PY) -m pytest $(PYTEST_ARGS)

fmt: bootstrap
	.venv/bin/ruff format services tools tests
	.venv/bin/ruff check --fix services tools tests

lint: bootstrap
	.venv/bin/ruff check services tools tests
	.venv/bin/ruff format --check services tools tests

type: bootstrap
	.venv/bin/mypy

check: lint type test

clean:
	rm -rf .venv .mypy_cache .ruff_cache .pytest_cache
