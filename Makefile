# Everything a developer or CI needs. `make demo` and `make test` create .venv themselves.
SHELL := /bin/bash
# The Lambda runtime is python3.12: use that interpreter when it runs here (sam build needs it),
# else any Python 3.11+ (everything but sam build works there).
PYTHON ?= $(shell for p in python3.12 $(wildcard $(HOME)/.pyenv/versions/3.12.*/bin/python3.12) python3; do \
	if $$p -c 'import sys; assert sys.version_info >= (3, 11)' >/dev/null 2>&1; then echo $$p; break; fi; done)
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
# checkov's pins clash with the project's (requirements-tools.txt): it gets its own virtualenv.
TOOLS := .venv-tools
TOOLS_STAMP := $(TOOLS)/.installed

.PHONY: venv tools scan costs demo test unit integration infra lint validate build image bench fake-gateway clean

venv: $(STAMP)

$(STAMP): pyproject.toml layers/shared/requirements.txt
	@echo "==> Installing cdr-policy and its development tools into $(VENV) with $(PYTHON) (a few minutes the first time)"
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev]'
	@echo "==> $(VENV) is ready"
	touch $(STAMP)

tools: $(TOOLS_STAMP)

$(TOOLS_STAMP): requirements-tools.txt
	@echo "==> Installing checkov into $(TOOLS) (its own virtualenv: its pins clash with the project's)"
	test -x $(TOOLS)/bin/python || $(PYTHON) -m venv $(TOOLS)
	$(TOOLS)/bin/pip install --quiet --upgrade pip
	$(TOOLS)/bin/pip install --quiet -r requirements-tools.txt
	touch $(TOOLS_STAMP)

demo: venv
	$(BIN)/python -m demo $(DEMO_ARGS)

test: venv tools
	PATH="$(abspath $(BIN)):$$PATH" $(BIN)/pytest $(PYTEST_ARGS)

unit: venv
	$(BIN)/pytest tests/unit $(PYTEST_ARGS)

integration: venv
	$(BIN)/pytest tests/integration $(PYTEST_ARGS)

infra: venv tools
	PATH="$(abspath $(BIN)):$$PATH" $(BIN)/pytest tests/infra $(PYTEST_ARGS)

lint: venv
	$(BIN)/ruff check layers functions tests demo benchmarks
	$(BIN)/ruff format --check layers functions tests demo benchmarks
	$(BIN)/mypy
	$(BIN)/hadolint deploy/agent/Dockerfile

validate: venv scan
	$(BIN)/sam validate --lint
	$(BIN)/cfn-lint template.yaml

# The security review users run: 0 failed; skipped checks carry their reason in the template.
scan: tools
	$(TOOLS)/bin/checkov -f template.yaml --framework cloudformation --skip-download --compact

build: venv
	PATH="$(abspath $(BIN)):$$PATH" $(BIN)/sam build

# The agent/CLI image (deploy/agent/Dockerfile), its size printed. As root it installs and starts Docker
# Engine and, where no registry answers, makes the Debian base (deploy/agent/build-image.sh says how).
# IMAGE_ARGS: e.g. --tag <registry>/cdr-policy-agent:0.1.0, --refresh-base, -- --build-arg ...
image: venv
	deploy/agent/build-image.sh --python $(BIN)/python $(IMAGE_ARGS)

bench: venv
	command -v iprange >/dev/null || { apt-get install -y iprange || (apt-get update && apt-get install -y iprange); } || echo "iprange not installed: the comparison column will be missing"
	$(BIN)/python -m benchmarks $(BENCH_ARGS)

# Requests per pipeline stage and per agent poll, counted at a moto server (README "What it costs").
costs: venv
	$(BIN)/python -m demo.costs $(COSTS_ARGS)

fake-gateway: venv
	$(BIN)/python -m tests.fakes.qualys --rebase-timestamps $(GATEWAY_ARGS)

clean:
	rm -rf $(VENV) $(TOOLS) .aws-sam .pytest_cache .hypothesis demo-output
