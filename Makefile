# The two commands of the README: `make run` (the app on its default experiment) and `make test`.
# Both do all set-up themselves: a .venv, the Python packages, and the Debian packages the tests need.
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.prunekit-installed
HOST ?= 127.0.0.1
PORT ?= 8501
APT_PACKAGES := chromium dataset-fashion-mnist
PYTEST_ARGS ?=

.PHONY: run test venv sysdeps lint bench clean

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e ".[dev]"
	touch $(STAMP)

venv: $(STAMP)

# Debian packages for the browser tests and the Fashion-MNIST loader; skipped (tests then skip) without root.
sysdeps:
	@missing=""; for p in $(APT_PACKAGES); do dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	if [ -n "$$missing" ]; then \
		if [ "$$(id -u)" = 0 ]; then apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing; \
		elif command -v sudo >/dev/null && sudo -n true 2>/dev/null; then sudo apt-get update -qq && sudo DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing; \
		else echo "warning: cannot install$$missing (not root); the tests that need them will skip"; fi; \
	fi

run: $(STAMP)
	$(PY) -m streamlit run app/Home.py --server.address $(HOST) --server.port $(PORT) --server.headless true --browser.gatherUsageStats false

test: $(STAMP) sysdeps
	$(PY) -m pytest $(PYTEST_ARGS)

lint: $(STAMP)
	$(VENV)/bin/ruff check prunekit app tests

bench: $(STAMP)
	$(VENV)/bin/prunekit bench collapse

clean:
	rm -rf $(VENV) .pytest_cache test-artifacts
