# The two commands of README.md: `make demo` (set up + run the embedded default) and
# `make test` (set up + run every test, slow and Slurm ones included).
VENV ?= .venv
PY := $(VENV)/bin/python
export PATH := $(CURDIR)/$(VENV)/bin:$(PATH)

.PHONY: demo test setup setup-test lint
setup:
	bash scripts/setup.sh $(VENV)

setup-test:
	bash scripts/setup.sh $(VENV) --test

demo: setup
	$(PY) -m harness.demo

test: setup-test
	$(PY) -m pytest -q tests

lint: setup-test
	$(VENV)/bin/ruff check .
