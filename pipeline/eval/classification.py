"""Audio-event classification: linear probe and fine-tuning (REFERENCE.md §8).

- ``task: linear``: frozen encoder (eval mode, unmasked, no grad) → per-modality BatchNorm1d
  (affine=False) + Linear heads; loss on the mean of the three logit sets; LARS.
- ``task: finetune``: the whole encoder trains (drop-path, layer-wise LR decay, AdamW); heads
  without BatchNorm, bias from class frequencies; mixup (λ per sample, partner = the reversed
  batch, the same λ for image and audio) and label smoothing on soft targets.

Evaluation (every ``eval.every_epochs`` single-clip; at the end ``eval.clips`` × ``eval.frames``
views averaged per video) reports every head (image, audio, fusion, all) and writes
``predictions.jsonl`` plus a confusion matrix (single-label) or a per-class AP table (multi-label).
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from model.presets import get_frontend
from pipeline import checkpoint as C
from pipeline import distributed as D
from pipeline.augment import EvalView
from pipeline.eval import metrics as M
from pipeline.eval.config import EvalConfig
from pipeline.eval.encoder import load_encoder
from pipeline.eval.heads import ALL_HEADS, AVClassifier, frequency_bias
from pipeline.eval.loop import EvalLoop
from pipeline.eval.optim import layer_decay_groups
from pipeline.loader import build_loader
from pipeline.shardio import join
from preprocess.errors import AvfusionError
from preprocess.shardformat import MANIFEST

log = logging.getLogger("avfusion.eval")


class EvalInputError(AvfusionError, ValueError):
    """A labelled shard set cannot be used for this evaluation; the message names the file."""


def run(cfg: EvalConfig, info: D.DistInfo) -> dict:
    t0 = time.perf_counter()
    torch.manual_seed(cfg.train.seed)
    enc = load_encoder(cfg.encoder)
    loaders = _Loaders(cfg, info, enc.config)
    train_manifest = loaders.train.manifest
    classes, multi = check_label_sets(
        train_manifest, loaders.test_manifest, cfg.data.train, cfg.data.test
    )
    c = cfg.classification
    freq = class_frequencies(train_manifest, cfg.data.train) if needs_frequencies(cfg) else None
    model = AVClassifier(
        enc.encoder,
        len(classes),
        batchnorm=c.batchnorm,
        frozen=cfg.task == "linear",
        bias=frequency_bias(freq) if c.bias_init == "class_freq" else None,
    )
    groups = layer_decay_groups(
        model, len(enc.encoder.image.blocks), cfg.optim.weight_decay, cfg.optim.layer_decay
    )
    tags = {"avfusion.task": cfg.task, "avfusion.encoder": enc.source}
    if enc.pretrain_run_id:
        tags["avfusion.pretrain_run_id"] = enc.pretrain_run_id
    loop = EvalLoop(cfg, info, model, groups, loaders.train, tags)
    loss_fn = _Loss(cfg, len(classes), multi, freq)

    def step(engine, batch: dict, gen: torch.Generator) -> torch.Tensor:
        image, audio = (
            batch["image"].to(info.device, loop.dtype),
            batch["audio"].to(info.device, loop.dtype),
        )
        target = soft_targets(batch["label"], len(classes), multi, c.label_smoothing).to(
            info.device
        )
        if c.mixup > 0:
            lam = mixup_lambdas(len(image), c.mixup, gen).to(info.device)
            image, audio, target = (mix(x, lam) for x in (image, audio, target))
        return loss_fn(engine(image, audio)["all"].float(), target)

    def evaluate(final: bool) -> dict:
        return _evaluate(loop, loaders, classes, multi, final)

    result = loop.fit(step, evaluate)
    wall = time.perf_counter() - t0
    result.update(wall_s=round(wall, 1), steps=loop.step, classes=len(classes))
    if enc.pretrain_run_id:
        result["pretrain_run_id"] = enc.pretrain_run_id
    return result


# -- data -----------------------------------------------------------------------------------


class _Loaders:
    """The training loader and test loaders per evaluation view (built on demand)."""

    def __init__(self, cfg: EvalConfig, info: D.DistInfo, mcfg):
        self.cfg, self.info, self.mcfg = cfg, info, mcfg
        self.train = self._build(cfg.data.train, train=True)
        probe = self._build(cfg.data.test, train=False)
        self.test_manifest = probe.manifest
        probe.close()

    def _build(self, shards: str, train: bool, view: EvalView | None = None):
        return build_loader(
            self.cfg.data.loader(shards, train),
            audio=get_frontend(self.mcfg.audio_frontend),
            image=self.mcfg.image,
            rank=self.info.rank,
            world_size=self.info.world_size,
            seed=self.cfg.train.seed,
            train=train,
            labels=True,
            device=self.info.device,
            view=view,
        )

    def views(self, final: bool) -> list[EvalView]:
        e = self.cfg.eval
        if not final:
            return [EvalView()]
        return [
            EvalView(k, e.clips, j, e.frames, e.random_vol_db)
            for k in range(e.clips)
            for j in range(e.frames)
        ]

    def test(self, view: EvalView):
        return self._build(self.cfg.data.test, train=False, view=view)


def check_label_sets(
    train: dict, test: dict, train_root: str, test_root: str
) -> tuple[list[str], bool]:
    """The shared class list and multi-label flag; :class:`EvalInputError` naming the manifest and
    the first class that differs when the sets disagree, or when a set is unlabelled."""
    for root, m in ((train_root, train), (test_root, test)):
        if not m.get("labels"):
            raise EvalInputError(
                f"{join(root, MANIFEST)}: no 'labels' — the shard set is unlabelled "
                "(build it from a list with a 'label' column)"
            )
    a, b = train["labels"], test["labels"]
    if a != b:
        diff = next(
            (
                f"class {i}: {x!r} in the train set, {y!r} in the test set"
                for i, (x, y) in enumerate(zip(a, b, strict=False))
                if x != y
            ),
            None,
        )
        diff = diff or (
            f"{len(a)} train classes, {len(b)} test classes "
            f"(first extra: {(a[len(b) :] or b[len(a) :])[0]!r})"
        )
        raise EvalInputError(
            f"{join(test_root, MANIFEST)}: class list differs from {join(train_root, MANIFEST)} "
            f"({diff}); build both with the same --classes file"
        )
    if bool(train.get("multi_label")) != bool(test.get("multi_label")):
        raise EvalInputError(
            f"{join(test_root, MANIFEST)}: multi_label differs from the train set's"
        )
    return list(a), bool(train.get("multi_label"))


def class_frequencies(manifest: dict, root: str) -> torch.Tensor:
    """f = label_counts / labelled_inputs ``[C]`` of the training set."""
    counts, total = manifest.get("label_counts"), manifest.get("labelled_inputs")
    if not counts or not total:
        raise EvalInputError(
            f"{join(root, MANIFEST)}: no label_counts (built before class counts were "
            "recorded); rebuild it, or set classification.bias_init=zero and "
            "classification.class_freq_division=false"
        )
    return torch.tensor(counts, dtype=torch.float64).div(total).float()


# -- targets, mixup, loss ---------------------------------------------------------------------


def soft_targets(
    labels: torch.Tensor, num_classes: int, multi: bool, smoothing: float
) -> torch.Tensor:
    """``[B, C]`` targets: one-hot (or the multi-hot rows) with label smoothing
    ``y·(1 − s) + s/C`` (timm's Mixup convention)."""
    hot = labels.float() if multi else F.one_hot(labels, num_classes).float()
    return hot * (1 - smoothing) + smoothing / num_classes


def mixup_lambdas(batch: int, alpha: float, gen: torch.Generator) -> torch.Tensor:
    """λ ~ Beta(α, α) per sample ``[B]`` from ``gen`` (resume-reproducible)."""
    seed = int(torch.randint(0, 2**31 - 1, (1,), generator=gen))
    return torch.from_numpy(np.random.default_rng(seed).beta(alpha, alpha, size=batch)).float()


def mix(x: torch.Tensor, lam: torch.Tensor) -> torch.Tensor:
    """λ_i · x_i + (1 − λ_i) · x_{B−1−i}: each sample mixed with its partner in the reversed batch."""
    lam = lam.to(x.dtype).view(-1, *([1] * (x.ndim - 1)))
    return x * lam + x.flip(0) * (1 - lam)


def needs_frequencies(cfg: EvalConfig) -> bool:
    """The training set's class frequencies are used (bias init, or the loss division)."""
    return cfg.classification.bias_init == "class_freq" or _divides(cfg)


def _divides(cfg: EvalConfig) -> bool:
    d = cfg.classification.class_freq_division
    return d if d is not None else cfg.task == "finetune"


class _Loss:
    """Soft-target CE (or BCE) on the averaged logits.

    NOTE (release behaviour, REFERENCE §8 / §9.B.18): with ``classification.class_freq_division``
    (default on for ``finetune``) the loss is taken over the classes seen in training (f > 0) and
    then divided by their frequencies and averaged — a constant factor mean(1/f) (≈ C for balanced
    classes, ≈ 310 on VGGSound), so losses read ≈ 2,600 and the effective AdamW LR is unchanged
    except through ε. Switch it off for plain (comparable) loss values.
    """

    def __init__(self, cfg: EvalConfig, num_classes: int, multi: bool, freq: torch.Tensor | None):
        kind = cfg.classification.loss
        self.bce = kind == "bce" or (kind == "auto" and multi)
        self.divide = _divides(cfg)
        self.seen = (freq > 0) if self.divide else None
        self.freq = freq

    def __call__(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        if self.divide:
            seen = self.seen.to(logits.device)
            logits, target = logits[:, seen], target[:, seen]
        if self.bce:
            loss = F.binary_cross_entropy_with_logits(logits, target)
        else:
            loss = torch.sum(-target * F.log_softmax(logits, dim=-1), dim=-1).mean()
        if self.divide:
            loss = (loss / self.freq.to(logits.device)[self.seen.to(logits.device)]).mean()
        return loss


# -- evaluation -------------------------------------------------------------------------------


@torch.no_grad()
def predict(model, loader, device: torch.device, dtype: torch.dtype) -> dict:
    """Logits of every batch: {"keys", "labels", head: ``[N, C]``} (CPU, float32)."""
    was_training = model.training
    model.eval()
    out = {h: [] for h in ALL_HEADS} | {"keys": [], "labels": []}
    try:
        for batch in loader:
            logits = model(batch["image"].to(device, dtype), batch["audio"].to(device, dtype))
            for h in ALL_HEADS:
                out[h].append(logits[h].float().cpu())
            out["keys"] += batch["key"]
            out["labels"].append(batch["label"].cpu())
    finally:
        loader.close()
        model.train(was_training)
    return {k: (v if k == "keys" else torch.cat(v)) for k, v in out.items()}


def _evaluate(
    loop: EvalLoop, loaders: _Loaders, classes: list[str], multi: bool, final: bool
) -> dict:
    """Metrics of every head on the test set (views averaged per video); reports on the final one."""
    parts = [
        predict(loop.module, loaders.test(view), loop.info.device, loop.dtype)
        for view in loaders.views(final)
    ]
    gathered = C.gather_objects(parts)
    if not loop.info.is_main:
        return {}
    rows = [p for rank_parts in gathered for p in rank_parts]
    keys, scores, labels = M.average_views(
        [k for p in rows for k in p["keys"]],
        {h: torch.cat([p[h] for p in rows]) for h in ALL_HEADS},
        torch.cat([p["labels"] for p in rows]),
    )
    result = {k: round(v, 3) for k, v in M.classification_metrics(scores, labels, multi).items()}
    result["videos"] = len(keys)
    if final:
        _write_reports(loop, keys, scores["all"], labels, classes, multi)
    return result


def _write_reports(
    loop: EvalLoop,
    keys: list[str],
    scores: torch.Tensor,
    labels: torch.Tensor,
    classes: list[str],
    multi: bool,
) -> None:
    out = Path(loop.cfg.train.output_dir)
    files = [
        M.write_predictions(
            out / "predictions.jsonl", keys, scores, labels, classes, loop.cfg.eval.top_k, multi
        )
    ]
    if multi:
        files.append(M.write_class_ap(out / "class_ap.tsv", scores, labels, classes))
    else:
        files.append(
            M.save_confusion_figure(
                out / "confusion.png", M.confusion_matrix(scores, labels, len(classes)), classes
            )
        )
    for path in files:
        loop.log_artifact(path, "eval")
