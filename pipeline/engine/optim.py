"""Optimisers and learning rates of the downstream recipes (REFERENCE.md §8).

- :class:`LARS` (linear probe): SGD momentum 0.9 whose update of every ≥ 2-D tensor is rescaled by
  trust · ‖p‖ / ‖g + wd·p‖ (MAE's LARS; 1-D tensors — biases — get no adaptation and no decay).
- :func:`layer_decay_groups` (fine-tune, dense tasks): AdamW groups with layer-wise LR scales
  0.75^(L+1 − id) and weight decay on ≥ 2-D parameters only.
The LR of every group is set by :class:`pipeline.engine.schedule.LRSchedule` (its ``lr_scale``).
"""

from __future__ import annotations

import re

import torch
from torch import nn


class LARS(torch.optim.Optimizer):
    """Layer-wise adaptive rate scaling; per-tensor norms, so it needs whole (unflattened) tensors."""

    def __init__(
        self,
        params,
        lr: float = 0.0,
        weight_decay: float = 0.0,
        momentum: float = 0.9,
        trust_coefficient: float = 0.001,
    ):
        super().__init__(
            params,
            dict(
                lr=lr,
                weight_decay=weight_decay,
                momentum=momentum,
                trust_coefficient=trust_coefficient,
            ),
        )

    @torch.no_grad()
    def step(self, closure=None):
        loss = closure() if closure is not None else None
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is None:
                    continue
                update = p.grad
                if p.ndim > 1:  # NOTE: biases / norm weights: no decay, no trust ratio (MAE LARS)
                    update = update.add(p, alpha=group["weight_decay"])
                    p_norm, u_norm = torch.norm(p), torch.norm(update)
                    one = torch.ones_like(p_norm)
                    ratio = torch.where(
                        p_norm > 0,
                        torch.where(u_norm > 0, group["trust_coefficient"] * p_norm / u_norm, one),
                        one,
                    )
                    update = update.mul(ratio)
                state = self.state[p]
                if "mu" not in state:
                    state["mu"] = torch.zeros_like(p)
                mu = state["mu"]
                mu.mul_(group["momentum"]).add_(update)
                p.add_(mu, alpha=-group["lr"])
        return loss


_LAYER_PATTERNS = (
    (re.compile(r"^(fusion_tokens|(image|audio)\.(patch_embed|pos_embed)\b)"), lambda m, depth: 0),
    (
        re.compile(r"^((image|audio)\.blocks|fusion_blocks)\.(\d+)\."),
        lambda m, depth: int(m.group(3)) + 1,
    ),
    (re.compile(r"^((image|audio)\.norm|fusion_norm)\."), lambda m, depth: depth + 1),
)


def layer_id(name: str, depth: int, encoder_prefix: str = "encoder.") -> int:
    """Layer-decay id of parameter ``name`` (REFERENCE §8): patch embeds, pos tables and fusion
    tokens 0; block i of a tower or of the fusion stack i + 1; final norms and every parameter
    outside the encoder (heads, decoders) depth + 1."""
    if not name.startswith(encoder_prefix):
        return depth + 1
    local = name[len(encoder_prefix) :]
    for pattern, layer in _LAYER_PATTERNS:
        match = pattern.match(local)
        if match:
            return layer(match, depth)
    raise ValueError(f"layer_id: encoder parameter {name!r} has no layer-decay id")


def layer_decay_groups(
    model: nn.Module,
    depth: int,
    weight_decay: float,
    layer_decay: float,
    encoder_prefix: str = "encoder.",
) -> list[dict]:
    """Parameter groups (trainable parameters only) keyed by (layer id, decay):
    ``lr_scale`` = layer_decay^(depth + 1 − id), ``weight_decay`` on ≥ 2-D tensors, 0 on 1-D."""
    groups: dict[tuple[int, bool], dict] = {}
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        lid, decay = layer_id(name, depth, encoder_prefix), p.ndim > 1
        group = groups.setdefault(
            (lid, decay),
            {
                "params": [],
                "name": f"layer{lid}/{'decay' if decay else 'no_decay'}",
                "weight_decay": weight_decay if decay else 0.0,
                "lr_scale": layer_decay ** (depth + 1 - lid),
            },
        )
        group["params"].append(p)
    return [groups[k] for k in sorted(groups)]
