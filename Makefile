# `make run`: set up, then run the main job on the embedded defaults.
# `make test`: set up, then run the test suite.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin

.PHONY: run test setup data

run: setup
	$(BIN)/bench train --variant dcgan --dataset fashion-mnist --steps 1500 --eval-every 500

test: setup
	$(BIN)/python -m pytest tests

setup: $(VENV)/.installed data

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[test]'
	touch $@

data:
	scripts/ensure-data.sh
