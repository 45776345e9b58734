"""Checks that need no process group, run before DeepSpeed starts (#14.4).

Each failure is one line naming the key or path: the manifests of the training and probe
shard sets (read, and matched to the model's audio front end), the model preset, the batch
arithmetic at this world size, an epoch that holds at least one optimizer step, a writable
checkpoint folder, and a checkpoint to resume from that was written for this model. Every rank runs them on its own; they read the same inputs, so all ranks
fail alike and rank 0 says why.
"""

from __future__ import annotations

import os
from dataclasses import replace
from pathlib import Path

from pipeline.config import Config, ConfigError, DataConfig, EngineSpec, to_dict
from pipeline.data.loader import epoch_plan, shard_loader
from pipeline.data.mixture import read_sets
from pipeline.engine.checkpoint import check_writable, resume_candidates
from pipeline.engine.choice import model_difference, newest_intact, stored_config
from pipeline.engine.distributed import accumulation_steps
from pipeline.engine.safeload import CorruptCheckpoint
from pipeline.engine.schedule import scaled_lr


def probe_data(cfg: Config) -> DataConfig:
    """The data config of the kNN probe's labelled set (every sample once: padded, in order)."""
    return replace(cfg.data, shards=cfg.probe.shards, remainder="pad", repeat=1.0)


def steps_per_epoch(spec: EngineSpec, batches: int, world_size: int) -> tuple[int, int]:
    """(micro-batches per optimizer step, optimizer steps per epoch) for ``batches`` per rank
    per epoch, both at least 1 — the engine's arithmetic, also checked before DeepSpeed starts."""
    accum = accumulation_steps(spec, world_size)
    steps = batches // accum
    if steps == 0:
        raise ValueError(
            f"{spec.data_key}: {batches} batches per rank per epoch is fewer than one "
            f"optimizer step ({accum} micro-batches); use more data or a smaller {spec.batch_key}"
        )
    return accum, steps


def preflight(cfg: Config) -> None:
    """Fail now, with one line, on what would otherwise fail after DeepSpeed start-up."""
    rank, world_size = int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))
    mcfg = cfg.model.architecture()
    loader = shard_loader(cfg.data, mcfg, rank, world_size, cfg.train.seed)
    try:
        steps_per_epoch(cfg.engine_spec(), len(loader), world_size)
    finally:
        loader.close()
    if cfg.probe.shards:
        probe = probe_data(cfg)
        shard_loader(
            probe, mcfg, rank, world_size, cfg.train.seed, train=False, labels=True
        ).close()
    check_writable(Path(cfg.train.output_dir) / "checkpoints")
    check_resume_model(cfg)


def check_resume_model(cfg: Config) -> None:
    """ConfigError when the checkpoint resume would load was written for another model (its
    stored config against ``model.*``): said before any checkpoint is tried, so that none is
    reported as skipped (and deleted by a user who believes it damaged)."""
    candidates = resume_candidates(cfg.train.resume, Path(cfg.train.output_dir) / "checkpoints")
    if not candidates:
        return
    try:
        tag_dir, stored = newest_intact(candidates, stored_config, warn=False)
    except CorruptCheckpoint:
        return  # resume names each damaged file
    difference = model_difference(stored.get("model") or {}, to_dict(cfg)["model"])
    if difference:
        raise ConfigError(
            f"train.resume: {tag_dir} {difference}; resume with the same model.* settings, or "
            "start a new run (another train.output_dir, or train.resume=never)"
        )


def dry_run(spec: EngineSpec, optim, data: DataConfig, seed: int, world_size: int) -> dict:
    """The values a launch at ``world_size`` would derive (``--dry-run``): accumulation,
    effective batch, LR and — when the training manifest is readable — steps per epoch."""
    accum = accumulation_steps(spec, world_size)
    effective = spec.batch_size * world_size * accum
    derived = {
        "world_size": world_size,
        "accumulation_steps": accum,
        "effective_batch_size": effective,
        "lr": scaled_lr(optim, effective),
        "steps_per_epoch": None,
    }
    try:
        plan = epoch_plan(data, read_sets(data), seed, world_size, train=True)
        derived["steps_per_epoch"] = plan.batches // accum
    except (OSError, ValueError) as e:
        derived["steps_per_epoch_unknown"] = str(e).splitlines()[0]
    return derived
