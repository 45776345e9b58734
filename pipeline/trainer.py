"""AVMAE pretraining loop on a DeepSpeed engine.

One optimizer step = ``accum`` micro-batches (DeepSpeed averages them). The LR is set from the
fractional epoch before every optimizer step. Masks come from a generator seeded by
(seed, micro-step, rank), so a resumed run draws the same masks as an uninterrupted one.
"""
from __future__ import annotations

import contextlib
import json
import logging
import time
from dataclasses import replace
from pathlib import Path

import torch
import torch.distributed as dist
import yaml

from model import AVMAE
from model.checkpoints import load_tower_weights
from model.presets import get_frontend
from pipeline import distributed as D
from pipeline.config import Config, to_dict
from pipeline.data import build_loader
from pipeline.figures import save_reconstruction
from pipeline.probe import extract_features, knn_top1, merge_features
from pipeline.schedule import LRSchedule, param_groups
from pipeline.tracking import Tracker
from preprocess.urls import redact_tree

log = logging.getLogger("avfusion.train")


class NonFiniteLoss(FloatingPointError):
    """The loss became NaN/inf; the message names the step and the batch keys."""


def build_model(cfg: Config) -> tuple[AVMAE, dict[str, set[str]]]:
    """The AVMAE of ``cfg.model`` and its pretrained (LR-ramped) tower parameter names."""
    model = AVMAE(cfg.model.architecture())
    load_tower_weights(model, image_path=cfg.model.init_image, audio_path=cfg.model.init_audio,
                       trust_pickle=cfg.model.trust_pickle)
    towers = model.tower_parameter_names()
    pretrained = {t: towers[t] for t, path in (("image", cfg.model.init_image),
                                               ("audio", cfg.model.init_audio)) if path}
    return model, pretrained


