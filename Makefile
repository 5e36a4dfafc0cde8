# StreamSpace: the two commands a fresh machine needs are `make run` and `make test`.
SHELL := /bin/bash
VENV ?= .venv
PY := $(VENV)/bin/python
PORT ?= 8080

.PHONY: run test setup setup-test lint clean bench

setup:
	@scripts/setup.sh run

setup-test:
	@scripts/setup.sh test

## make run: install what is needed, start the control plane (embedded PostgreSQL) in the foreground
run: setup
	@scripts/run.sh

## make test: install test dependencies, run the whole suite
test: setup-test
	@$(VENV)/bin/ruff check .
	@$(PY) -m pytest $(PYTEST_ARGS)

## make bench: run the benchmarks in a short mode (each prints JSON; docs/benchmarks.md)
bench: setup-test
	@$(PY) -m bench.vnc_relay --short
	@$(PY) -m bench.vnc_xvnc --short
	@$(PY) -m bench.vnc_soak --short

lint: setup-test
	@$(VENV)/bin/ruff check .

clean:
	rm -rf $(VENV) htdocs/node_modules .pytest_cache
