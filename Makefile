# Everything a developer or CI needs. `make demo` and `make test` create .venv themselves.
SHELL := /bin/bash
# The lock files (requirements-dev.txt, requirements-tools.txt, layers/shared/requirements.txt) are
# resolved for the Lambda runtime's Python, 3.12: use python3.12 where it runs, else any Python 3.12+.
PYTHON ?= $(shell for p in python3.12 $(wildcard $(HOME)/.pyenv/versions/3.12.*/bin/python3.12) python3; do \
	if $$p -c 'import sys; assert sys.version_info >= (3, 12)' >/dev/null 2>&1; then echo $$p; break; fi; done)
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
# checkov's pins clash with the project's (requirements-tools.in): it gets its own virtualenv.
TOOLS := .venv-tools
TOOLS_STAMP := $(TOOLS)/.installed

.PHONY: venv lock tools scan costs demo test unit integration infra lint validate build image bench fake-gateway clean

venv: $(STAMP)

# Exactly the locked versions, each checked against its hash; then cdr-policy itself (editable, its
# dependencies already there, the locked setuptools as its build backend).
$(STAMP): requirements-dev.txt pyproject.toml
	@test -n "$(PYTHON)" || { echo "make: Python 3.12 (the Lambda runtime's) is needed; the lock files are resolved for it" >&2; exit 1; }
	@echo "==> Installing cdr-policy and its locked development tools into $(VENV) with $(PYTHON) (a few minutes the first time)"
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --require-hashes --no-deps -r requirements-dev.txt
	$(BIN)/python -m pip install --quiet --no-deps --no-build-isolation -e .
	@echo "==> $(VENV) is ready"
	touch $(STAMP)

# A change of dependency is a change of these files, reviewed like code: edit pyproject.toml,
# layers/shared/requirements.in or requirements-tools.in, then `make lock`. The layer's lock is for
# Lambda (python3.12, manylinux x86_64); the development locks hold for Python 3.12+ on any platform,
# the layer's versions included (tests/unit/test_locks.py checks that they agree).
UV_COMPILE := $(abspath $(BIN))/uv pip compile --quiet --generate-hashes --annotation-style line --python-version 3.12
lock: venv
	cd layers/shared && $(UV_COMPILE) --python-platform x86_64-manylinux_2_34 -o requirements.txt requirements.in
	$(UV_COMPILE) --universal -c layers/shared/requirements.txt --extra dev -o requirements-dev.txt pyproject.toml
	$(UV_COMPILE) --universal -o requirements-tools.txt requirements-tools.in

tools: $(TOOLS_STAMP)

$(TOOLS_STAMP): requirements-tools.txt
	@echo "==> Installing checkov into $(TOOLS) (its own virtualenv: its pins clash with the project's)"
	test -x $(TOOLS)/bin/python || $(PYTHON) -m venv $(TOOLS)
	$(TOOLS)/bin/python -m pip install --quiet --require-hashes --no-deps -r requirements-tools.txt
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
	$(BIN)/ruff check layers functions fakes tests demo benchmarks
	$(BIN)/ruff format --check layers functions fakes tests demo benchmarks
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

# Requests per pipeline stage and per agent poll, counted at a moto server (docs/costs.md).
costs: venv
	$(BIN)/python -m demo.costs $(COSTS_ARGS)

fake-gateway: venv
	$(BIN)/python -m fakes.qualys --rebase-timestamps $(GATEWAY_ARGS)

clean:
	rm -rf $(VENV) $(TOOLS) .aws-sam .pytest_cache .hypothesis demo-output
