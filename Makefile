# Two commands do all the set-up on a fresh Debian machine with Python 3.11+:
#   make run    start the service (in-memory broker unless NOTIFY_REDIS_URL is set)
#   make test   run the whole test suite (starts its own Redis servers)
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: run test lint bench lint-deploy lock clean

$(STAMP): pyproject.toml
	@$(PYTHON) -c 'import ensurepip, venv' 2>/dev/null || PYTHON=$(PYTHON) scripts/ensure-system-packages
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $(STAMP)

run: $(STAMP)
	@$(BIN)/python -m service.devhint
	$(BIN)/notify serve

test: $(STAMP)
	PYTHON=$(PYTHON) scripts/ensure-system-packages
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy
	$(BIN)/lint-imports
	$(BIN)/pytest

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy
	$(BIN)/lint-imports

# Static checks of the deploy files (tests/deploy also runs them, plus live ones).
CHECKOV := $(VENV)/checkov/bin/checkov
lint-deploy: $(STAMP)
	$(BIN)/pytest -q tests/deploy -m "not slow"
	$(BIN)/hadolint --failure-threshold style Dockerfile
	$(BIN)/kubernetes-validate --strict --quiet $$(ls deploy/k8s/*.yaml | grep -v kustomization.yaml)
	$(BIN)/gixy deploy/nginx/nginx.conf
	test -x $(CHECKOV) || { $(PYTHON) -m venv $(VENV)/checkov && $(VENV)/checkov/bin/pip install --quiet checkov==3.3.30; }
	$(CHECKOV) --quiet --compact --skip-download --framework kubernetes -d deploy/k8s
	$(CHECKOV) --quiet --compact --skip-download --framework dockerfile -f Dockerfile

# The Docker image's hash-locked dependencies, from pyproject.toml.
lock: $(STAMP)
	PIP_CONFIG_FILE=/dev/null $(BIN)/pip-compile --quiet --generate-hashes --allow-unsafe --all-build-deps --strip-extras --no-emit-index-url --no-emit-find-links --no-emit-trusted-host --output-file=deploy/docker/requirements.lock pyproject.toml

bench: $(STAMP)
	$(BIN)/python -m bench --quick
	$(BIN)/python -m bench churn

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
