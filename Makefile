# loader: every target creates .venv first when it is missing.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.DEFAULT_GOAL := help
.PHONY: help demo test test-all lint bench bench-quick bench-memory clean

help: ## Show the targets and what they do
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | sed 's/:.*## /\t/' | expand -t16

$(STAMP): pyproject.toml setup.py loader/_fastcsv.c
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev,bench]'
	touch $(STAMP)

demo: $(STAMP) ## Run the sales flow end to end on SQLite, with no services
	$(BIN)/loader demo

test: $(STAMP) ## Run the whole test suite (needs PostgreSQL and Redis; see .ci/run)
	$(BIN)/pytest -q

lint: $(STAMP) ## ruff and mypy --strict
	$(BIN)/ruff check loader flows tests benchmarks migrations
	$(BIN)/mypy

bench: $(STAMP) ## Load-time benchmarks at full scale (PostgreSQL and SQLite); minutes
	$(BIN)/python -m benchmarks

bench-quick: $(STAMP) ## The same benchmarks at a small scale, as a smoke run
	$(BIN)/python -m benchmarks --quick

bench-memory: $(STAMP) ## Peak memory of each phase at 0.2, 1, 2 and 4 million rows; minutes
	$(BIN)/python -m benchmarks.memory_scale --rows 200000,1000000,2000000,4000000

clean: ## Remove the virtualenv and caches
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache .hypothesis
