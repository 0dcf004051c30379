PYTHON ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: venv test test-all lint demo clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

# torch first, pinned: on our machines 2.13.0 is a local CPU wheel; any other spec pulls a CUDA build.
$(STAMP): $(BIN)/python pyproject.toml
	$(BIN)/pip install --quiet torch==2.13.0
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $(STAMP)

venv: $(STAMP)

test: $(STAMP)
	$(BIN)/python -m pytest -q -n 2

test-all: $(STAMP)
	$(BIN)/python -m pytest -q -n 2 -m ''

lint: $(STAMP)
	$(BIN)/ruff check grape_evo tests benchmarks
	$(BIN)/ruff format --check grape_evo tests benchmarks

demo: $(STAMP)
	$(BIN)/python -m grape_evo.demo

clean:
	rm -rf $(VENV) runs .pytest_cache
