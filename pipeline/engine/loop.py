"""The one training loop: every task (pretraining, linear probe, fine-tune, AVS, separation,
localization) is a :class:`Task` run by an :class:`Engine`.

One optimizer step = ``accum`` micro-batches (DeepSpeed averages them); the LR is set from the
fractional epoch before every step; masks and other draws come from a generator seeded by
(seed, micro-step, rank), so a resumed run draws what an uninterrupted one would. The step never
waits for the device (:mod:`pipeline.engine.step`); the host reads the window on log steps and
before a checkpoint, where a non-finite loss stops every rank. Checkpoints (markers, fallback,
safe loading, pruning) are :mod:`pipeline.engine.checkpoint`'s; the journal-backed tracker and
``metrics.jsonl`` are the :class:`~pipeline.engine.output.RunFolder`'s. SIGTERM / SIGINT stop
every rank at the next step boundary with a complete checkpoint (:mod:`pipeline.engine.stop`).
"""

from __future__ import annotations

import logging
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from pipeline.config import EngineSpec
from pipeline.data.loader import ShardLoader
from pipeline.engine.checkpoint import Checkpointer, check_writable, resume_candidates
from pipeline.engine.distributed import DistInfo, build_engine
from pipeline.engine.output import RunFolder
from pipeline.engine.preflight import steps_per_epoch
from pipeline.engine.report import RunReport
from pipeline.engine.schedule import LRSchedule
from pipeline.engine.step import TrainStep
from pipeline.engine.stop import StopSignal

log = logging.getLogger("avfusion.train")


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


