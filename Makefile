# tokentrail developer entry points. Every target sets up .venv first
# (scripts/setup.sh is idempotent: a no-op in well under a second once done).
SHELL := /bin/bash
.SHELLFLAGS := -euo pipefail -c
.DEFAULT_GOAL := help

VENV   := .venv
PY     := $(VENV)/bin/python
SETUP  := bash scripts/setup.sh
DEMO_TEXT  := Time flies like an arrow. Fruit flies like a banana.
DEMO_TOKEN := flies

.PHONY: help setup setup-browser demo serve test bench clean

help:
	@echo "make demo    - trace '$(DEMO_TOKEN)' through the bundled model"
	@echo "make serve   - start the web app (tokentrail serve)"
	@echo "make test    - run the whole test suite (incl. headless-Chromium tests)"
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

test: setup-browser
	$(PY) -m pytest -q

bench: setup
	@shopt -s nullglob; files=(benchmarks/*.py); \
	if [ $${#files[@]} -eq 0 ]; then echo "no benchmarks/*.py to run"; exit 0; fi; \
	for f in "$${files[@]}"; do echo "== $$f"; $(PY) "$$f"; done

clean:
	rm -rf build dist .pytest_cache artifacts src/*.egg-info
	find . -path ./$(VENV) -prune -o -type d -name __pycache__ -exec rm -rf {} +
