"""Training loop shared by the trainable evaluations (linear probe, fine-tune, dense tasks).

One optimizer step = ``accum`` micro-batches on a DeepSpeed engine (ZeRO 0–3); the LR is set
from the fractional epoch before every step (warm-up + cosine, per-group ``lr_scale``). Each
epoch ends with a checkpoint (model, optimizer, step, loader position, RNG, MLflow run id) and,
every ``eval.every_epochs`` and at the end, an evaluation; so ``kill -9`` then the same command
continues the same curve in the same MLflow run (``train.resume=auto``).

A task supplies ``step_fn(module, batch, generator) -> loss`` and
``evaluate_fn(final: bool) -> metrics`` (run on every rank; rank 0's metrics are logged).
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable
from pathlib import Path

import torch
import torch.distributed as dist
import yaml
from torch import nn

from pipeline import checkpoint as C
from pipeline import distributed as D
from pipeline.config import redacted_config
from pipeline.eval.config import EvalConfig
from pipeline.eval.optim import LARS, apply_lr, schedule
from pipeline.loader import ShardLoader
from pipeline.tracking import Tracker

log = logging.getLogger("avfusion.eval")

StepFn = Callable[[nn.Module, dict, torch.Generator], torch.Tensor]
EvaluateFn = Callable[[bool], dict]


class EvalLoop:
    def __init__(
        self,
        cfg: EvalConfig,
        info: D.DistInfo,
        model: nn.Module,
        groups: list[dict],
        loader: ShardLoader,
        tags: dict[str, str],
    ):
        self.cfg, self.info, self.loader = cfg, info, loader
        self.accum = D.accumulation_steps(cfg, info.world_size)
        self.steps_per_epoch = len(loader) // self.accum
        if self.steps_per_epoch == 0:
            raise ValueError(
                f"data.train: {len(loader)} batches per rank per epoch is fewer than one optimizer "
                f"step ({self.accum} micro-batches); use more data or a smaller batch"
            )
        self.effective_batch = cfg.data.batch_size * info.world_size * self.accum
        o = cfg.optim
        lr = o.lr if o.lr is not None else o.blr * self.effective_batch / 256
        self.schedule = schedule(lr, o.epochs, o.warmup_epochs)
        optimizer = (
            LARS(
                groups,
                lr=lr,
                weight_decay=o.weight_decay,
                momentum=o.momentum,
                trust_coefficient=o.trust_coefficient,
            )
            if o.name == "lars"
            else torch.optim.AdamW(groups, lr=lr, betas=o.betas, weight_decay=o.weight_decay)
        )
        self.engine, self.optimizer = D.build_engine(model, optimizer, cfg, info.world_size)
        self.dtype = D.engine_dtype(cfg)
        self.step = self.epoch = self.step_in_epoch = 0
        self.out = Path(cfg.train.output_dir)
        run_id = self._resume()
        if info.is_main:
            self.out.mkdir(parents=True, exist_ok=True)
        self.tracker = Tracker.from_config(cfg.tracking, info.is_main, run_id, self.out, tags)
        if info.is_main:
            (self.out / "config.yaml").write_text(
                yaml.safe_dump(redacted_config(cfg), sort_keys=False)
            )
            self.tracker.log_params(
                redacted_config(cfg)
                | {
                    "derived": {
                        "world_size": info.world_size,
                        "accumulation_steps": self.accum,
                        "lr": lr,
                        "effective_batch_size": self.effective_batch,
                        "steps_per_epoch": self.steps_per_epoch,
                    }
                }
            )
            self.tracker.log_artifact(self.out / "config.yaml")

    @property
    def module(self) -> nn.Module:
        return self.engine.module

    # -- loop ------------------------------------------------------------------------------
    def fit(self, step_fn: StepFn, evaluate_fn: EvaluateFn) -> dict:
        """Train to ``optim.epochs`` (or ``train.max_steps``), then the final evaluation."""
        cfg = self.cfg
        try:
            while self.epoch < cfg.optim.epochs and not self._done():
                self._train_epoch(step_fn)
                if self.step_in_epoch < self.steps_per_epoch:
                    break  # max_steps inside the epoch
                self.epoch, self.step_in_epoch = self.epoch + 1, 0
                self.save()
                if self.epoch % cfg.eval.every_epochs == 0 and self.epoch < cfg.optim.epochs:
                    self.log_metrics({f"eval/{k}": v for k, v in evaluate_fn(False).items()})
            self.save()
            final = evaluate_fn(True)
            self.log_metrics({f"eval/{k}": v for k, v in final.items()})
        except BaseException:
            self.tracker.close("FAILED")
            raise
        finally:
            self.loader.close()
        self.tracker.close("FINISHED")
        return final

    def _done(self) -> bool:
        return self.cfg.train.max_steps is not None and self.step >= self.cfg.train.max_steps

    def _train_epoch(self, step_fn: StepFn) -> None:
        if self.step_in_epoch == 0:
            self.loader.set_epoch(self.epoch)
        batches, window, t0 = (
            iter(self.loader),
            torch.zeros(2, dtype=torch.float64),
            time.perf_counter(),
        )
        while self.step_in_epoch < self.steps_per_epoch and not self._done():
            lr = apply_lr(
                self.optimizer,
                self.schedule,
                self.epoch + self.step_in_epoch / self.steps_per_epoch,
            )
            for micro in range(self.accum):
                window += torch.tensor(
                    [self._micro_step(step_fn, next(batches), micro), 1.0], dtype=torch.float64
                )
            self.step += 1
            self.step_in_epoch += 1
            if (
                self.step % self.cfg.train.log_every == 0
                or self.step_in_epoch == self.steps_per_epoch
            ):
                self.log_metrics(
                    {
                        "train/loss": window[0].item() / window[1].item(),
                        "train/lr": lr,
                        "train/epoch": self.epoch + self.step_in_epoch / self.steps_per_epoch,
                        "train/samples_per_s": window[1].item()
                        * self.cfg.data.batch_size
                        * self.info.world_size
                        / (time.perf_counter() - t0),
                    }
                )
                window, t0 = torch.zeros(2, dtype=torch.float64), time.perf_counter()
            if self.cfg.train.save_every_steps and self.step % self.cfg.train.save_every_steps == 0:
                self.save()

    def _micro_step(self, step_fn: StepFn, batch: dict, micro: int) -> float:
        """Forward/backward one micro-batch; returns the loss averaged over ranks."""
        info = self.info
        seed = (
            self.cfg.train.seed * 1_000_003
            + (self.step * self.accum + micro) * info.world_size
            + info.rank
        )
        gen = torch.Generator().manual_seed(seed)
        loss = step_fn(self.engine, batch, gen)
        mean = loss.detach().float().reshape(1).clone()
        dist.all_reduce(mean)
        if not torch.isfinite(mean).all():
            raise FloatingPointError(
                f"non-finite loss at step {self.step + 1} (epoch {self.epoch}) on rank "
                f"{info.rank}; batch keys: {list(batch['key'])}"
            )
        self.engine.backward(loss)
        self.engine.step()
        return mean.item() / info.world_size

    def log_metrics(self, metrics: dict[str, float]) -> None:
        if not self.info.is_main:
            return
        self.tracker.log_metrics(metrics, step=self.step)
        with open(self.out / "metrics.jsonl", "a") as f:
            f.write(json.dumps({"step": self.step, **metrics}) + "\n")
        log.info("step %d: %s", self.step, ", ".join(f"{k} {v:.4g}" for k, v in metrics.items()))

    def log_artifact(self, path: Path, artifact_path: str | None = None) -> None:
        self.tracker.log_artifact(path, artifact_path)

    # -- checkpoints -----------------------------------------------------------------------
    def save(self) -> None:
        tag, root = C.tag_for(self.step), self.out / "checkpoints"
        if (root / "latest").is_file() and (root / "latest").read_text().strip() == tag:
            return  # this step is already saved
        state = {
            "step": self.step,
            "epoch": self.epoch,
            "step_in_epoch": self.step_in_epoch,
            "config": redacted_config(self.cfg),
            "loader": C.gather_objects(self.loader.state_dict()),
            "rng": C.gather_objects(C.rng_state()),
            "mlflow_run_id": C.gather_objects(self.tracker.run_id)[0],
        }
        self.engine.save_checkpoint(str(root), tag=tag, client_state=state)
        dist.barrier()
        if self.info.is_main:
            C.prune_checkpoints(root, self.cfg.train.keep_last)

    def _resume(self) -> str | None:
        candidates = C.resume_candidates(self.cfg.train.resume, self.out / "checkpoints")
        if not candidates:
            return None
        path = candidates[0]
        _, state = self.engine.load_checkpoint(str(path.parent), tag=path.name)
        if state is None:
            raise RuntimeError(f"train.resume: could not load the checkpoint in {path}")
        self.step, self.epoch, self.step_in_epoch = (
            state["step"],
            state["epoch"],
            state["step_in_epoch"],
        )
        same_world = len(state["loader"]) == self.info.world_size
        self.loader.load_state_dict(state["loader"][self.info.rank if same_world else 0])
        if same_world:
            C.set_rng_state(state["rng"][self.info.rank])
        log.info("resumed from %s at step %d (epoch %d)", path, self.step, self.epoch)
        return state.get("mlflow_run_id")
