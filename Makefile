# Aftercare companion. `make run` and `make test` do all the set-up on a fresh machine.
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: help install setup run test test-fast lint format rasa rasa-serve bench clean

help: ## Show the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-12s %s\n", $$1, $$2}'

$(STAMP): pyproject.toml
	@$(PYTHON) -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else "Python 3.11 or newer is needed: set PYTHON=/path/to/python3.11")'
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[dev]'
	@touch $(STAMP)

install: $(STAMP) ## Create .venv and install the app with its dev tools

setup: install ## Install, create local keys (with a warning) and upgrade the local database
	$(BIN)/aftercare init

run: setup ## Run the bot on the embedded defaults (console chat when no Telegram token is set)
	$(BIN)/aftercare run

lint: install ## ruff check, ruff format --check, mypy
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

format: install ## Format the code
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .

test: setup rasa lint ## Everything: lint and the whole suite (SQLite, PostgreSQL and Rasa lanes)
	$(BIN)/pytest

test-fast: install ## The suite without the PostgreSQL and Rasa lanes (for a quick local check)
	$(BIN)/pytest -m "not postgres and not rasa"

rasa: ## Create the Rasa 3.6 environment outside the checkout (first time: several minutes)
	bash nlu/rasa/make_env.sh

rasa-serve: rasa ## Run a Rasa server on 127.0.0.1 trained on nlu/data
	bash nlu/rasa/serve.sh

bench: setup ## Run the benchmarks and print their figures
	@for b in bench/*.py; do echo "== $$b"; $(PY) $$b || exit 1; done

clean: ## Remove caches (keeps var/ with the local database and keys)
	rm -rf .pytest_cache .mypy_cache .ruff_cache build *.egg-info
