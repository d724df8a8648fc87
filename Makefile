# The two commands a newcomer runs (see README): `make demo` and `make test`.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: install demo test test-fast lint bench clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $(STAMP)

install: $(STAMP)

data/stamp_demo.parquet: $(STAMP)
	$(BIN)/personalize simulate --scenario stamp --n 770 --seed 1 --out $@ --truth data/stamp_demo_truth.parquet

demo: data/stamp_demo.parquet
	$(BIN)/personalize validate pipelines/stamp.yaml

test: $(STAMP)
	$(BIN)/ruff check src tests benchmarks
	$(BIN)/mypy
	$(BIN)/pytest

test-fast: $(STAMP)
	$(BIN)/pytest -m "not slow"

clean:
	rm -rf $(VENV) models/mlflow.db models/artifacts data
