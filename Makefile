# StreamSpace: the two commands a fresh machine needs are `make run` and `make test`.
SHELL := /bin/bash
VENV ?= .venv
PY := $(VENV)/bin/python
PORT ?= 8080

.PHONY: run test setup setup-test lint clean

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

lint: setup-test
	@$(VENV)/bin/ruff check .

clean:
	rm -rf $(VENV) htdocs/node_modules .pytest_cache
