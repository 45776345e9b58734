"""AVMAE pretraining loop on a DeepSpeed engine.

One optimizer step = ``accum`` micro-batches (DeepSpeed averages them). The LR is set from the
fractional epoch before every optimizer step. Masks come from a generator seeded by
(seed, micro-step, rank), so a resumed run draws the same masks as an uninterrupted one.

The step never waits for the device: losses accumulate on it, and the host reads them (one
all-reduce) only on log steps and before a checkpoint is written — which is also where a
non-finite loss stops every rank.
"""

from __future__ import annotations

import contextlib
import json
import logging
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import yaml

from model import AVMAE
from model.checkpoints import load_tower_weights
from pipeline.checkpoint import (
    Checkpointer,
    check_writable,
    gather_objects,
    resume_candidates,
    tag_for,
)
from pipeline.config import Config, redacted_config
from pipeline.distributed import DistInfo, build_engine, engine_dtype
from pipeline.figures import save_reconstruction
from pipeline.preflight import probe_data, shard_loader, steps_per_epoch
from pipeline.probe import extract_features, knn_top1, merge_features
from pipeline.report import RunReport
from pipeline.schedule import LRSchedule, build_optimizer
from pipeline.tracking import Tracker
from pipeline.trainstep import TrainStep

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


def compile_blocks(model: torch.nn.Module, mode: str) -> None:
    """``torch.compile`` every transformer block in place (regional compilation; keys unchanged).

    NOTE: per block rather than the whole model: the masking (argsort with a generator, gathers
    of data-dependent order) and DeepSpeed's module hooks stay eager, and each block is compiled
    once and reused (the blocks of a ModuleList share code and shapes). The masked token counts
    are fixed per preset, so shapes are static; ``train.compile_mode=reduce-overhead`` adds CUDA
    graphs (see docs/BENCHMARKS.md for when it pays).
    """
    for blocks in [m for m in model.modules() if isinstance(m, torch.nn.ModuleList)]:
        for block in blocks:
            block.compile(mode=None if mode == "default" else mode, dynamic=False)


@dataclass
class Progress:
    """Where training stands; every other counter is derived from these."""

    step: int = 0  # optimizer steps done
    epoch: int = 0  # current epoch
    epoch_start: int = 0  # ``step`` when the current epoch began
    samples_seen: int = 0

    @property
    def step_in_epoch(self) -> int:
        return self.step - self.epoch_start

    @classmethod
    def from_state(cls, state: dict) -> Progress:
        """From a checkpoint's client state (older ones hold ``step_in_epoch``)."""
        start = state.get("epoch_start", state["step"] - state.get("step_in_epoch", 0))
        return cls(state["step"], state["epoch"], start, state["samples_seen"])


