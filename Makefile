# avfusion — every target is idempotent; `make demo` and `make test` do all set-up.
SHELL      := bash
PYTHON     ?= python3
VENV       ?= .venv
PY         := $(VENV)/bin/python
AVF        := $(VENV)/bin/avfusion
STAMP      := $(VENV)/.installed
DEMO_DIR   ?= demo-out
DEMO_MLFLOW ?= sqlite:///$(DEMO_DIR)/mlruns.db
DEMO_PORT  ?= 29511
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

demo: install $(DEMO_DIR)/shards/manifest.json
	rm -rf $(DEMO_DIR)/run
	$(VENV)/bin/deepspeed --num_gpus 2 --master_port $(DEMO_PORT) --module pipeline.train \
	  --config configs/debug.yaml data.shards=$(DEMO_DIR)/shards probe.shards=$(DEMO_DIR)/shards \
	  train.output_dir=$(DEMO_DIR)/run tracking.uri=$(DEMO_MLFLOW) train.resume=never
	$(AVF) runs compare --experiment avfusion-demo --uri $(DEMO_MLFLOW) --max-runs 3
	@echo
	@echo "demo: videos $(DEMO_DIR)/videos, shards $(DEMO_DIR)/shards, run $(DEMO_DIR)/run"
	@echo "demo: open the runs with:  $(VENV)/bin/mlflow ui --backend-store-uri $(DEMO_MLFLOW)"

$(DEMO_DIR)/videos/labels.csv: | $(STAMP)
	$(AVF) synth --out $(DEMO_DIR)/videos --videos 96 --seconds 10 --classes 4 --seed 0

$(DEMO_DIR)/shards/manifest.json: $(DEMO_DIR)/videos/labels.csv
	$(AVF) shards build $(DEMO_DIR)/videos/labels.csv --out $(DEMO_DIR)/shards --workers 2 --samples-per-shard 16
	$(AVF) shards verify $(DEMO_DIR)/shards

test: install
	$(PY) -m pytest $(PYTEST_ARGS)

bench: install
	@set -e; for b in benchmarks/bench_*.py; do echo "== $$b" >&2; $(PY) $$b; done

lint: install
	$(VENV)/bin/ruff check preprocess model pipeline deploy tests benchmarks

clean:
	rm -rf $(DEMO_DIR) .pytest_cache
