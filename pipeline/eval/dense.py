"""What the dense tasks (AVS, separation, localization) share on the engine: the encoder + head
model, its training items from the loader's dense mode, the layer-decayed AdamW recipe, and
scoring over every rank's share of the test set.

A dense task defines ``forward(encoder, head, image, audio, **kw)`` (the model's forward, run
through the DeepSpeed engine so precision and ZeRO apply) and ``loss(engine, batch)``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import replace

import torch
import torch.distributed as dist
from torch import Tensor, nn

from avbase.shardformat import MANIFEST
from pipeline.data.dense import DenseSpec, DenseTransform
from pipeline.data.loader import ShardLoader, shard_loader
from pipeline.data.shardio import join
from pipeline.engine.distributed import DistInfo, engine_dtype
from pipeline.engine.loop import Task
from pipeline.engine.optim import layer_decay_groups
from pipeline.engine.schedule import LRSchedule
from pipeline.eval.config import EvalConfig
from pipeline.eval.encoder import LoadedEncoder
from pipeline.eval.metrics.baselines import centred_prior


class DenseModel(nn.Module):
    """The encoder and a task head (parameter names ``encoder.*`` / ``head.*``, as layer decay
    expects); ``forward`` is the task's function of them."""

    def __init__(self, encoder: nn.Module, head: nn.Module | None, forward: Callable):
        super().__init__()
        self.encoder, self.head, self._forward = encoder, head, forward

    def forward(self, image: Tensor, audio: Tensor, **kw) -> Tensor:
        return self._forward(self.encoder, self.head, image, audio, **kw)


class DenseTask(Task):
    """Encoder + head trained on dense items of ``data.train``."""

    def __init__(
        self,
        cfg: EvalConfig,
        info: DistInfo,
        enc: LoadedEncoder,
        head: nn.Module | None,
        train_spec: DenseSpec,
        name: str = "",
    ):
        self.cfg, self.info, self.enc, self.name = cfg, info, enc, name
        self.mcfg, self.train_spec = enc.config, train_spec
        self.size = self.mcfg.image.size
        self.grid = self.size // self.mcfg.patch_size
        self.depth = len(enc.encoder.image.blocks)
        self.dtype = engine_dtype(cfg.engine_spec())
        self.dense_model = DenseModel(enc.encoder, head, self.forward)

    def inputs(self, batch: dict) -> tuple[Tensor, Tensor]:
        """The batch's normalised image and log-mel, on the device in the engine's dtype."""
        device = self.info.device
        return batch["image"].to(device, self.dtype), batch["audio"].to(device, self.dtype)

    def layer(self, i: int) -> int:
        """Layer index ``i`` (negative: from the end) checked against the encoder depth."""
        if not -self.depth <= i < self.depth:
            raise ValueError(f"layer {i} does not exist in a {self.depth}-layer encoder")
        return i % self.depth

    def forward(self, encoder, head, image: Tensor, audio: Tensor, **kw) -> Tensor:
        raise NotImplementedError

    def loss(self, engine, batch: dict) -> Tensor:
        raise NotImplementedError

    # -- Task ------------------------------------------------------------------------------
    def model(self) -> nn.Module:
        return self.dense_model

    def loader(self) -> ShardLoader:
        return dense_loader(self.cfg, self.info, self.mcfg, self.train_spec, train=True)

    def schedule(self, effective_batch: int) -> LRSchedule:
        return LRSchedule.plain(self.cfg.optim, effective_batch)

    def optimizer(self, model: nn.Module, lr: float) -> torch.optim.Optimizer:
        o = self.cfg.optim
        groups = layer_decay_groups(model, self.depth, o.weight_decay, o.layer_decay)
        return torch.optim.AdamW(groups, lr=lr, betas=tuple(o.betas))

    def step(self, engine, batch: dict, gen: torch.Generator):
        loss = self.loss(engine, batch)
        return loss, loss.detach().reshape(1)


