"""Classification targets and losses (REFERENCE.md §8): class frequencies, soft targets with
label smoothing, mixup with λ per sample, and the release's loss (optionally divided by the class
frequencies)."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from avbase.errors import AvfusionError
from avbase.shardformat import MANIFEST
from pipeline.data.shardio import join
from pipeline.eval.config import EvalConfig


class EvalInputError(AvfusionError, ValueError):
    """A labelled shard set cannot be used for this evaluation; the message names the file."""


def class_frequencies(manifests: list[dict], roots: list[str]) -> torch.Tensor:
    """f ``[C]``: each class's label count over all label occurrences of the training set(s)
    (the release's ``class_dist``; for single-label sets the share of clips)."""
    counts = torch.zeros(len(manifests[0].get("labels", [])), dtype=torch.float64)
    for manifest, root in zip(manifests, roots, strict=True):
        if not manifest.get("label_counts"):
            raise EvalInputError(
                f"{join(root, MANIFEST)}: no label_counts (built before class counts were "
                "recorded); rebuild it, or set classification.bias_init=zero and "
                "classification.class_freq_division=false"
            )
        counts += torch.tensor(manifest["label_counts"], dtype=torch.float64)
    return counts.div(counts.sum()).float()


def soft_targets(
    labels: torch.Tensor, num_classes: int, multi: bool, smoothing: float
) -> torch.Tensor:
    """``[B, C]`` targets: one-hot (or the multi-hot rows) with label smoothing
    ``y·(1 − s) + s/C`` (timm's Mixup convention)."""
    hot = labels.float() if multi else F.one_hot(labels, num_classes).float()
    return hot * (1 - smoothing) + smoothing / num_classes


def mixup_lambdas(batch: int, alpha: float, gen: torch.Generator) -> torch.Tensor:
    """λ ~ Beta(α, α) per sample ``[B]`` from ``gen`` (resume-reproducible)."""
    seed = int(torch.randint(0, 2**31 - 1, (1,), generator=gen, device=gen.device))
    return torch.from_numpy(np.random.default_rng(seed).beta(alpha, alpha, size=batch)).float()


def mix(x: torch.Tensor, lam: torch.Tensor) -> torch.Tensor:
    """λ_i · x_i + (1 − λ_i) · x_{B−1−i}: each sample mixed with its partner in the reversed batch."""
    lam = lam.to(x.dtype).view(-1, *([1] * (x.ndim - 1)))
    return x * lam + x.flip(0) * (1 - lam)


def needs_frequencies(cfg: EvalConfig) -> bool:
    """Whether the training set's class counts are used (bias init or the loss division)."""
    return cfg.classification.bias_init == "class_freq" or divides(cfg)


def divides(cfg: EvalConfig) -> bool:
    d = cfg.classification.class_freq_division
    return d if d is not None else cfg.task == "finetune"


class ClassificationLoss:
    """Soft-target CE (or BCE) on the averaged logits.

    NOTE (release behaviour, REFERENCE §8 / §9.B.18): with ``classification.class_freq_division``
    (default on for ``finetune``) the loss is taken over the classes seen in training (f > 0) and
    divided by their frequencies, then averaged. Single-label (CE, a scalar per batch): a constant
    factor mean(1/f) (≈ C for balanced classes, ≈ 310 on VGGSound), so losses read ≈ 2,600 and the
    effective AdamW LR is unchanged except through ε. Multi-label (BCE, kept per class as the
    release's ``reduction='none'``): each class's term weighted by 1/f — rare AudioSet classes
    count more. Switch it off for plain (comparable) loss values.
    """

    def __init__(self, cfg: EvalConfig, num_classes: int, multi: bool, freq: torch.Tensor | None):
        kind = cfg.classification.loss
        self.bce = kind == "bce" or (kind == "auto" and multi)
        self.divide = divides(cfg)
        self.seen = (freq > 0) if self.divide else None
        self.freq = freq

    def __call__(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        if self.divide:
            seen = self.seen.to(logits.device)
            logits, target = logits[:, seen], target[:, seen]
        if self.bce:  # [B, C'] per element when divided (the release's reduction='none')
            loss = F.binary_cross_entropy_with_logits(
                logits, target, reduction="none" if self.divide else "mean"
            )
        else:
            loss = torch.sum(-target * F.log_softmax(logits, dim=-1), dim=-1).mean()
        if self.divide:
            freq = self.freq.to(logits.device)[self.seen.to(logits.device)]
            loss = (loss / freq[None]).mean()
        return loss
