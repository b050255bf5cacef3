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
	.venv/bin/ruff format services tools tests clients deploy
	.venv/bin/ruff check --fix services tools tests clients deploy

lint: bootstrap
	.venv/bin/ruff check services tools tests clients deploy
	.venv/bin/ruff format --check services tools tests clients deploy

type: bootstrap
	.venv/bin/mypy

check: lint type test

clean:
	rm -rf .venv .mypy_cache .ruff_cache .pytest_cache

compose-config:  ## docker-compose.yml is valid (offline; needs docker-compose)
	docker-compose -f docker-compose.yml config -q
	docker-compose -f docker-compose.yml -f deploy/compose.test.yml config -q

compose-test:  ## the compose stack for real with podman: build, up, checks, down (root or sudo)
	@deploy/compose_test.sh
.PHONY: compose-config compose-test
