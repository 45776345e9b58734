"""Shared machinery of the dense tasks: encoder + head, layer-decayed AdamW training, per-epoch
checkpoints (a run killed with -9 resumes at its last finished epoch, in the same MLflow run),
sums across ranks, and the MLflow run.

NOTE: a plain PyTorch loop (DDP across ranks, fp32), not the DeepSpeed engine of the
classification tasks: the dense heads are small and the dense tasks' loaders are per-frame
iterators rather than the streaming loader, so ZeRO sharding is not used here.
"""

from __future__ import annotations

import itertools
import json
import logging
import os
from collections.abc import Callable, Iterator
from pathlib import Path

import torch
import torch.distributed as dist
from torch import Tensor, nn

from model.presets import AudioFrontend, get_frontend
from pipeline.config import redacted_config
from pipeline.distributed import DistInfo
from pipeline.eval.config import EvalConfig
from pipeline.eval.dense_data import DenseSpec, batches, check_members, dense_items
from pipeline.eval.dense_metrics import centred_prior
from pipeline.eval.encoder import LoadedEncoder, load_encoder
from pipeline.eval.optim import apply_lr, layer_decay_groups, schedule
from pipeline.tracking import Tracker

log = logging.getLogger(__name__)
CHECKPOINT = "dense-{name}.pt"  # per trained model (the task's, a trained baseline's)
RUN_RECORD = "dense-run.json"  # the MLflow run id, so a resumed evaluation logs into it


class DenseModel(nn.Module):
    """The encoder and a task head; parameter names ``encoder.*`` / ``head.*`` (layer decay)."""

    def __init__(self, encoder: nn.Module, head: nn.Module | None):
        super().__init__()
        self.encoder, self.head = encoder, head


