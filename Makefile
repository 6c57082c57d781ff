# Fresh-machine targets. torch is pinned and installed first: an unpinned torch pulls CUDA wheels.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: setup test test-fast lint demo bench bench-data clean browser

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

# The browser test (tests/test_report_browser.py) needs Chromium; without it, it skips and says why.
test: lint
	-@$(MAKE) --no-print-directory browser
	$(BIN)/python -m pytest tests

test-fast: lint
	$(BIN)/python -m pytest tests -m "not slow"

demo: $(STAMP)
	bash scripts/demo.sh $(BIN)/multikpi

# Debian's Chromium for the report's browser test (Playwright drives /usr/bin/chromium; it downloads
# no browser of its own). Installs with apt-get as root; elsewhere it says what to run.
browser:
	@if command -v chromium >/dev/null 2>&1; then echo "browser: $$(chromium --version 2>/dev/null)"; \
	elif [ "$$(id -u)" = 0 ]; then apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q chromium; \
	else echo "browser: chromium is not installed; run: sudo apt-get install -y chromium" >&2; exit 1; fi

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
