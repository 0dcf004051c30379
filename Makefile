PYTHON ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: venv test test-all test-db lint demo clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

# torch first, pinned: on our machines 2.13.0 is a local CPU wheel; any other spec pulls a CUDA build.
$(STAMP): $(BIN)/python pyproject.toml
	$(BIN)/pip install --quiet torch==2.13.0
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $(STAMP)

venv: $(STAMP)

test: $(STAMP)
	$(BIN)/python -m pytest -q -n 2 --durations=25

# The db tests start a real PostgreSQL server from Debian's packages (installed here, as root,
# if missing) and need psycopg2 (the db extra). `make test` runs them too where both exist.
test-db: $(STAMP)
	@ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || \
		(apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql)
	$(BIN)/pip install --quiet -e '.[dev,db]'
	CI=1 $(BIN)/python -m pytest -q -m db tests/reliability

test-all: $(STAMP)
	$(BIN)/python -m pytest -q -n 2 -m ''

lint: $(STAMP)
	$(BIN)/ruff check grape_evo tests benchmarks experiments
	$(BIN)/ruff format --check grape_evo tests benchmarks experiments

demo: $(STAMP)
	$(BIN)/python -m grape_evo.demo

clean:
	rm -rf $(VENV) runs .pytest_cache
