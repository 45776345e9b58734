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

from model.presets import AVMAEConfig, get_frontend
from pipeline.checkpoint import CorruptCheckpoint, check_writable, resume_candidates
from pipeline.checkpoint_choice import model_difference, newest_intact, stored_config
from pipeline.config import Config, ConfigError, DataConfig, to_dict
from pipeline.distributed import accumulation_steps
from pipeline.loader import ShardLoader, build_loader


def shard_loader(
    cfg: Config,
    mcfg: AVMAEConfig,
    data: DataConfig,
    rank: int,
    world_size: int,
    device="cpu",
    train: bool = True,
    labels: bool = False,
) -> ShardLoader:
    """The loader of ``rank`` over ``data.shards`` with the model's audio/image spec (reads and
    checks the manifest)."""
    return build_loader(
        data,
        audio=get_frontend(mcfg.audio_frontend),
        image=mcfg.image,
        rank=rank,
        world_size=world_size,
        seed=cfg.train.seed,
        train=train,
        labels=labels,
        device=device,
    )


def probe_data(cfg: Config) -> DataConfig:
    """The data config of the kNN probe's labelled set (every sample once: padded, in order)."""
    return replace(cfg.data, shards=cfg.probe.shards, remainder="pad")


def steps_per_epoch(cfg: Config, loader: ShardLoader, world_size: int) -> tuple[int, int]:
    """(micro-batches per optimizer step, optimizer steps per epoch), both at least 1."""
    accum = accumulation_steps(cfg, world_size)
    steps = len(loader) // accum
    if steps == 0:
        raise ValueError(
            f"data.shards: {len(loader)} batches per rank per epoch is fewer than one "
            f"optimizer step ({accum} micro-batches); use more data or a smaller batch"
        )
    return accum, steps


def preflight(cfg: Config) -> None:
    """Fail now, with one line, on what would otherwise fail after DeepSpeed start-up."""
    rank, world_size = int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))
    mcfg = cfg.model.architecture()
    loader = shard_loader(cfg, mcfg, cfg.data, rank, world_size)
    try:
        steps_per_epoch(cfg, loader, world_size)
    finally:
        loader.close()
    if cfg.probe.shards:
        shard_loader(cfg, mcfg, probe_data(cfg), rank, world_size, train=False, labels=True).close()
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
