# Everything a developer or CI needs. `make demo` and `make test` create .venv themselves.
SHELL := /bin/bash
# The Lambda runtime is python3.12: use that interpreter when it runs here (sam build needs it),
# else any Python 3.11+ (everything but sam build works there).
PYTHON ?= $(shell for p in python3.12 $(wildcard $(HOME)/.pyenv/versions/3.12.*/bin/python3.12) python3; do \
	if $$p -c 'import sys; assert sys.version_info >= (3, 11)' >/dev/null 2>&1; then echo $$p; break; fi; done)
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: venv demo test unit integration infra lint validate build bench fake-gateway clean

venv: $(STAMP)

$(STAMP): pyproject.toml layers/shared/requirements.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $(STAMP)

demo: venv
	$(BIN)/python -m demo $(DEMO_ARGS)

test: venv
	PATH="$(abspath $(BIN)):$$PATH" $(BIN)/pytest $(PYTEST_ARGS)

unit: venv
	$(BIN)/pytest tests/unit $(PYTEST_ARGS)

integration: venv
	$(BIN)/pytest tests/integration $(PYTEST_ARGS)

infra: venv
	PATH="$(abspath $(BIN)):$$PATH" $(BIN)/pytest tests/infra $(PYTEST_ARGS)

lint: venv
	$(BIN)/ruff check layers functions tests demo benchmarks
	$(BIN)/ruff format --check layers functions tests demo benchmarks
	$(BIN)/mypy

validate: venv
	$(BIN)/sam validate --lint
	$(BIN)/cfn-lint template.yaml

build: venv
	PATH="$(abspath $(BIN)):$$PATH" $(BIN)/sam build

bench: venv
	command -v iprange >/dev/null || { apt-get install -y iprange || (apt-get update && apt-get install -y iprange); } || echo "iprange not installed: the comparison column will be missing"
	$(BIN)/python -m benchmarks $(BENCH_ARGS)

fake-gateway: venv
	$(BIN)/python -m tests.fakes.qualys --rebase-timestamps $(GATEWAY_ARGS)

clean:
	rm -rf $(VENV) .aws-sam .pytest_cache .hypothesis demo-output