class Trainer:
    def __init__(self, cfg: Config, info: D.DistInfo):
        import deepspeed

        self.cfg, self.info = cfg, info
        torch.manual_seed(cfg.train.seed)
        model, pretrained = build_model(cfg)
        self.mcfg = model.config
        self.loader = self._build_loader(cfg.data, train=True)
        self.accum = D.accumulation_steps(cfg, info.world_size)
        self.steps_per_epoch = len(self.loader) // self.accum
        if self.steps_per_epoch == 0:
            raise ValueError(f"data.shards: {len(self.loader)} batches per rank per epoch is fewer than one "
                             f"optimizer step ({self.accum} micro-batches); use more data or a smaller batch")
        self.effective_batch = cfg.data.batch_size * info.world_size * self.accum
        self.schedule = LRSchedule.from_config(cfg.optim, self.effective_batch)
        optimizer = torch.optim.AdamW(param_groups(model, cfg.optim.weight_decay, pretrained),
                                      lr=self.schedule.lr, betas=cfg.optim.betas)
        self.engine, self.optimizer, _, _ = deepspeed.initialize(
            model=model, optimizer=optimizer, config=D.deepspeed_config(cfg, info.world_size))
        self.dtype = D.engine_dtype(cfg)
        self.step = self.epoch = self.step_in_epoch = self.samples_seen = 0
        run_id = self._resume()
        self.out = Path(cfg.train.output_dir)
        self.tracker = Tracker(cfg.tracking.uri, cfg.tracking.experiment, cfg.tracking.run_name,
                               enabled=info.is_main and cfg.tracking.enabled, run_id=run_id,
                               system_metrics=cfg.tracking.system_metrics)
        if info.is_main:
            self._start_run()

    # -- set-up ----------------------------------------------------------------------------
    def _build_loader(self, data, train: bool, labels: bool = False):
        """This rank's loader over ``data.shards`` with the model preset's audio/image spec."""
        return build_loader(data, audio=get_frontend(self.mcfg.audio_frontend), image=self.mcfg.image,
                            rank=self.info.rank, world_size=self.info.world_size,
                            seed=self.cfg.train.seed, train=train, labels=labels, device=self.info.device)

    def _start_run(self) -> None:
        self.out.mkdir(parents=True, exist_ok=True)
        (self.out / "config.yaml").write_text(yaml.safe_dump(redact_tree(to_dict(self.cfg)), sort_keys=False))
        (self.out / "manifest.json").write_text(json.dumps(self.loader.manifest, indent=1))
        self.tracker.log_params(to_dict(self.cfg) | {"derived": {
            "world_size": self.info.world_size, "accumulation_steps": self.accum,
            "effective_batch_size": self.effective_batch, "lr": self.schedule.lr,
            "steps_per_epoch": self.steps_per_epoch, "num_samples": self.loader.num_samples}})
        self.tracker.log_artifact(self.out / "config.yaml")
        self.tracker.log_artifact(self.out / "manifest.json")

    def _resume(self) -> str | None:
        path = D.resolve_resume(self.cfg)
        if path is None:
            return None
        _, state = self.engine.load_checkpoint(str(path))
        if state is None:
            raise RuntimeError(f"train.resume: could not load the checkpoint in {path}")
        self.step, self.epoch = state["step"], state["epoch"]
        self.step_in_epoch, self.samples_seen = state["step_in_epoch"], state["samples_seen"]
        same_world = len(state["loader"]) == self.info.world_size
        self.loader.load_state_dict(state["loader"][self.info.rank if same_world else 0])
        if same_world:
            D.set_rng_state(state["rng"][self.info.rank])
        else:
            # NOTE: a new world size restarts the epoch's sample stream at the saved sample count
            # (see pipeline/data.py); steps per epoch change, so the position is re-derived.
            self.step_in_epoch = min(self.loader.state_dict().get("batches", 0) // self.accum,
                                     self.steps_per_epoch)
        log.info("resumed from %s at step %d (epoch %d)", path, self.step, self.epoch)
        return state.get("mlflow_run_id")

    # -- loop ------------------------------------------------------------------------------
    def fit(self) -> dict:
        cfg, last = self.cfg, {}
        try:
            while self.epoch < cfg.optim.epochs and not self._done():
                last = self._train_epoch() or last
                if self.step_in_epoch >= self.steps_per_epoch:  # epoch completed
                    self._end_epoch()
            self._save()
            self._reconstruction_figure()
        except BaseException:
            self.tracker.close("FAILED")
            raise
        finally:
            self.loader.close()
        self.tracker.close("FINISHED")
        return last

    def _done(self) -> bool:
        return self.cfg.train.max_steps is not None and self.step >= self.cfg.train.max_steps

    def _train_epoch(self) -> dict:
        if self.step_in_epoch == 0:
            self.loader.set_epoch(self.epoch)
        window = _Window()
        batches = iter(self.loader)
        last = {}
        while self.step_in_epoch < self.steps_per_epoch and not self._done():
            e = self.epoch + self.step_in_epoch / self.steps_per_epoch
            lr = self.schedule.apply(self.optimizer, e)
            for micro in range(self.accum):
                t0 = time.perf_counter()
                batch = next(batches)
                window.data_s += time.perf_counter() - t0
                window.add(self._micro_step(batch, micro))
            self.step += 1
            self.step_in_epoch += 1
            self.samples_seen += self.effective_batch
            last = self._after_step(window, lr)
        return last

    def _micro_step(self, batch: dict, micro: int) -> torch.Tensor:
        """Forward/backward one micro-batch; returns the rank-summed [loss_image, loss_audio]."""
        dev, info = self.info.device, self.info
        mask_seed = self.cfg.train.seed * 1_000_003 + (self.step * self.accum + micro) * info.world_size + info.rank
        gen = torch.Generator(device=dev).manual_seed(mask_seed)
        out = self.engine(batch["image"].to(dev, self.dtype), batch["audio"].to(dev, self.dtype), generator=gen)
        local = torch.stack([out.loss_image.detach().float(), out.loss_audio.detach().float()])
        summed = local.clone()
        dist.all_reduce(summed)  # every rank sees a non-finite loss anywhere → all stop together
        if not torch.isfinite(summed).all():
            where = (f"on rank {info.rank}; batch keys: {list(batch['key'])}"
                     if not torch.isfinite(local).all() else f"on another rank than {info.rank}")
            raise NonFiniteLoss(f"non-finite loss (image={local[0]:.4g}, audio={local[1]:.4g}) at step "
                                f"{self.step + 1} (epoch {self.epoch}) {where}")
        self.engine.backward(out.loss)
        self.engine.step()
        self._last = (batch, out)
        return summed

    def _after_step(self, window: _Window, lr: float) -> dict:
        cfg = self.cfg
        metrics = {}
        if self.step % cfg.train.log_every == 0 or self._done() or self.step_in_epoch == self.steps_per_epoch:
            metrics = self._log_window(window, lr)
        if cfg.train.save_every_steps and self.step % cfg.train.save_every_steps == 0:
            self._save()
        if cfg.train.recon_every_steps and self.step % cfg.train.recon_every_steps == 0:
            self._reconstruction_figure()
        return metrics

    def _log_window(self, window: _Window, lr: float) -> dict:
        totals = torch.tensor([window.data_s, sum(self.loader.error_counts().values())], dtype=torch.float64,
                              device=self.info.device)  # nccl reduces device tensors only
        dist.all_reduce(totals)
        n = max(window.count, 1) * self.info.world_size  # loss sums are already over ranks
        elapsed = time.perf_counter() - window.t0
        metrics = {
            "train/loss_image": window.loss_sum[0].item() / n, "train/loss_audio": window.loss_sum[1].item() / n,
            "train/lr": lr, "train/epoch": self.epoch + self.step_in_epoch / self.steps_per_epoch,
            "train/samples_per_s": window.count * self.cfg.data.batch_size * self.info.world_size / elapsed,
            "train/data_wait_frac": totals[0].item() / self.info.world_size / elapsed,
            "data/errors": totals[1].item(),
        }
        metrics["train/loss"] = metrics["train/loss_image"] + metrics["train/loss_audio"]
        if self.info.is_main:
            self.tracker.log_metrics(metrics, step=self.step)
            self._append_metrics(metrics)
            log.info("step %d epoch %.2f loss %.4f (image %.4f audio %.4f) lr %.3g %.1f samples/s",
                     self.step, metrics["train/epoch"], metrics["train/loss"], metrics["train/loss_image"],
                     metrics["train/loss_audio"], lr, metrics["train/samples_per_s"])
        window.reset()
        return metrics

    def _end_epoch(self) -> None:
        self.epoch += 1
        self.step_in_epoch = 0
        self._save()
        every = self.cfg.probe.every_epochs
        if self.cfg.probe.shards and (self.epoch == 1 or self.epoch % every == 0
                                      or self.epoch == self.cfg.optim.epochs):
            self.probe()

    # -- probe, checkpoints, figures -------------------------------------------------------
    def probe(self) -> dict[str, float] | None:
        import deepspeed

        loader = self._build_loader(replace(self.cfg.data, shards=self.cfg.probe.shards, remainder="pad"),
                                    train=False, labels=True)
        gather = (deepspeed.zero.GatheredParameters(list(self.engine.module.parameters()))
                  if self.cfg.train.zero_stage == 3 else contextlib.nullcontext())
        try:
            with gather:
                feats = extract_features(self.engine.module, loader, self.info.device, self.dtype)
        finally:
            loader.close()
        parts = D.gather_objects(feats)
        if not self.info.is_main:
            return None
        acc = knn_top1(merge_features(parts))
        self.tracker.log_metrics({"probe/knn_top1": acc["all"],
                                  **{f"probe/knn_top1_{m}": acc[m] for m in ("image", "audio", "fusion")}},
                                 step=self.step)
        self._append_metrics({"probe": acc})
        log.info("kNN probe at epoch %d: %s", self.epoch, acc)
        return acc

    def _append_metrics(self, record: dict) -> None:
        """One line of ``output_dir/metrics.jsonl`` (main rank): what was logged at this step."""
        with open(self.out / "metrics.jsonl", "a") as f:
            f.write(json.dumps({"step": self.step, **record}) + "\n")

    def _save(self) -> None:
        tag = D.tag_for(self.step)
        root = D.checkpoint_dir(self.cfg)
        if (root / tag).is_dir() and (root / "latest").is_file() and (root / "latest").read_text().strip() == tag:
            return  # this step is already saved (e.g. max_steps hit at an epoch end)
        state = {
            "step": self.step, "epoch": self.epoch, "step_in_epoch": self.step_in_epoch,
            "samples_seen": self.samples_seen, "config": redact_tree(to_dict(self.cfg)),
            "loader": D.gather_objects(self.loader.state_dict()),
            "rng": D.gather_objects(D.rng_state()),
            "mlflow_run_id": D.gather_objects(self.tracker.run_id)[0],  # the main rank's
        }
        self.engine.save_checkpoint(str(root), tag=tag, client_state=state)
        dist.barrier()
        if self.info.is_main:
            D.prune_checkpoints(root, self.cfg.train.keep_last)

    def _reconstruction_figure(self) -> None:
        if not self.info.is_main or not hasattr(self, "_last"):
            return
        batch, out = self._last
        path = self.out / "reconstructions" / f"{D.tag_for(self.step)}.png"
        save_reconstruction(path, self.engine.module, batch["image"], batch["audio"], out,
                            self.mcfg.norm_pix_loss, self.mcfg.image.mean, self.mcfg.image.std)
        self.tracker.log_artifact(path, "reconstructions")


class _Window:
    """Sums over the micro-steps since the last log line."""

    def __init__(self):
        self.reset()

    def reset(self) -> None:
        self.loss_sum = torch.zeros(2, dtype=torch.float64)
        self.count = 0
        self.data_s = 0.0
        self.t0 = time.perf_counter()

    def add(self, losses: torch.Tensor) -> None:
        self.loss_sum += losses.double().cpu()
        self.count += 1
