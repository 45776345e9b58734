"""Optimizer parameter groups and the per-iteration learning rate (REFERENCE.md §7.2–7.3)."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from pipeline.config import OptimConfig


def param_groups(
    model: torch.nn.Module, weight_decay: float, pretrained: dict[str, set[str]]
) -> list[dict]:
    """AdamW groups: (tower | other) × (decay | no-decay).

    No decay for ``model.no_weight_decay()`` (ndim ≤ 1 or ``.bias``). NOTE: as in the official
    code this still decays fusion tokens, mask tokens and the trainable decoder pos-embeds.
    Frozen parameters (the encoder sin-cos tables) are left out. ``pretrained`` maps a tower
    name to its parameter names; those groups get the LR ramp (``ramp=True``).
    """
    no_decay = model.no_weight_decay()
    tower_of = {name: tower for tower, names in pretrained.items() for name in names}
    buckets: dict[tuple[str, bool], list] = {}
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        key = (tower_of.get(name, "other"), name not in no_decay)
        buckets.setdefault(key, []).append(p)
    return [
        {
            "params": params,
            "weight_decay": weight_decay if decay else 0.0,
            "name": f"{tower}/{'decay' if decay else 'no_decay'}",
            "ramp": tower != "other",
        }
        for (tower, decay), params in sorted(buckets.items())
    ]


def build_optimizer(
    model: torch.nn.Module,
    cfg: OptimConfig,
    pretrained: dict[str, set[str]],
    lr: float,
    device: torch.device,
) -> torch.optim.AdamW:
    """AdamW over :func:`param_groups`: the fused kernel on CUDA, the multi-tensor one elsewhere
    (one launch per group, not per parameter)."""
    fast = {"fused": True} if device.type == "cuda" else {"foreach": True}
    return torch.optim.AdamW(
        param_groups(model, cfg.weight_decay, pretrained), lr=lr, betas=cfg.betas, **fast
    )


def scaled_lr(cfg, effective_batch: int) -> float:
    """``optim.lr``, else ``optim.blr × effective batch / 256`` (the recipes' linear scaling)."""
    return cfg.lr if cfg.lr is not None else cfg.blr * effective_batch / 256


@dataclass(frozen=True)
class LRSchedule:
    """Linear warm-up then cosine to exactly 0; towers get an extra cosine ramp s0 → s1.

    ``e`` is the fractional epoch ``epoch + step_in_epoch / steps_per_epoch``. The official
    ``min_lr`` is ignored, as in the official code.
    """

    lr: float
    epochs: float
    warmup_epochs: float
    ramp_start: float = 0.0
    ramp_end: float = 1.0
    ramp_epochs: float = 100.0

    @classmethod
    def from_config(cls, cfg: OptimConfig, effective_batch: int) -> LRSchedule:
        ramp = cfg.ramp_epochs if cfg.ramp_epochs is not None else cfg.epochs / 2
        return cls(
            scaled_lr(cfg, effective_batch),
            cfg.epochs,
            cfg.warmup_epochs,
            cfg.ramp_start,
            cfg.ramp_end,
            ramp,
        )

    @classmethod
    def plain(cls, cfg, effective_batch: int) -> LRSchedule:
        """Warm-up + cosine without the tower ramp (the evaluations' recipes)."""
        return cls(scaled_lr(cfg, effective_batch), cfg.epochs, cfg.warmup_epochs, 1.0, 1.0, 0.0)

    def base(self, e: float) -> float:
        if e < self.warmup_epochs:
            return self.lr * e / self.warmup_epochs
        span = max(self.epochs - self.warmup_epochs, 1e-12)
        progress = min((e - self.warmup_epochs) / span, 1.0)
        return self.lr * 0.5 * (1.0 + math.cos(math.pi * progress))

    def ramp(self, e: float) -> float:
        if e >= self.ramp_epochs:
            return self.ramp_end
        return self.ramp_start + (self.ramp_end - self.ramp_start) * (
            0.5 - 0.5 * math.cos(math.pi * e / self.ramp_epochs)
        )

    def apply(self, optimizer: torch.optim.Optimizer, e: float) -> float:
        """Set every group's LR for fractional epoch ``e`` to base(e) × its ``lr_scale`` (layer
        decay; 1 when absent) × the tower ramp for ``ramp`` groups; returns base(e)."""
        base, ramp = self.base(e), self.ramp(e)
        for group in optimizer.param_groups:
            scale = group.get("lr_scale", 1.0) * (ramp if group.get("ramp") else 1.0)
            group["lr"] = base * scale
        return base
