# `make demo` and `make test` work on a fresh machine with python3 (>= 3.11), git and make.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin

.PHONY: demo test lint bench bench-peers install clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip

# The package's bytecode is compiled at install, as pip does for a wheel: an editable install gets
# none, and where PYTHONDONTWRITEBYTECODE is set (many container images) every command would compile
# every module it imports, every time (~2x the CLI's and the server's start-up).
$(VENV)/.installed: pyproject.toml | $(BIN)/python
	$(BIN)/pip install -q -e .
	$(BIN)/python -m compileall -q src/dstack
	touch $@

$(VENV)/.test-installed: pyproject.toml | $(BIN)/python
	$(BIN)/pip install -q -e '.[test]'
	touch $@

install: $(VENV)/.installed

## Start a server, run examples/hello on the local backend, stream its logs, stop the server.
demo: $(VENV)/.installed
	$(BIN)/python scripts/demo.py

## Lint, then run the whole test suite.
test: $(VENV)/.test-installed
	$(BIN)/ruff check src tests bench scripts
	$(BIN)/python -m pytest -q

## Benchmarks: prints a table of the measured figures and their targets.
bench: $(VENV)/.installed
	$(BIN)/python -m compileall -q src/dstack
	$(BIN)/python bench/run.py

# Ours against upstream dstack 0.22.5 (installed into a temporary venv), interleaved.
bench-peers: $(VENV)/.installed
	$(BIN)/python -m compileall -q src/dstack
	$(BIN)/python bench/peers.py

clean:
	rm -rf $(VENV) .dstack-demo .pytest_cache
