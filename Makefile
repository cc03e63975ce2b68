# `make run`: set up, then run the main job on the embedded defaults (the `quick` study).
# `make test`: set up, then run the test suite in two pytest-xdist workers, each test file in one
# worker, the files with the most long tests first (tests/conftest.py), each worker with its share of
# the cores (the suite also drives a headless Chromium and starts a throwaway PostgreSQL server on
# loopback per worker, stopped again when its tests end).
# `make docs`: set up, then build the documentation site into build/site (offline, --strict).
# `make fast`: set up, then the fast lane: every test but those marked e2e (real trainings, studies,
# servers, the browser, `bench` run as a process for many seconds, Inception on a CPU), in two workers too.
# `make learning`: every variant trained at its defaults, checked to have learned at 40 s of training,
# then until it reaches a quarter of its untrained FID (about half an hour on 2 CPU cores; apart
# from the suite, which it would more than double; one process, each training on both cores).
PYTHON ?= python3
WORKERS ?= 2
VENV ?= .venv
BIN := $(VENV)/bin

.PHONY: run test fast learning docs setup data browser postgres

run: setup
	$(BIN)/bench run --variant dcgan --study quick

test: setup browser postgres
	$(BIN)/python -m pytest tests -n $(WORKERS) --dist loadfile --no-loadscope-reorder

fast: setup
	$(BIN)/python -m pytest tests -m "not e2e" -n $(WORKERS) --dist loadfile --no-loadscope-reorder

learning: setup
	$(BIN)/python -m pytest tests -m learning -s

docs: $(VENV)/.installed
	$(BIN)/mkdocs build --strict

setup: $(VENV)/.installed data

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[test]'
	touch $@

data:
	scripts/ensure-debian-package.sh dataset-fashion-mnist /usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz

browser:
	scripts/ensure-debian-package.sh chromium /usr/bin/chromium

postgres:
	scripts/ensure-debian-package.sh postgresql /usr/lib/postgresql/15/bin/initdb
