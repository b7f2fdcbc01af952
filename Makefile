# Two commands from a fresh clone:  `make run` (the quickstart)  and  `make test` (the test suite).
# `make test` first checks the import layers (lint-imports, contracts in pyproject.toml), then runs pytest.
# Both create .venv when it is missing and reinstall only when pyproject.toml changed (the stamp file
# .venv/.installed is older than pyproject.toml). People who manage their own environment can skip
# make: see README "Set-up".
#
#   make run ARGS="--config configs/cifar10.yaml"   extra arguments for `pfedlora run`
#   make test PYTEST_ARGS="-x tests/algorithms"      extra arguments for pytest
#   make TORCH_SPEC="torch==2.13.0 --index-url https://download.pytorch.org/whl/cu128" test
#                                                    another torch build (e.g. for a GPU; README)

PYTHON ?= python3
VENV ?= .venv
TORCH_SPEC ?= torch==2.13.0
ARGS ?=
PYTEST_ARGS ?=

BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: run test install clean-venv

run: $(STAMP)
	$(BIN)/pfedlora run $(ARGS)

test: $(STAMP)
	$(BIN)/lint-imports
	$(BIN)/python -m pytest -q $(PYTEST_ARGS)

install: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet $(TORCH_SPEC)
	$(BIN)/python -m pip install --quiet -e ".[dev]"
	touch $(STAMP)

clean-venv:
	rm -rf $(VENV)