def dense_loader(
    cfg: EvalConfig, info: DistInfo, mcfg, spec: DenseSpec, train: bool, repeat: int = 1
) -> ShardLoader:
    """The loader's dense mode over ``data.train`` (shuffled; ``repeat`` passes per epoch, each
    sample's copies augmented apart) or ``data.test`` (every sample once per rank share, in
    order); one line naming the manifest when a member is missing."""
    if train:
        data = replace(cfg.data.train, repeat=cfg.data.train.repeat * repeat)
    else:
        data = replace(cfg.data.test, remainder="pad")
    loader = shard_loader(
        data,
        mcfg,
        info.rank,
        info.world_size,
        cfg.train.seed,
        info.device,
        train=train,
        labels=spec.labels,
        transform=DenseTransform(mcfg.frontend, mcfg.image, spec, train),
    )
    try:
        require_members(loader.sets, spec.members())
    except ValueError:
        loader.close()
        raise
    return loader


def require_members(sets, members: list[str] | tuple[str, ...]) -> None:
    """One line naming the manifest of the first set (of ``sets``, a loader's ``ShardSets``)
    that does not declare every one of ``members`` (``mask``, ``flac``)."""
    for path, manifest in zip(sets.paths, sets.manifests, strict=True):
        missing = [m for m in members if m not in manifest.get("members", [])]
        if missing:
            raise ValueError(
                f"{join(path, MANIFEST)}: the set has no {' or '.join(missing)} members "
                "(build it from a list with a 'masks' column / with --keep-waveform)"
            )


ROWS = ("image", "audio", "frame", "mask", "wave", "sample")  # one row per frame; else per sample


def scoring_batches(loader: ShardLoader) -> Iterator[dict]:
    """The test batches of this rank without the rows of repeated samples (rank padding)."""
    try:
        loader.set_epoch(0)
        for batch in loader:
            keep = ~batch["padded"][batch["sample"]]
            if keep.any():
                yield {k: v[keep.to(v.device)] if k in ROWS else v for k, v in batch.items()}
    finally:
        loader.close()


def all_reduce_sums(sums: Tensor, device: torch.device) -> Tensor:
    """Element-wise sum over ranks (float64, back on the host; NCCL reduces device tensors)."""
    out = sums.to(device)
    dist.all_reduce(out)
    return out.cpu()


def score_frames(
    task: DenseTask,
    module: nn.Module,
    predict: Callable[[nn.Module, dict], Tensor],
    meter: type,
    sigma: float,
    shown_max: int,
    by_video: bool = False,
    soft_truth: bool = False,
) -> tuple[dict[str, float], list[tuple]]:
    """Score ``predict(module, batch) → [rows, S, S]`` and the centred prior (``sigma``) with
    ``meter`` (``update(pred, truth[, videos])``; ``by_video``: each row's sample key is its
    video; ``soft_truth``: masks keep a consensus map's 0.5, else truth = mask > 0.5) on every
    masked frame of ``data.test``, sums over ranks; returns the metrics with their ``baseline_``
    twins and the first rows (image, truth, prediction) for the figures."""
    cfg, info = task.cfg, task.info
    meters, shown = {"model": meter(), "baseline": meter()}, []
    loader = dense_loader(cfg, info, task.mcfg, DenseSpec(masks=True), train=False)
    was_training = module.training
    module.eval()
    try:
        with torch.no_grad():
            for batch in scoring_batches(loader):
                pred = predict(module, batch).float().cpu()
                prior = centred_prior(len(pred), task.size, task.size, sigma)
                videos = [[batch["key"][j] for j in batch["sample"].tolist()]] if by_video else []
                truth = batch["mask"] if soft_truth else batch["mask"] > 0.5
                meters["model"].update(pred, truth, *videos)
                meters["baseline"].update(prior, truth, *videos)
                if len(shown) < shown_max:
                    pictures = to_uint8(batch["image"][: shown_max - len(shown)], task.mcfg.image)
                    shown += list(zip(pictures, batch["mask"], pred, strict=False))
    finally:
        module.train(was_training)
    for m in meters.values():
        m.sums = all_reduce_sums(m.sums, info.device)
    metrics = meters["model"].result()
    metrics.update({f"baseline_{k}": v for k, v in meters["baseline"].result().items()})
    return metrics, shown


def to_uint8(image: Tensor, spec) -> Tensor:
    """Normalised float ``[N, 3, S, S]`` → uint8 pixels on the host (figures)."""
    std = torch.tensor(spec.std).view(1, 3, 1, 1)
    mean = torch.tensor(spec.mean).view(1, 3, 1, 1)
    return (image.float().cpu() * std + mean).mul(255).round().clamp(0, 255).to(torch.uint8)
