"""Realised proportions of a 3-set mixture over one epoch against the configured weights.

Three synthetic shard sets (:mod:`tests.support.shardsets`; sizes 600 / 300 / 60, 20 samples a
shard, distinct keys per set) mixed with weights 0.5 / 0.3 / 0.2 — the first set down-sampled,
the third read 3.2 times — through the real training loader (2 ranks, one worker each, batch 16,
224² augmentation) for one epoch. Reports the configured shares, the epoch size rule's counts
(:mod:`pipeline.data.mixture`), the realised counts and shares (from the batches' keys, and the
loader's ``samples_per_set()``), the binomial 3σ tolerance, the shares over the first quarter of
every rank's batches (which vary by whole shards), and the fraction of batches holding all three
sets.
"""

from __future__ import annotations

import math
import tempfile
import time
from collections import Counter
from pathlib import Path

from avbase.features import FRONTENDS, ImageSpec
from pipeline.config import DataConfig
from pipeline.data.loader import build_loader
from tests.support.shardsets import write_shard_set

SIZES = {"large": 600, "medium": 300, "small": 60}
WEIGHTS = {"large": 0.5, "medium": 0.3, "small": 0.2}
FIRST = 10000  # sample numbers of set k start at k · FIRST: the key names the set
WORLD, BATCH, PER_SHARD = 2, 16, 20


def set_of(key: str) -> str:
    return list(SIZES)[int(key[3:8]) // FIRST]


def shares(counts: Counter) -> dict[str, float]:
    total = sum(counts.values())
    return {name: round(counts[name] / total, 4) for name in SIZES}


def run_epoch(shards: list[dict]) -> tuple[list[list[list[str]]], Counter, float]:
    """Keys of every batch of every rank, the loaders' summed samples_per_set, wall seconds."""
    keys, counted, start = [], Counter(), time.perf_counter()
    for rank in range(WORLD):
        loader = build_loader(
            DataConfig(shards=shards, batch_size=BATCH, workers=1),
            audio=FRONTENDS["deepavfusion"],
            image=ImageSpec(),
            rank=rank,
            world_size=WORLD,
            seed=0,
        )
        loader.set_epoch(0)
        keys.append([batch["key"] for batch in loader])
        counted.update(loader.samples_per_set())
        loader.close()
    return keys, counted, time.perf_counter() - start


def measure() -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        shards = []
        for k, (name, n) in enumerate(SIZES.items()):
            write_shard_set(
                Path(tmp) / name, n, PER_SHARD, first=k * FIRST, n_frames=1, frame_size=256
            )
            shards.append({"path": str(Path(tmp) / name), "weight": WEIGHTS[name]})
        per_rank, counted, wall = run_epoch(shards)
    epoch = Counter(set_of(key) for batches in per_rank for b in batches for key in b)
    quarter = Counter(
        set_of(key) for batches in per_rank for b in batches[: len(batches) // 4] for key in b
    )
    total = sum(epoch.values())
    tolerance = {n: round(3 * math.sqrt(w * (1 - w) / total), 4) for n, w in WEIGHTS.items()}
    realised = shares(epoch)
    batches = [set(map(set_of, b)) for batches in per_rank for b in batches]
    return {
        "benchmark": "loader_mixture",
        "sets": dict(SIZES),
        "configured": dict(WEIGHTS),
        "epoch_samples": total,
        "rule_counts": {n: round(WEIGHTS[n] * sum(SIZES.values())) for n in SIZES},
        "realised_counts": {n: epoch[n] for n in SIZES},
        "samples_per_set": dict(counted),
        "realised": realised,
        "ratio_realised_vs_configured": {n: round(realised[n] / WEIGHTS[n], 4) for n in SIZES},
        "binomial_3sigma": tolerance,
        "within_tolerance": all(abs(realised[n] - WEIGHTS[n]) <= tolerance[n] for n in SIZES),
        "first_quarter_realised": shares(quarter),
        "batches_with_all_sets": round(sum(len(s) == 3 for s in batches) / len(batches), 3),
        "world_size": WORLD,
        "batch_size": BATCH,
        "wall_s": round(wall, 1),
    }
