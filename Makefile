# avfusion — every target is idempotent; `make demo` and `make test` do all set-up.
SHELL      := bash
PYTHON     ?= python3
VENV       ?= .venv
PY         := $(VENV)/bin/python
AVF        := $(VENV)/bin/avfusion
STAMP      := $(VENV)/.installed
DEMO_DIR   ?= demo-out
PYTEST_ARGS ?=

export DS_ACCELERATOR ?= cpu
export OMP_NUM_THREADS ?= 1
export PATH := $(CURDIR)/$(VENV)/bin:$(PATH)

.PHONY: install demo test bench lint clean

install: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

demo: install
	$(AVF) synth --out $(DEMO_DIR)/videos --videos 96 --seconds 10 --classes 4 --seed 0
	$(AVF) shards build $(DEMO_DIR)/videos --out $(DEMO_DIR)/shards --workers 2 --samples-per-shard 16
	$(AVF) shards verify $(DEMO_DIR)/shards
	@echo "demo: videos in $(DEMO_DIR)/videos, shards in $(DEMO_DIR)/shards"

test: install
	$(PY) -m pytest $(PYTEST_ARGS)

bench: install
	@set -e; for b in benchmarks/bench_*.py; do echo "== $$b" >&2; $(PY) $$b; done

lint: install
	$(VENV)/bin/ruff check preprocess model pipeline deploy tests benchmarks

clean:
	rm -rf $(DEMO_DIR) .pytest_cache