class DenseRun:
    """One dense evaluation: the encoder, its input specs, the tracker, the output folder."""

    def __init__(self, cfg: EvalConfig, info: DistInfo):
        self.cfg, self.info = cfg, info
        torch.manual_seed(cfg.train.seed)  # head (and random-encoder) init
        loaded: LoadedEncoder = load_encoder(cfg.encoder)
        self.encoder, self.mcfg = loaded.encoder.to(info.device), loaded.config
        self.audio: AudioFrontend = get_frontend(self.mcfg.audio_frontend)
        self.size = self.mcfg.image.size
        self.grid = self.size // self.mcfg.patch_size
        self.depth = len(self.encoder.image.blocks)
        std = torch.tensor(self.mcfg.image.std).view(1, 3, 1, 1)
        self._scale, self._shift = (
            1 / (255 * std),
            torch.tensor(self.mcfg.image.mean).view(1, 3, 1, 1) / std,
        )
        self.out = Path(cfg.train.output_dir)
        self.out.mkdir(parents=True, exist_ok=True)
        record = self.out / RUN_RECORD
        resumed = cfg.train.resume != "never" and record.exists()
        self.tracker = Tracker.from_config(
            cfg.tracking,
            info.is_main,
            json.loads(record.read_text())["mlflow_run_id"] if resumed else None,
            self.out,
            {"task": cfg.task, "encoder": loaded.source},
        )
        self.tracker.log_params(redacted_config(cfg))
        self.epochs_done = 0

    def layer(self, i: int) -> int:
        """Layer index ``i`` (negative: from the end) checked against the encoder depth."""
        if not -self.depth <= i < self.depth:
            raise ValueError(f"layer {i} does not exist in a {self.depth}-layer encoder")
        return i % self.depth

    def image(self, batch: dict) -> Tensor:
        """uint8 ``[B, 3, S, S]`` → normalised float32 on the device."""
        x = batch["image"].float().mul(self._scale).sub(self._shift)
        return x.to(self.info.device)

    def epoch_batches(self, spec: DenseSpec, epoch: int, passes: int = 1) -> Iterator[dict]:
        """This rank's training batches of ``epoch``: ``passes`` shuffled passes over
        ``data.train`` (each its own seed, so oversampled items see other crops and jitter)."""
        cfg, info = self.cfg, self.info
        items = itertools.chain.from_iterable(
            dense_items(
                cfg.data.train,
                spec,
                info.rank,
                info.world_size,
                seed=cfg.train.seed * 7919 + epoch * passes + k,
            )
            for k in range(passes)
        )
        return batches(items, cfg.data.batch_size)

    def train(
        self,
        model: DenseModel,
        spec: DenseSpec,
        loss_fn: Callable[[nn.Module, dict], Tensor],
        name: str = "model",
        passes: int = 1,
    ) -> None:
        """AdamW with layer decay, warm-up + cosine per iteration over ``passes`` passes of
        ``data.train`` per epoch; a checkpoint after each epoch.

        Every rank takes a step only while all ranks still have a batch (equal step counts).
        """
        cfg, opt_cfg = self.cfg, self.cfg.optim
        world = self.info.world_size
        n = check_members(cfg.data.train, spec)["num_samples"]
        steps_per_epoch = n * passes // (cfg.data.batch_size * world)
        lr = (
            opt_cfg.lr
            if opt_cfg.lr is not None
            else opt_cfg.blr * cfg.data.batch_size * world / 256
        )
        groups = layer_decay_groups(model, self.depth, opt_cfg.weight_decay, opt_cfg.layer_decay)
        optimizer = torch.optim.AdamW(groups, lr=lr, betas=tuple(opt_cfg.betas))
        sched = schedule(lr, opt_cfg.epochs, opt_cfg.warmup_epochs)
        start, path = 0, self.out / CHECKPOINT.format(name=name)
        if self.cfg.train.resume != "never" and path.exists():
            state = torch.load(path, map_location="cpu", weights_only=True)
            model.load_state_dict(state["model"])
            optimizer.load_state_dict(state["optimizer"])
            start = state["epoch"]
            log.info("resumed %s at epoch %d", path, start)
        ddp = nn.parallel.DistributedDataParallel(model) if world > 1 else model
        model.train()
        step = start * steps_per_epoch
        for epoch in range(start, opt_cfg.epochs):
            torch.manual_seed(cfg.train.seed * 1000 + epoch)
            for j, batch in enumerate(_while_all_ranks(self.epoch_batches(spec, epoch, passes))):
                apply_lr(optimizer, sched, epoch + j / max(steps_per_epoch, 1))
                loss = loss_fn(ddp, batch)
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                step += 1
                if step % cfg.train.log_every == 0:
                    self.tracker.log_metrics({f"train/loss_{name}": loss.detach().item()}, step)
                    log.info("epoch %d step %d loss %.4f", epoch, step, loss.detach().item())
            self._save_checkpoint(path, model, optimizer, epoch + 1)
        self.epochs_done = opt_cfg.epochs
        model.eval()

    def reduce(self, sums: Tensor) -> Tensor:
        """Element-wise sum of ``sums`` over ranks (float64 kept)."""
        out = sums.clone()
        dist.all_reduce(out)
        return out

    @torch.no_grad()
    def score_masked_frames(
        self,
        predict: Callable[[dict], Tensor],
        meter: type,
        sigma: float,
        shown_max: int,
        draw: Callable[[list[tuple], Path], Path],
        figure: str,
    ) -> dict:
        """Score ``predict(batch) → [B, S, S]`` and the centred prior (``sigma``) with ``meter`` on
        every masked frame of ``data.test``; sums over ranks; ``draw`` the first frames; finish."""
        cfg = self.cfg
        meters = {"model": meter(), "baseline": meter()}
        shown: list[tuple] = []
        items = dense_items(
            cfg.data.test,
            DenseSpec(self.size, self.audio, masks=True),
            self.info.rank,
            self.info.world_size,
        )
        for batch in batches(items, cfg.data.test_batch_size or cfg.data.batch_size):
            pred = predict(batch)
            meters["model"].update(pred, batch["mask"])
            meters["baseline"].update(
                centred_prior(len(pred), self.size, self.size, sigma), batch["mask"]
            )
            shown += list(zip(batch["image"], batch["mask"], pred, strict=True))[
                : shown_max - len(shown)
            ]
        for m in meters.values():
            m.sums = self.reduce(m.sums)
        metrics = meters["model"].result()
        metrics.update({f"baseline_{k}": v for k, v in meters["baseline"].result().items()})
        figures = [draw(shown, self.out / figure)] if self.info.is_main and shown else []
        return self.finish(metrics, figures)

    def finish(self, metrics: dict[str, float], artifacts: list[Path]) -> dict[str, float]:
        """Log ``eval/<name>`` metrics and the artifacts (rank 0); return the metrics rounded."""
        result = {k: round(float(v), 4) for k, v in metrics.items()}
        self.tracker.log_metrics({f"eval/{k}": v for k, v in result.items()}, self.epochs_done)
        for path in artifacts:
            self.tracker.log_artifact(path, "figures")
        self.tracker.close()
        return result

    def _save_checkpoint(
        self, path: Path, model: nn.Module, optimizer: torch.optim.Optimizer, epoch: int
    ) -> None:
        """Rank 0 writes atomically (temp name + rename); all ranks wait for it."""
        if self.info.is_main:
            tmp = path.with_name(f"{path.name}.tmp-{os.getpid()}")
            torch.save(
                {"epoch": epoch, "model": model.state_dict(), "optimizer": optimizer.state_dict()},
                tmp,
            )
            tmp.replace(path)
            # the run id is known once the tracker reached the server (it creates the run in the
            # background); until then the tracking journal in out/ names the run to continue
            if self.tracker.run_id is not None:
                _atomic_write(
                    self.out / RUN_RECORD,
                    json.dumps({"mlflow_run_id": self.tracker.run_id}).encode(),
                )
        dist.barrier()


def _atomic_write(path: Path, data: bytes) -> None:
    tmp = path.with_name(f"{path.name}.tmp-{os.getpid()}")
    tmp.write_bytes(data)
    tmp.replace(path)


def _while_all_ranks(batches: Iterator[dict]) -> Iterator[dict]:
    """Yield batches while every rank still has one (one tiny all-reduce per step)."""
    while True:
        batch = next(batches, None)
        flag = torch.tensor([0 if batch is None else 1])
        dist.all_reduce(flag, op=dist.ReduceOp.MIN)
        if not flag.item():
            return
        yield batch