class Trainer:
    def __init__(self, cfg: Config, info: DistInfo):
        self.cfg, self.info = cfg, info
        torch.manual_seed(cfg.train.seed)
        model, pretrained = build_model(cfg)
        self.mcfg = model.config
        self.loader = shard_loader(
            cfg, self.mcfg, cfg.data, info.rank, info.world_size, info.device
        )
        self.accum, self.steps_per_epoch = steps_per_epoch(cfg, self.loader, info.world_size)
        self.effective_batch = cfg.data.batch_size * info.world_size * self.accum
        self.schedule = LRSchedule.from_config(cfg.optim, self.effective_batch)
        self.out = Path(cfg.train.output_dir)
        check_writable(self.out / "checkpoints")  # again: the folder may have changed since
        optimizer = build_optimizer(model, cfg.optim, pretrained, self.schedule.lr, info.device)
        if cfg.train.compile:
            compile_blocks(model, cfg.train.compile_mode)
        self.engine, self.optimizer = build_engine(model, optimizer, cfg, info.world_size)
        self.checkpoints = Checkpointer(
            self.engine, self.out / "checkpoints", cfg.train.keep_last, info.rank, info.world_size
        )
        self.progress, run_id = self._resume()
        self.steps = TrainStep(
            self.engine,
            seed=cfg.train.seed,
            accum=self.accum,
            rank=info.rank,
            world_size=info.world_size,
            device=info.device,
            dtype=engine_dtype(cfg),
        )
        self.tracker = Tracker.from_config(cfg.tracking, info.is_main, run_id, self.out)
        epochs_steps = cfg.optim.epochs * self.steps_per_epoch
        self.report = RunReport(
            min(epochs_steps, cfg.train.max_steps or epochs_steps), self.progress.step
        )
        if info.is_main:
            self._start_run()

    # -- set-up ----------------------------------------------------------------------------
    def _start_run(self) -> None:
        self.out.mkdir(parents=True, exist_ok=True)
        (self.out / "config.yaml").write_text(
            yaml.safe_dump(redacted_config(self.cfg), sort_keys=False)
        )
        (self.out / "manifest.json").write_text(json.dumps(self.loader.manifest, indent=1))
        self.tracker.log_params(
            redacted_config(self.cfg)
            | {
                "derived": {
                    "world_size": self.info.world_size,
                    "accumulation_steps": self.accum,
                    "effective_batch_size": self.effective_batch,
                    "lr": self.schedule.lr,
                    "steps_per_epoch": self.steps_per_epoch,
                    "num_samples": self.loader.num_samples,
                }
            }
        )
        self.tracker.log_artifact(self.out / "config.yaml")
        self.tracker.log_artifact(self.out / "manifest.json")
        self.report.banner(
            samples=self.loader.num_samples,
            steps_per_epoch=self.steps_per_epoch,
            epochs=self.cfg.optim.epochs,
            batch=self.cfg.data.batch_size,
            world=self.info.world_size,
            accum=self.accum,
            output_dir=str(self.out),
            tracking=self.tracker.uri if self.tracker.enabled else "off",
        )

    def _resume(self) -> tuple[Progress, str | None]:
        candidates = resume_candidates(self.cfg.train.resume, self.checkpoints.root)
        if not candidates:
            return Progress(), None
        state = self.checkpoints.load(candidates, self.loader)
        progress = Progress.from_state(state)
        if not state["same_world"]:
            # NOTE: a new world size restarts the epoch's sample stream at the saved sample count
            # (see pipeline/loader.py); steps per epoch change, so the position is re-derived.
            done = min(
                self.loader.state_dict().get("batches", 0) // self.accum, self.steps_per_epoch
            )
            progress.epoch_start = progress.step - done
        return progress, state.get("mlflow_run_id")

    # -- loop ------------------------------------------------------------------------------
    def fit(self) -> dict:
        """Train to ``optim.epochs`` (or ``train.max_steps``); returns the last logged metrics."""
        p, last = self.progress, {}
        try:
            while p.epoch < self.cfg.optim.epochs and not self._done():
                if p.step_in_epoch == 0:
                    self.loader.set_epoch(p.epoch)
                batches = iter(self.loader)
                while p.step_in_epoch < self.steps_per_epoch and not self._done():
                    lr = self.schedule.apply(
                        self.optimizer, p.epoch + p.step_in_epoch / self.steps_per_epoch
                    )
                    for micro in range(self.accum):
                        batch = self._next(batches)
                        self._last = batch, self.steps.micro(batch, p.step, micro)
                    p.step += 1
                    p.samples_seen += self.effective_batch
                    last = self._after_step(lr) or last
                if p.step_in_epoch >= self.steps_per_epoch:
                    self._end_epoch()
            self._save()
            self._reconstruction_figure()
        except BaseException:
            self.tracker.close("FAILED")
            raise
        finally:
            self.loader.close()
        self.tracker.close("FINISHED")
        if self.info.is_main:
            self.report.summary(
                p.step,
                p.epoch + p.step_in_epoch / self.steps_per_epoch,
                (p.step - self.report.start_step) * self.effective_batch,
                last,
                str(self.out),
            )
        return last

    def _done(self) -> bool:
        return (
            self.cfg.train.max_steps is not None and self.progress.step >= self.cfg.train.max_steps
        )

    def _next(self, batches) -> dict:
        t0 = time.perf_counter()
        batch = next(batches)
        self.steps.window.data_s += time.perf_counter() - t0
        return batch

    def _after_step(self, lr: float) -> dict:
        cfg, p = self.cfg, self.progress
        metrics = {}
        if (
            p.step % cfg.train.log_every == 0
            or self._done()
            or p.step_in_epoch == self.steps_per_epoch
        ):
            metrics = self._log_window(lr)
        if cfg.train.save_every_steps and p.step % cfg.train.save_every_steps == 0:
            self._save()
        if cfg.train.recon_every_steps and p.step % cfg.train.recon_every_steps == 0:
            self._reconstruction_figure()
        return metrics

    def _log_window(self, lr: float) -> dict:
        p, info = self.progress, self.info
        loss_image, loss_audio, _, data_s, errors = self.steps.totals(
            sum(self.loader.error_counts().values()), self.progress.epoch
        )
        n = max(self.steps.window.count, 1) * info.world_size  # loss sums are over ranks
        elapsed = time.perf_counter() - self.steps.window.t0
        metrics = {
            "train/loss_image": loss_image / n,
            "train/loss_audio": loss_audio / n,
            "train/lr": lr,
            "train/epoch": p.epoch + p.step_in_epoch / self.steps_per_epoch,
            "train/samples_per_s": self.steps.window.count
            * self.cfg.data.batch_size
            * info.world_size
            / elapsed,
            "train/data_wait_frac": data_s / info.world_size / elapsed,
            "data/errors": errors,
        }
        metrics["train/loss"] = metrics["train/loss_image"] + metrics["train/loss_audio"]
        if info.is_main:
            self.tracker.log_metrics(metrics, step=p.step)
            self._append_metrics(metrics)
            log.info(
                "step %s epoch %.2f loss %.4f (image %.4f audio %.4f) lr %.3g %.1f samples/s",
                self.report.eta(p.step),
                metrics["train/epoch"],
                metrics["train/loss"],
                metrics["train/loss_image"],
                metrics["train/loss_audio"],
                lr,
                metrics["train/samples_per_s"],
            )
            self.report.data_errors(int(errors), self.loader.error_counts())
        self.steps.window.reset()
        return metrics

    def _end_epoch(self) -> None:
        p = self.progress
        p.epoch, p.epoch_start = p.epoch + 1, p.step
        self._save()
        every = self.cfg.probe.every_epochs
        if self.cfg.probe.shards and (
            p.epoch == 1 or p.epoch % every == 0 or p.epoch == self.cfg.optim.epochs
        ):
            self.probe()

    # -- probe, checkpoints, figures -------------------------------------------------------
    def probe(self) -> dict[str, float] | None:
        import deepspeed

        loader = shard_loader(
            self.cfg,
            self.mcfg,
            probe_data(self.cfg),
            self.info.rank,
            self.info.world_size,
            self.info.device,
            train=False,
            labels=True,
        )
        gather = (
            deepspeed.zero.GatheredParameters(list(self.engine.module.parameters()))
            if self.cfg.train.zero_stage == 3
            else contextlib.nullcontext()
        )
        try:
            with gather:
                feats = extract_features(
                    self.engine.module,
                    loader,
                    self.info.device,
                    self.steps.dtype,
                    max_samples=-(-self.cfg.probe.max_samples // self.info.world_size),
                )
        finally:
            loader.close()
        parts = gather_objects(feats)
        if not self.info.is_main:
            return None
        acc = knn_top1(merge_features(parts, self.cfg.probe.max_samples))
        self.tracker.log_metrics(
            {
                "probe/knn_top1": acc["all"],
                **{f"probe/knn_top1_{m}": acc[m] for m in ("image", "audio", "fusion")},
            },
            step=self.progress.step,
        )
        self._append_metrics({"probe": acc})
        log.info("kNN probe at epoch %d: %s", self.progress.epoch, acc)
        return acc

    def _append_metrics(self, record: dict) -> None:
        """One line of ``output_dir/metrics.jsonl`` (main rank): what was logged at this step."""
        with open(self.out / "metrics.jsonl", "a") as f:
            f.write(json.dumps({"step": self.progress.step, **record}) + "\n")

    def _save(self) -> None:
        """Checkpoint this step; the loss window is checked first (no save after a non-finite loss)."""
        self.steps.totals(sum(self.loader.error_counts().values()), self.progress.epoch)
        self.checkpoints.save(
            self.progress.step,
            {**asdict(self.progress), "config": redacted_config(self.cfg)},
            self.loader,
            self.tracker.run_id,
        )

    def _reconstruction_figure(self) -> None:
        if not self.info.is_main or not hasattr(self, "_last"):
            return
        batch, out = self._last
        path = self.out / "reconstructions" / f"{tag_for(self.progress.step)}.png"
        save_reconstruction(
            path,
            self.engine.module,
            batch["image"],
            batch["audio"],
            out,
            self.mcfg.norm_pix_loss,
            self.mcfg.image.mean,
            self.mcfg.image.std,
        )
        self.tracker.log_artifact(path, "reconstructions")
