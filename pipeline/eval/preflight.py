"""Checks of an evaluation that need no process group, run before DeepSpeed starts (#29.6).

Each failure is one line naming the key or path: the encoder source (there, readable, and an
explicit ``encoder.preset`` that agrees with the config the checkpoint carries), the manifests
of ``data.train`` and ``data.test`` (readable; for classification labelled with one class list,
with class counts where the loss or bias needs them; for a dense task holding the mask or
waveform members it reads), the batch arithmetic at this world size with at least one optimizer
step per epoch, and a writable ``train.output_dir``. Every rank runs them on its own; they read
the same inputs, so all ranks fail alike and rank 0 says why.
"""

from __future__ import annotations

import os
from pathlib import Path

from model.presets import AVMAEConfig, ImageSpec, get_frontend
from pipeline.checkpoint import check_writable
from pipeline.config import lookup
from pipeline.distributed import accumulation_steps
from pipeline.eval.config import EvalConfig
from pipeline.eval.encoder import encoder_config
from pipeline.loader import ShardLoader, build_loader
from pipeline.shardio import read_manifest

# dense task → the (data key, masks, waveform) members it reads
DENSE_MEMBERS = {
    "avs": (("data.train", True, False), ("data.test", True, False)),
    "separation": (("data.train", False, True), ("data.test", False, True)),
    "localization": (("data.test", True, False),),
}


def preflight(cfg: EvalConfig) -> None:
    """Fail now, with one line, on what would otherwise fail after DeepSpeed start-up."""
    rank, world_size = int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))
    mcfg = encoder_config(cfg.encoder)
    if cfg.task in DENSE_MEMBERS:
        check_dense_sets(cfg)
    else:
        check_classification_sets(cfg, mcfg, rank, world_size)
    check_writable(Path(cfg.train.output_dir))


def check_dense_sets(cfg: EvalConfig) -> None:
    """Each set the task reads declares the members it needs (localization trained on masks
    reads them in ``data.train`` too)."""
    from pipeline.eval.dense_data import require_members

    needs = DENSE_MEMBERS[cfg.task]
    if cfg.task == "localization" and cfg.localization.trained == "masks":
        needs += (("data.train", True, False),)
    for key, masks, waveform in needs:
        require_members(lookup(cfg, key), masks=masks, waveform=waveform)


def check_classification_sets(
    cfg: EvalConfig, mcfg: AVMAEConfig | None, rank: int, world_size: int
) -> None:
    """Both sets labelled with one class list (and class counts where used); at least one
    optimizer step per epoch at this world size."""
    from pipeline.eval.classification import (
        check_label_sets,
        class_frequencies,
        needs_frequencies,
    )

    accum = accumulation_steps(cfg, world_size)
    train = _loader(cfg, mcfg, cfg.data.train, rank, world_size, train=True)
    test = _loader(cfg, mcfg, cfg.data.test, rank, world_size, train=False)
    batches = len(train)
    train.close()
    test.close()
    check_label_sets(train.manifest, test.manifest, cfg.data.train, cfg.data.test)
    if needs_frequencies(cfg):
        class_frequencies(train.manifest, cfg.data.train)
    if batches < accum:
        raise ValueError(
            f"data.train: {batches} batches per rank per epoch is fewer than one optimizer "
            f"step ({accum} micro-batches); use more data or a smaller batch"
        )


def _loader(
    cfg: EvalConfig, mcfg: AVMAEConfig | None, shards: str, rank: int, world: int, train: bool
) -> ShardLoader:
    """The labelled loader the evaluation builds (manifest read and checked, no worker started);
    without the encoder's config (an official file, preset detected later) the set's own audio
    front end."""
    audio = (
        mcfg.audio_frontend
        if mcfg is not None
        else read_manifest(shards).get("preset", {}).get("audio", {}).get("name", "deepavfusion")
    )
    return build_loader(
        cfg.data.loader(shards, train),
        audio=get_frontend(audio),
        image=mcfg.image if mcfg is not None else ImageSpec(),
        rank=rank,
        world_size=world,
        seed=cfg.train.seed,
        train=train,
        labels=True,
    )
