# Fresh-machine targets. torch is pinned and installed first: an unpinned torch pulls CUDA wheels.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: setup test test-fast lint demo bench bench-data clean

$(BIN)/python:
	$(PY) -m venv $(VENV)

$(STAMP): $(BIN)/python pyproject.toml
	$(BIN)/pip install -q torch==2.13.0
	$(BIN)/pip install -q -e '.[dev]'
	touch $(STAMP)

setup: $(STAMP)

# The import contract (layers), ruff and mypy, then every test.
lint: $(STAMP)
	$(BIN)/lint-imports
	$(BIN)/ruff check src tests benchmarks
	$(BIN)/mypy

test: lint
	$(BIN)/python -m pytest tests

test-fast: lint
	$(BIN)/python -m pytest tests -m "not slow"

demo: $(STAMP)
	bash scripts/demo.sh $(BIN)/multikpi

clean:
	rm -rf demo runs

BENCH := ../shared/bench
bench-data/train.parquet:
	$(BIN)/python $(BENCH)/gen_feed.py --rows 1000000 --split train --out bench-data/train.parquet
bench-data/test.parquet:
	$(BIN)/python $(BENCH)/gen_feed.py --rows 200000 --split test --out bench-data/test.parquet

bench-data: $(STAMP) bench-data/train.parquet bench-data/test.parquet

# The peers live in their own venv so that their dependencies never touch the project's.
BENCH_VENV := .bench-venv
$(BENCH_VENV)/.installed:
	$(PY) -m venv $(BENCH_VENV)
	$(BENCH_VENV)/bin/pip install -q torch==2.13.0
	$(BENCH_VENV)/bin/pip install -q deepctr-torch==0.3.0 torch-rechub==0.9.0 pyarrow pandas scikit-learn
	touch $(BENCH_VENV)/.installed

bench: $(STAMP) $(BENCH_VENV)/.installed bench-data
	$(BIN)/python benchmarks/feed_vs_peers.py --peer-python $(BENCH_VENV)/bin/python --models sharedbottom,mmoe
