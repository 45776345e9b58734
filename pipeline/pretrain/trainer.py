"""AVMAE pretraining as a task of the engine (:mod:`pipeline.engine.loop`).

The model is the AVMAE of ``cfg.model`` (towers from the user's MAE / AudioMAE files get the
recipe's LR ramp), the optimizer the recipe's AdamW groups, the step one masked forward whose two
losses (image, audio) the engine logs; each epoch end may run the kNN probe, and reconstruction
figures are drawn every ``train.recon_every_steps`` and at the end.
"""

from __future__ import annotations

import contextlib
import json
import logging
from pathlib import Path

import torch

from model import AVMAE
from model.checkpoints import load_tower_weights
from pipeline.config import Config, redacted_config
from pipeline.data.loader import shard_loader
from pipeline.engine.checkpoint import gather_objects, tag_for
from pipeline.engine.distributed import DistInfo, engine_dtype
from pipeline.engine.loop import Engine, Task
from pipeline.engine.output import RunFolder
from pipeline.engine.preflight import probe_data
from pipeline.engine.schedule import LRSchedule, build_optimizer
from pipeline.pretrain.figures import save_reconstruction
from pipeline.pretrain.probe import extract_features, knn_top1, merge_features

log = logging.getLogger("avfusion.train")


def build_model(cfg: Config) -> tuple[AVMAE, dict[str, set[str]]]:
    """The AVMAE of ``cfg.model`` and its pretrained (LR-ramped) tower parameter names."""
    model = AVMAE(cfg.model.architecture())
    load_tower_weights(
        model,
        image_path=cfg.model.init_image,
        audio_path=cfg.model.init_audio,
        trust_pickle=cfg.model.trust_pickle,
    )
    towers = model.tower_parameter_names()
    pretrained = {
        t: towers[t]
        for t, path in (("image", cfg.model.init_image), ("audio", cfg.model.init_audio))
        if path
    }
    return model, pretrained


class Pretraining(Task):
    """AVMAE: masked image + audio reconstruction; losses ``(loss_image, loss_audio)``."""

    losses = ("loss_image", "loss_audio")

    def __init__(self, cfg: Config, info: DistInfo):
        self.cfg, self.info = cfg, info
        torch.manual_seed(cfg.train.seed)
        self._model, self.pretrained = build_model(cfg)
        self.mcfg = self._model.config
        self.dtype = engine_dtype(cfg.engine_spec())
        self.last: tuple[dict, object] | None = None  # (batch, output) for the figures

    def model(self) -> AVMAE:
        return self._model

    def loader(self):
        c, i = self.cfg, self.info
        return shard_loader(c.data, self.mcfg, i.rank, i.world_size, c.train.seed, i.device)

    def schedule(self, effective_batch: int) -> LRSchedule:
        return LRSchedule.from_config(self.cfg.optim, effective_batch)

    def optimizer(self, model, lr: float):
        return build_optimizer(model, self.cfg.optim, self.pretrained, lr, self.info.device)

    def step(self, engine, batch: dict, gen: torch.Generator):
        """image ``[B, 3, S, S]``, audio ``[B, 1, F, T]`` → (L_image + L_audio, both)."""
        image = batch["image"].to(self.info.device, self.dtype, non_blocking=True)
        audio = batch["audio"].to(self.info.device, self.dtype, non_blocking=True)
        out = engine(image, audio, generator=gen)
        self.last = batch, out
        return out.loss, torch.stack([out.loss_image.detach(), out.loss_audio.detach()])

    def after_step(self, engine: Engine) -> None:
        every = self.cfg.train.recon_every_steps
        if every and engine.progress.step % every == 0:
            self.reconstruction_figure(engine)

    def after_epoch(self, engine: Engine) -> None:
        epoch, every = engine.progress.epoch, self.cfg.probe.every_epochs
        if self.cfg.probe.shards and (
            epoch == 1 or epoch % every == 0 or epoch == self.cfg.optim.epochs
        ):
            self.probe(engine)

    # -- probe and figures -------------------------------------------------------------------
    def probe(self, engine: Engine) -> dict[str, float] | None:
        """kNN top-1 of the unmasked encoder on ``probe.shards`` (all ranks; rank 0 logs)."""
        import deepspeed

        cfg, info = self.cfg, self.info
        loader = shard_loader(
            probe_data(cfg),
            self.mcfg,
            info.rank,
            info.world_size,
            cfg.train.seed,
            info.device,
            train=False,
            labels=True,
        )
        gather = (
            deepspeed.zero.GatheredParameters(list(engine.module.parameters()))
            if cfg.train.zero_stage == 3
            else contextlib.nullcontext()
        )
        try:
            with gather:
                feats = extract_features(
                    engine.module,
                    loader,
                    info.device,
                    self.dtype,
                    max_samples=-(-cfg.probe.max_samples // info.world_size),
                )
        finally:
            loader.close()
        parts = gather_objects(feats)
        if not info.is_main:
            return None
        acc = knn_top1(merge_features(parts, cfg.probe.max_samples))
        metrics = {
            "probe/knn_top1": acc["all"],
            **{f"probe/knn_top1_{m}": acc[m] for m in ("image", "audio", "fusion")},
        }
        engine.log(metrics | {"probe": acc}, f"kNN probe at epoch {engine.progress.epoch}: {acc}")
        return acc

    def reconstruction_figure(self, engine: Engine) -> None:
        if not self.info.is_main or self.last is None:
            return
        batch, out = self.last
        path = engine.folder.out / "reconstructions" / f"{tag_for(engine.progress.step)}.png"
        save_reconstruction(
            path,
            engine.module,
            batch["image"],
            batch["audio"],
            out,
            self.mcfg.norm_pix_loss,
            self.mcfg.image.mean,
            self.mcfg.image.std,
        )
        engine.folder.artifact(path, "reconstructions")


def pretrain(cfg: Config, info: DistInfo) -> dict:
    """Run pretraining to the end: the engine's loop, then the last reconstruction figure."""
    task = Pretraining(cfg, info)
    folder = RunFolder(cfg.train.output_dir, redacted_config(cfg), cfg.tracking, info, tags={})
    engine = Engine(cfg.engine_spec(), info, task, folder)
    if info.is_main:  # the training set's manifest (a mixture: every set's, with its path)
        sets = engine.loader.sets
        content = (
            sets.manifests[0]
            if len(sets.paths) == 1
            else {
                "sets": [
                    {"path": p, "manifest": m}
                    for p, m in zip(sets.paths, sets.manifests, strict=True)
                ]
            }
        )
        manifest = Path(cfg.train.output_dir) / "manifest.json"
        manifest.write_text(json.dumps(content, indent=1))
        folder.artifact(manifest)
    last = engine.fit()
    task.reconstruction_figure(engine)
    folder.close("FINISHED")
    return last
