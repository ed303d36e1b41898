# `make run` and `make test` set everything up on a fresh machine: a virtual environment in
# .venv, the project with its dev extras (reinstalled only when pyproject.toml changes), then run.

PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp
# Preload tcmalloc when the system has it (less memory fragmentation); silent when it does not.
TCMALLOC := $(firstword $(wildcard /usr/lib/*/libtcmalloc_minimal.so.4 /usr/lib/*/libtcmalloc.so.4 \
	/usr/lib/libtcmalloc_minimal.so.4 /usr/local/lib/libtcmalloc_minimal.so.4))
PRELOAD := $(if $(TCMALLOC),LD_PRELOAD=$(TCMALLOC),)

.PHONY: install run test lint bench clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

$(STAMP): pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --quiet --editable '.[dev]'
	touch $(STAMP)

install: $(STAMP)

run: install
	$(PRELOAD) $(BIN)/easel run

# One test process per core (at most 8), each taking whole modules, the heavy ones first.
TEST_PROCESSES ?= auto
test: install
	$(BIN)/ruff check .
	$(BIN)/python -m pytest -q -n $(TEST_PROCESSES) --maxprocesses=8 --dist loadfile \
		--no-loadscope-reorder

lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

bench: install
	$(PRELOAD) $(BIN)/python -m bench.engine
	$(PRELOAD) $(BIN)/python -m bench.queue
	$(BIN)/python -m bench.prompts
	$(BIN)/python -m bench.discord
	$(BIN)/python -m bench.telegram
	$(BIN)/python -m bench.control

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache .ruff_cache
