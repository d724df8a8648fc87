# The two commands a newcomer runs (see README): `make demo` and `make test`.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: install browser demo test test-fast lint bench clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev,spark,bench]'
	touch $(STAMP)

install: $(STAMP)

# Debian's Chromium for the browser tests (Playwright drives it; no browser download)
browser:
	@command -v chromium >/dev/null || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null; }

# The demo: a SYNTHETIC STAMP-shaped cohort (pipelines/stamp.yaml says how it is made),
# validated, trained, promoted through its gates and served on http://127.0.0.1:8000
data/stamp_demo.parquet: $(STAMP) pipelines/stamp.yaml
	$(BIN)/personalize simulate --pipeline pipelines/stamp.yaml

demo: data/stamp_demo.parquet
	$(BIN)/personalize validate pipelines/stamp.yaml
	$(BIN)/personalize train pipelines/stamp.yaml
	$(BIN)/personalize promote personalize-stamp candidate
	@echo "clinician API key for the page at http://127.0.0.1:8000/ (shown once):"
	@$(BIN)/personalize keys create --role clinician --note "make demo"
	$(BIN)/personalize serve --pipeline pipelines/stamp.yaml --port 8000

test: $(STAMP) browser
	$(BIN)/ruff check src tests benchmarks
	$(BIN)/mypy
	$(BIN)/pytest

test-fast: $(STAMP)
	$(BIN)/pytest -m "not slow"

clean:
	rm -rf $(VENV) models/mlflow.db models/artifacts data
