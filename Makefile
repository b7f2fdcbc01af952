# Two commands from a fresh clone:  `make run` (the quickstart)  and  `make test` (the test suite).
# `make test` first checks the import layers (lint-imports, contracts in pyproject.toml), then runs pytest.
# Both create .venv when it is missing and reinstall only when pyproject.toml changed (the stamp file
# .venv/.installed is older than pyproject.toml). People who manage their own environment can skip
# make: see docs/guide/setup.md.
#
#   make run ARGS="--config configs/cifar10.yaml"   extra arguments for `pfedlora run`
#   make test PYTEST_ARGS="-x tests/algorithms"      extra arguments for pytest (after `make docs`)
#   make docs / make docs-serve                      the documentation site (site/), built --strict
#   make TORCH_SPEC="torch==2.13.0 --index-url https://download.pytorch.org/whl/cu128" test
#                                                    another torch build (e.g. for a GPU; README)

PYTHON ?= python3
VENV ?= .venv
TORCH_SPEC ?= torch==2.13.0
ARGS ?=
PYTEST_ARGS ?=

BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: run test docs docs-serve install clean-venv

run: $(STAMP)
	$(BIN)/pfedlora run $(ARGS)

# the docs build first: a broken link, a missing page or an unresolved API reference fails the suite
test: docs
	$(BIN)/lint-imports
	$(BIN)/python -m pytest -q $(PYTEST_ARGS)

# the documentation site (mkdocs.yml) into site/; the config and CLI reference and the algorithms
# figure are generated from the code first (scripts/gen_docs.py)
docs: $(STAMP)
	$(BIN)/python scripts/gen_docs.py
	NO_MKDOCS_2_WARNING=1 $(BIN)/mkdocs build --strict --quiet

docs-serve: $(STAMP)
	$(BIN)/python scripts/gen_docs.py
	NO_MKDOCS_2_WARNING=1 $(BIN)/mkdocs serve

install: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet $(TORCH_SPEC)
	$(BIN)/python -m pip install --quiet -e ".[dev]"
	touch $(STAMP)

clean-venv:
	rm -rf $(VENV)
