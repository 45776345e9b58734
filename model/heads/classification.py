"""Classifier over the encoder: one linear head per modality (REFERENCE.md §8).

Per modality (image, audio, fusion): token mean (fusion: all F tokens) → optional
BatchNorm1d(D, affine=False, eps 1e-6) (linear probe) → Linear(D, C) (xavier weight; bias zero or
from class frequencies). The prediction ("all") is the mean of the three logit sets.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from ..deepavfusion import DeepAVFusion

HEADS = ("image", "audio", "fusion")
ALL_HEADS = (*HEADS, "all")


def frequency_bias(freq: Tensor) -> Tensor:
    """Bias init from class frequencies ``f`` [C]: log((f + 1e-3) / (1 − f + 1e-3))."""
    return torch.log((freq + 1e-3) / (1 - freq + 1e-3))


class AVClassifier(nn.Module):
    """``(image [B,3,H,W], audio [B,1,F,T]) → {"image", "audio", "fusion", "all"}: logits [B, C]``.

    ``frozen``: the encoder takes no gradients and stays in eval mode whatever ``train()`` says
    (linear probe); its parameters are not trainable, so only the heads (6 tensors) are.
    """

    def __init__(
        self,
        encoder: DeepAVFusion,
        num_classes: int,
        batchnorm: bool,
        frozen: bool,
        bias: Tensor | None = None,
    ):
        super().__init__()
        self.encoder, self.frozen = encoder, frozen
        dim = encoder.fusion_tokens.shape[-1]
        if frozen:
            encoder.requires_grad_(False)
        self.norms = (
            nn.ModuleDict({m: nn.BatchNorm1d(dim, affine=False, eps=1e-6) for m in HEADS})
            if batchnorm
            else None
        )
        self.heads = nn.ModuleDict({m: nn.Linear(dim, num_classes) for m in HEADS})
        for head in self.heads.values():
            nn.init.xavier_uniform_(head.weight)
            with torch.no_grad():
                head.bias.copy_(bias if bias is not None else torch.zeros(num_classes))

    def train(self, mode: bool = True) -> AVClassifier:
        super().train(mode)
        if self.frozen:
            self.encoder.train(False)
        return self

    def forward(self, image: Tensor, audio: Tensor) -> dict[str, Tensor]:
        with torch.set_grad_enabled(torch.is_grad_enabled() and not self.frozen):
            pooled = self.encoder(image, audio).pooled
        logits = {}
        for m in HEADS:
            x = pooled[m]
            logits[m] = self.heads[m](self.norms[m](x) if self.norms is not None else x)
        logits["all"] = (logits["image"] + logits["audio"] + logits["fusion"]) / 3
        return logits
