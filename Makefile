# loraplane: two commands for a new user (see README):
#   make demo   - set up, then train v1/v2 on the bundled model, serve them, compare through the gateway
#   make test   - set up, then run the test suite (what .ci/run calls)
SHELL := /bin/bash
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.loraplane-setup
export HF_HUB_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1
export TOKENIZERS_PARALLELISM := false

.PHONY: setup setup-quant demo test test-fast lint types check base clean

setup: $(STAMP)

$(STAMP): pyproject.toml scripts/setup.sh
	bash scripts/setup.sh
	touch $@

setup-quant: setup
	bash scripts/setup-quant.sh

base: setup
	$(BIN)/loraplane base pull smollm2-135m-instruct

demo: base
	$(BIN)/loraplane demo

test: base
	$(BIN)/python -m pytest $(PYTEST_ARGS)

# Needs the base too: several fast tests read models/smollm2-135m-instruct (its shapes, tokenizer).
test-fast: base
	$(BIN)/python -m pytest -m "not slow" $(PYTEST_ARGS)

lint: setup
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

types: setup
	$(BIN)/mypy

check: lint types test

clean:
	rm -rf runs demo-out .pytest_cache