class Task:
    """What a task brings to the engine. ``name`` (several models in one job) puts the
    checkpoints under ``checkpoints/<name>`` and the metrics under ``train/<name>/``."""

    name: str = ""
    losses: tuple[str, ...] = ("loss",)  # components step() returns; logged train/<component>

    def model(self) -> torch.nn.Module:
        raise NotImplementedError

    def loader(self) -> ShardLoader:
        """The training loader (the one data path)."""
        raise NotImplementedError

    def schedule(self, effective_batch: int) -> LRSchedule:
        raise NotImplementedError

    def optimizer(self, model: torch.nn.Module, lr: float) -> torch.optim.Optimizer:
        raise NotImplementedError

    def step(self, engine, batch: dict, gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        """(loss, components ``[len(losses)]``) of one micro-batch; see :data:`StepFn`."""
        raise NotImplementedError

    def after_epoch(self, engine: Engine) -> None:
        """At each epoch end, after its checkpoint (probes, periodic evaluations)."""

    def after_step(self, engine: Engine) -> None:
        """After each optimizer step (figures on a step interval)."""


def compile_blocks(model: torch.nn.Module, mode: str) -> None:
    """``torch.compile`` every transformer block in place (regional compilation; keys unchanged).

    NOTE: per block rather than the whole model: data-dependent parts (masking, gathers) and
    DeepSpeed's module hooks stay eager, and each block is compiled once and reused (the blocks
    of a ModuleList share code and shapes). ``train.compile_mode=reduce-overhead`` adds CUDA
    graphs (see docs/BENCHMARKS.md for when it pays).
    """
    for blocks in [m for m in model.modules() if isinstance(m, torch.nn.ModuleList)]:
        for block in blocks:
            block.compile(mode=None if mode == "default" else mode, dynamic=False)


class Engine:
    """Trains one task's model on DeepSpeed; ``fit()`` to ``epochs`` (or ``train.max_steps``)."""

    def __init__(self, spec: EngineSpec, info: DistInfo, task: Task, folder: RunFolder):
        self.spec, self.info, self.task, self.folder = spec, info, task, folder
        run = spec.train
        self.loader = task.loader()
        self.accum, self.steps_per_epoch = steps_per_epoch(spec, len(self.loader), info.world_size)
        self.effective_batch = spec.batch_size * info.world_size * self.accum
        self.schedule = task.schedule(self.effective_batch)
        root = Path(run.output_dir) / "checkpoints" / task.name
        check_writable(root)
        model = task.model()
        optimizer = task.optimizer(model, self.schedule.lr)
        if run.compile:
            compile_blocks(model, run.compile_mode)
        self.engine, self.optimizer = build_engine(model, optimizer, spec, info.world_size)
        self.checkpoints = Checkpointer(
            self.engine, root, run.keep_last, info.rank, info.world_size
        )
        self.progress, run_id = self._resume()
        self.steps = TrainStep(
            self.engine,
            task.step,
            task.losses,
            seed=run.seed,
            accum=self.accum,
            rank=info.rank,
            world_size=info.world_size,
            device=info.device,
        )
        folder.start(run_id, self.derived(), f"derived.{task.name}" if task.name else "derived")
        planned = spec.epochs * self.steps_per_epoch
        self.report = RunReport(min(planned, run.max_steps or planned), self.progress.step)
        self.stop = StopSignal()
        if info.is_main:
            self.report.banner(
                samples=self.loader.num_samples,
                steps_per_epoch=self.steps_per_epoch,
                epochs=spec.epochs,
                batch=spec.batch_size,
                world=info.world_size,
                accum=self.accum,
                output_dir=str(folder.out),
                tracking=folder.tracker.uri if folder.tracker.enabled else "off",
                task=task.name or None,
            )

    @property
    def module(self) -> torch.nn.Module:
        return self.engine.module

    def derived(self) -> dict:
        """The values the config implies at this world size (MLflow ``derived.*``, dry runs)."""
        return {
            "world_size": self.info.world_size,
            "accumulation_steps": self.accum,
            "effective_batch_size": self.effective_batch,
            "lr": self.schedule.lr,
            "steps_per_epoch": self.steps_per_epoch,
            "num_samples": self.loader.num_samples,
        }

    def _resume(self) -> tuple[Progress, str | None]:
        candidates = resume_candidates(self.spec.train.resume, self.checkpoints.root)
        if not candidates:
            return Progress(), None
        state = self.checkpoints.load(candidates, self.loader)
        progress = Progress.from_state(state)
        if not state["same_world"]:
            # NOTE: a new world size restarts the epoch's sample stream at the saved sample count
            # (see pipeline/data/loader.py); steps per epoch change, so the position is re-derived.
            done = min(
                self.loader.state_dict().get("batches", 0) // self.accum, self.steps_per_epoch
            )
            progress.epoch_start = progress.step - done
        return progress, state.get("mlflow_run_id")

    # -- the loop --------------------------------------------------------------------------
    def fit(self) -> dict:
        """Train to the last epoch (or ``train.max_steps``); returns the last logged metrics.
        The run stays open: the task logs its final evaluation, then calls :meth:`finish`."""
        p, last = self.progress, {}
        try:
            with self.stop:
                while p.epoch < self.spec.epochs and not self.done:
                    if p.step_in_epoch == 0:
                        self.loader.set_epoch(p.epoch)
                    batches = iter(self.loader)
                    while p.step_in_epoch < self.steps_per_epoch and not self.done:
                        last = self._optimizer_step(batches) or last
                        self.stop.check(self)  # a signal: save here, exit with Preempted
                    if p.step_in_epoch >= self.steps_per_epoch:
                        p.epoch, p.epoch_start = p.epoch + 1, p.step
                        self.save()
                        self.task.after_epoch(self)
                self.save()
        except BaseException as e:
            self.loader.close()  # its workers first: a launcher's SIGTERM must find none left
            self.folder.close(self.stop.status(e))
            raise
        finally:
            self.loader.close()
        if self.info.is_main:
            self.report.summary(
                p.step,
                p.epoch + p.step_in_epoch / self.steps_per_epoch,
                (p.step - self.report.start_step) * self.effective_batch,
                last,
                str(self.folder.out),
            )
        return last

    @property
    def done(self) -> bool:
        limit = self.spec.train.max_steps
        return limit is not None and self.progress.step >= limit

    def _optimizer_step(self, batches) -> dict:
        p = self.progress
        lr = self.schedule.apply(self.optimizer, p.epoch + p.step_in_epoch / self.steps_per_epoch)
        for micro in range(self.accum):
            t0 = time.perf_counter()
            batch = next(batches)
            self.steps.window.data_s += time.perf_counter() - t0
            self.steps.micro(batch, p.step, micro)
        p.step += 1
        p.samples_seen += self.effective_batch
        metrics = {}
        run = self.spec.train
        if p.step % run.log_every == 0 or self.done or p.step_in_epoch == self.steps_per_epoch:
            metrics = self._log_window(lr)
        if run.save_every_steps and p.step % run.save_every_steps == 0:
            self.save()
        self.task.after_step(self)
        return metrics

    def _log_window(self, lr: float) -> dict:
        p, info, w = self.progress, self.info, self.steps.window
        per_set = self.loader.samples_per_set()
        totals = self.steps.totals(self.data_errors(), p.epoch, tuple(per_set.values()))
        k = len(w.names)
        losses, (data_s, errors), seen = totals[:k], totals[k + 1 : k + 3], totals[k + 3 :]
        n = max(w.count, 1) * info.world_size  # loss sums are over ranks and micro-steps
        elapsed = time.perf_counter() - w.t0
        prefix = f"train/{self.task.name}/" if self.task.name else "train/"
        metrics = {f"{prefix}{k}": v / n for k, v in zip(w.names, losses, strict=True)}
        if len(losses) > 1:
            metrics[f"{prefix}loss"] = sum(losses) / n
        epoch = p.epoch + p.step_in_epoch / self.steps_per_epoch
        metrics |= {
            f"{prefix}lr": lr,
            f"{prefix}epoch": epoch,
            f"{prefix}samples_per_s": w.count * self.spec.batch_size * info.world_size / elapsed,
            f"{prefix}data_wait_frac": data_s / info.world_size / elapsed,
            "data/errors": errors,
        }
        if len(per_set) > 1:  # a mixture: samples delivered per set, all ranks, since the start
            metrics |= {f"data/samples_{n}": v for n, v in zip(per_set, seen, strict=True)}
        loss = metrics[f"{prefix}loss"]
        parts = " ".join(f"{k} {v / n:.4f}" for k, v in zip(w.names, losses, strict=True))
        self.folder.log(
            metrics,
            p.step,
            f"{self.task.name + ' ' if self.task.name else ''}step {self.report.eta(p.step)} "
            f"epoch {epoch:.2f} loss {loss:.4f}"
            + (f" ({parts})" if len(losses) > 1 else "")
            + f" lr {lr:.3g} {metrics[f'{prefix}samples_per_s']:.1f} samples/s",
        )
        if info.is_main:
            self.report.data_errors(int(errors), self.loader.error_counts())
        w.reset()
        return metrics

    def data_errors(self) -> int:
        return sum(self.loader.error_counts().values())

    def save(self) -> None:
        """Checkpoint this step; the loss window is checked first (no save after a non-finite
        loss)."""
        p = self.progress
        self.steps.totals(self.data_errors(), p.epoch)
        self.checkpoints.save(
            p.step, {**asdict(p), "config": self.folder.config}, self.loader, self.folder.run_id
        )

    def log(self, metrics: dict, line: str | None = None) -> None:
        """Task metrics (evaluations) at the current step."""
        self.folder.log(metrics, self.progress.step, line)
