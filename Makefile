# The two commands of the README: `make demo` (a full research cycle) and `make test`.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
# pyproject.toml declares ranges; CI and `make install` test the exact set pinned here.
CONSTRAINTS := -c constraints.txt

.PHONY: install demo test lint bench

$(STAMP): pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet $(CONSTRAINTS) -e '.[host,stack,dev]'
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(BIN)/ktrdr demo

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

test: lint
	$(BIN)/pytest -q -ra

bench: $(STAMP)
	$(BIN)/pip install --quiet $(CONSTRAINTS) -e '.[host,stack,dev,bench]'
	$(BIN)/python -m bench all
