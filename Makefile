# Two entry points: `make demo` (the main job on the embedded default) and `make test` (the whole suite).
# Both create the virtual environment first. torch==2.13.0 is installed before the rest so that a CPU machine
# with that wheel on disk keeps its CPU build; on a CUDA machine the same pin installs the CUDA build.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test lint env

env: $(STAMP)

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet torch==2.13.0
	$(BIN)/pip install --quiet -e ".[dev]"
	touch $(STAMP)

demo: $(STAMP)
	HF_HUB_OFFLINE=1 $(BIN)/xlmr-compress demo

test: $(STAMP)
	HF_HUB_OFFLINE=1 $(BIN)/pytest -q -p no:cacheprovider

lint: $(STAMP)
	$(BIN)/ruff check xlmr_compress benchmarks tests
