"""Checks of an evaluation that need no process group, run before DeepSpeed starts (#29.6).

Each failure is one line naming the key or path: the encoder source (there, readable, and an
explicit ``encoder.preset`` that agrees with the config the checkpoint carries), the manifests
of ``data.train`` and ``data.test`` (readable, every set of a mixture; for classification
labelled with one class list, with class counts where the loss or bias needs them; for a dense
task holding the mask or waveform members it reads), the batch arithmetic at this world size
with at least one optimizer step per epoch, and a writable ``train.output_dir``. Every rank runs
them on its own; they read the same inputs, so all ranks fail alike and rank 0 says why.
"""

from __future__ import annotations

import os
from dataclasses import replace
from pathlib import Path

from pipeline.config import DataConfig
from pipeline.data.loader import epoch_plan
from pipeline.data.mixture import ShardSets, read_sets
from pipeline.engine.checkpoint import check_writable
from pipeline.engine.preflight import steps_per_epoch
from pipeline.eval.config import EvalConfig
from pipeline.eval.dense import require_members
from pipeline.eval.encoder import encoder_config

# dense task → (data key, the optional members it reads)
DENSE_MEMBERS = {
    "avs": (("train", ("mask",)), ("test", ("mask",))),
    "separation": (("train", ("flac",)), ("test", ("flac",))),
    "localization": (("test", ("mask",)),),
}


def preflight(cfg: EvalConfig) -> None:
    """Fail now, with one line, on what would otherwise fail after DeepSpeed start-up."""
    world_size = int(os.environ.get("WORLD_SIZE", 1))
    encoder_config(cfg.encoder)  # the source is there and agrees with encoder.preset
    train, test = read_sets(cfg.data.train), read_sets(cfg.data.test)
    if cfg.task in DENSE_MEMBERS:
        check_dense_sets(cfg, {"train": train, "test": test})
    else:
        check_classification_sets(cfg, train, test)
    check_one_step(cfg, train, world_size)
    check_writable(Path(cfg.train.output_dir))


def check_dense_sets(cfg: EvalConfig, sets: dict[str, ShardSets]) -> None:
    """Each set the task reads declares the members it needs (localization trained on masks
    reads them in ``data.train`` too)."""
    needs = DENSE_MEMBERS[cfg.task]
    if cfg.task == "localization" and cfg.localization.trained == "masks":
        needs += (("train", ("mask",)),)
    for key, members in needs:
        require_members(sets[key], members)


def check_classification_sets(cfg: EvalConfig, train: ShardSets, test: ShardSets) -> None:
    """Both sets labelled with one class list (and class counts where used)."""
    from pipeline.eval.classification import check_label_sets
    from pipeline.eval.targets import class_frequencies, needs_frequencies

    check_label_sets(train.manifests[0], test.manifests[0], train.paths[0], test.paths[0])
    if needs_frequencies(cfg):
        class_frequencies(list(train.manifests), list(train.paths))


def check_one_step(cfg: EvalConfig, train: ShardSets, world_size: int) -> None:
    """At least one optimizer step per epoch at this world size (the engine's arithmetic; the
    AVS training set counts its ``avs.oversample`` passes)."""
    data: DataConfig = cfg.data.train
    if cfg.task == "avs" or (cfg.task == "localization" and cfg.localization.trained == "masks"):
        data = replace(data, repeat=data.repeat * cfg.avs.oversample)
    elif cfg.task == "localization" and cfg.localization.trained == "none":
        return  # training-free: no step
    batches = epoch_plan(data, train, cfg.train.seed, world_size, train=True).batches
    steps_per_epoch(cfg.engine_spec(), batches, world_size)
