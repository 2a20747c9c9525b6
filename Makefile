# Two commands do all the set-up on a fresh Debian machine with Python 3.11+:
#   make run    start the service (in-memory broker unless NOTIFY_REDIS_URL is set);
#               installs the runtime lock only
#   make test   run the whole test suite (starts its own Redis servers); installs
#               the dev lock (runtime, test, lint and deploy-check tools)
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

# Every package the venv gets (runtime, dev and deploy-check tools, pip and
# setuptools themselves) comes from this hash-locked file; `make lock` refreshes it.
LOCK := requirements-dev.lock
# `make run` needs the service only: the runtime lock (the Docker image's: no test,
# lint or browser tools), into the same venv; `make test` adds the rest later.
RUN_LOCK := deploy/docker/requirements.lock
RUN_STAMP := $(VENV)/.installed-runtime

.PHONY: run test test-latest lint bench lint-deploy lock lock-upgrade clean

$(STAMP): $(LOCK) pyproject.toml clients/python/pyproject.toml
	@$(PYTHON) -c 'import ensurepip, venv' 2>/dev/null || PYTHON=$(PYTHON) scripts/ensure-system-packages
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --require-hashes --no-deps -r $(LOCK)
	$(BIN)/python -m pip install --quiet --no-deps --no-build-isolation -e clients/python -e .
	$(BIN)/python scripts/check-lock.py
	touch $(STAMP)

$(RUN_STAMP): $(RUN_LOCK) pyproject.toml clients/python/pyproject.toml
	@$(PYTHON) -c 'import ensurepip, venv' 2>/dev/null || PYTHON=$(PYTHON) scripts/ensure-system-packages
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --require-hashes --no-deps -r $(RUN_LOCK)
	$(BIN)/python -m pip install --quiet --no-deps --no-build-isolation -e clients/python -e .
	$(BIN)/python scripts/check-lock.py --runtime
	touch $(RUN_STAMP)

run: $(RUN_STAMP)
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

# Static checks of the deploy files (tests/deploy also runs them, plus live ones,
# and promtool on deploy/prometheus). kubernetes-validate knows no CRDs: the
# PrometheusRule (deploy/k8s/monitoring/) is checked by tests/deploy against the
# plain rules file that promtool checks; checkov scans it with the rest.
CHECKOV := $(VENV)/checkov/bin/checkov
lint-deploy: $(STAMP)
	$(BIN)/pytest -q tests/deploy -m "not slow"
	$(BIN)/hadolint --failure-threshold style Dockerfile
	$(BIN)/kubernetes-validate --strict --quiet $$(ls deploy/k8s/*.yaml | grep -v kustomization.yaml)
	$(BIN)/gixy deploy/nginx/nginx.conf
	test -x $(CHECKOV) || { $(PYTHON) -m venv $(VENV)/checkov && $(VENV)/checkov/bin/pip install --quiet checkov==3.3.30; }
	$(CHECKOV) --quiet --compact --skip-download --framework kubernetes -d deploy/k8s
	$(CHECKOV) --quiet --compact --skip-download --framework dockerfile -f Dockerfile

# Refreshes both locks from pyproject.toml in one go: the development/test
# environment (with this machine's configured index) and the Docker image's
# runtime set (PyPI's files only: the image is built elsewhere). `make lock` keeps
# every pin that still satisfies pyproject.toml (adds, drops, narrows);
# `make lock-upgrade` moves every pin to the newest allowed release (run
# `make test-latest` first).
# The publisher package (clients/python) is a dependency of the service that is
# installed from this repository, not from an index: pip-compile resolves it from
# a wheel built here (found through PIP_FIND_LINKS, which stays out of the
# lock's header) and leaves it out of the locks as "unsafe" (naming it replaces
# the default unsafe set, so pip and setuptools stay pinned as before).
PUBLISHER_WHEELS := $(VENV)/publisher-wheel
PIP_COMPILE_FLAGS := --quiet --generate-hashes --unsafe-package appointment-notify-publisher --all-build-deps --strip-extras --no-emit-index-url --no-emit-find-links --no-emit-trusted-host
lock: $(STAMP)
	rm -rf $(PUBLISHER_WHEELS)
	$(BIN)/pip wheel --quiet --no-deps --no-build-isolation --wheel-dir $(PUBLISHER_WHEELS) clients/python
	PIP_FIND_LINKS="$$PIP_FIND_LINKS $(abspath $(PUBLISHER_WHEELS))" $(BIN)/pip-compile $(PIP_COMPILE_FLAGS) $(LOCK_UPGRADE) --extra dev --output-file=$(LOCK) pyproject.toml
	PIP_FIND_LINKS="$(abspath $(PUBLISHER_WHEELS))" PIP_CONFIG_FILE=/dev/null $(BIN)/pip-compile $(PIP_COMPILE_FLAGS) $(LOCK_UPGRADE) --output-file=deploy/docker/requirements.lock pyproject.toml

lock-upgrade:
	$(MAKE) lock LOCK_UPGRADE=--upgrade

# The canary for upstream releases: the newest versions pyproject.toml allows, in
# a throwaway venv; prints what differs from the lock, then runs the whole suite.
# Not part of .ci/run (which stays reproducible): the first step of an update.
test-latest:
	PYTHON=$(PYTHON) scripts/test-latest

bench: $(STAMP)
	$(BIN)/python -m bench --quick
	$(BIN)/python -m bench targets
	$(BIN)/python -m bench churn

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
