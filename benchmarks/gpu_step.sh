#!/usr/bin/env bash
# The #11 GPU acceptance run, one command (one CUDA device):
#   1. bench_step.py: vggsound preset, bf16, per-GPU batch 64/128/256 × ZeRO 0/1/2 — trainer vs
#      plain loop vs model only, samples/s, MFU, host and CUDA synchronisations per step;
#   2. the same at batch 128, ZeRO 2 with train.compile (regional blocks);
#   3. bench_train.py: the real job end to end (real loader, real shards) at batch 128, ZeRO 2,
#      with its data-wait fraction. SHARDS=DIR uses an existing shard set (no PyAV needed).
# Each step prints one JSON line; see docs/BENCHMARKS.md ("Training step").
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-python}
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" OMP_NUM_THREADS=${OMP_NUM_THREADS:-8}
$PY benchmarks/bench_step.py --preset vggsound --precision bf16 --batches 64,128,256 --stages 0,1,2 \
    --steps 10 --rounds 3
$PY benchmarks/bench_step.py --preset vggsound --precision bf16 --batches 128 --stages 2 --compile \
    --steps 10 --rounds 3
$PY benchmarks/bench_train.py --stages '' --gpu-runs 2:128 ${SHARDS:+--shards "$SHARDS"}
