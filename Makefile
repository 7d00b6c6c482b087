# tokentrail developer entry points. Every target sets up .venv first
# (scripts/setup.sh is idempotent: a no-op in well under a second once done).
SHELL := /bin/bash
.SHELLFLAGS := -euo pipefail -c
.DEFAULT_GOAL := help

VENV   := .venv
PY     := $(VENV)/bin/python
RUFF   := $(VENV)/bin/ruff
MYPY   := $(VENV)/bin/mypy
# what ruff checks and formats (mypy checks the package, see [tool.mypy] in pyproject.toml)
LINT_PATHS := src tests benchmarks
SETUP  := bash scripts/setup.sh
DEMO_TEXT  := Time flies like an arrow. Fruit flies like a banana.
DEMO_TOKEN := flies

.PHONY: help setup setup-browser demo serve lint fix test test-fast bench clean

help:
	@echo "make demo    - trace '$(DEMO_TOKEN)' through the bundled model"
	@echo "make serve   - start the web app (tokentrail serve)"
	@echo "make test    - lint, then run the whole test suite (incl. headless-Chromium tests)"
	@echo "make test-fast - the unit and parity tiers only: no bundled model, no browser (minutes)"
	@echo "make lint    - ruff check, ruff format --check, mypy (what CI runs before the tests)"
	@echo "make fix     - ruff check --fix, then ruff format (rewrites files)"
	@echo "make bench   - run every benchmarks/*.py"
	@echo "make clean   - remove caches, build outputs and artifacts/ (keeps .venv)"

setup:
	@$(SETUP)

setup-browser:
	@$(SETUP) --browser

demo: setup
	$(VENV)/bin/tokentrail trace "$(DEMO_TEXT)" --token $(DEMO_TOKEN)

serve: setup
	$(VENV)/bin/tokentrail serve

lint: setup
	$(RUFF) check $(LINT_PATHS)
	$(RUFF) format --check $(LINT_PATHS)
	$(MYPY)

fix: setup
	$(RUFF) check --fix --exit-zero $(LINT_PATHS)
	$(RUFF) format $(LINT_PATHS)

# The one command (CI runs it): lint first, then every test tier.
test: setup-browser lint
	$(PY) -m pytest -q

# Tiers (markers in pyproject.toml): unit and parity tests on tiny random models; the
# bundled real models (slow) and headless Chromium (browser) are left to `make test`.
test-fast: setup
	$(PY) -m pytest -q -m "not slow and not browser"

bench: setup
	@shopt -s nullglob; files=(benchmarks/*.py); \
	if [ $${#files[@]} -eq 0 ]; then echo "no benchmarks/*.py to run"; exit 0; fi; \
	for f in "$${files[@]}"; do echo "== $$f"; $(PY) "$$f"; done

clean:
	rm -rf build dist .pytest_cache .ruff_cache .mypy_cache artifacts src/*.egg-info
	find . -path ./$(VENV) -prune -o -type d -name __pycache__ -exec rm -rf {} +
