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
	@# DeepSpeed JIT-compiles its CPU comm op on first use (30 s on 2 cores): here, not in a launch
	if [ "$$DS_ACCELERATOR" = cpu ]; then $(PY) -c 'from deepspeed.comm.torch import build_shm_op; build_shm_op()'; fi
	touch $(STAMP)

demo: install $(DEMO_DIR)/shards/manifest.json $(DEMO_DIR)/heldout-shards/manifest.json
	rm -rf $(DEMO_DIR)/run $(DEMO_DIR)/eval-linear
	$(VENV)/bin/deepspeed --num_gpus 2 --master_port $(DEMO_PORT) --module pipeline.train \
	  --config configs/debug.yaml data.shards=$(DEMO_DIR)/shards probe.shards=$(DEMO_DIR)/shards \
	  train.output_dir=$(DEMO_DIR)/run tracking.uri=$(DEMO_MLFLOW) train.resume=never
	$(AVF) eval --config configs/eval/debug_linear.yaml encoder.checkpoint=$(DEMO_DIR)/run \
	  data.train=$(DEMO_DIR)/shards data.test=$(DEMO_DIR)/heldout-shards \
	  train.output_dir=$(DEMO_DIR)/eval-linear tracking.uri=$(DEMO_MLFLOW) train.resume=never
	$(AVF) runs compare --experiment avfusion-demo --uri $(DEMO_MLFLOW) --max-runs 3
	@$(PY) -c 'import json, sys; rows = [json.loads(l) for f in sys.argv[1:] for l in open(f)]; \
	  knn = [r["probe"]["all"] for r in rows if "probe" in r][-1]; lin = [r["eval/top1_all"] for r in rows if "eval/top1_all" in r][-1]; \
	  print(f"demo: top-1 (chance 25 %): kNN {knn:.1f} %, linear probe on held-out videos {lin:.1f} %")' \
	  $(DEMO_DIR)/run/metrics.jsonl $(DEMO_DIR)/eval-linear/metrics.jsonl
	@echo
	@echo "demo: videos $(DEMO_DIR)/videos, shards $(DEMO_DIR)/shards, run $(DEMO_DIR)/run, linear probe $(DEMO_DIR)/eval-linear"
	@echo "demo: open the runs with:  $(VENV)/bin/mlflow ui --backend-store-uri $(DEMO_MLFLOW)"

$(DEMO_DIR)/videos/labels.csv: | $(STAMP)
	$(AVF) synth --out $(DEMO_DIR)/videos --videos 96 --seconds 10 --classes 4 --seed 0

$(DEMO_DIR)/shards/manifest.json: $(DEMO_DIR)/videos/labels.csv
	$(AVF) shards build $(DEMO_DIR)/videos/labels.csv --out $(DEMO_DIR)/shards --workers 2 --samples-per-shard 16
	$(AVF) shards verify $(DEMO_DIR)/shards

# Held-out videos (another seed) for the linear probe's test set.
$(DEMO_DIR)/heldout-videos/labels.csv: | $(STAMP)
	$(AVF) synth --out $(DEMO_DIR)/heldout-videos --videos 48 --seconds 10 --classes 4 --seed 1

$(DEMO_DIR)/heldout-shards/manifest.json: $(DEMO_DIR)/heldout-videos/labels.csv
	$(AVF) shards build $(DEMO_DIR)/heldout-videos/labels.csv --out $(DEMO_DIR)/heldout-shards --workers 2 --samples-per-shard 16

test: install
	$(PY) -m pytest $(PYTEST_ARGS)

bench: install
	@set -e; for b in benchmarks/bench_*.py; do echo "== $$b" >&2; $(PY) $$b; done

lint: install
	$(VENV)/bin/ruff check avbase preprocess model pipeline deploy tests benchmarks
	$(VENV)/bin/ruff format --check avbase preprocess model pipeline deploy tests benchmarks

clean:
	rm -rf $(DEMO_DIR) .pytest_cache
