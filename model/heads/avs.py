"""AVS segmentation head: the decoder of the release's ``AVSegmSimple`` (official
``models/avsegm.py``, stoneMo/DeepAVFusion at 2768e7f), 37,795,201 parameters at D = 768.

Inputs (what the release feeds it): the encoder's per-layer states *before* the final norms —
the image tokens of four layers (release: ``np.linspace(0, depth − 1, 4)`` → [0, 3, 7, 11]) and
the audio tokens of the last layer. Widths per scale ``c = (c0, c1, c2, c3)``, release
``max(128, D // s)`` for s = 1, 2, 4, 8 → (768, 384, 192, 128).

Steps, with g the image token grid (14 at 224 px):
1. visual: per layer d, ``normv[d]`` (LayerNorm, eps 1e-5) → map ``[B, D, g, g]``;
   audio: per scale d, ``norma[d](proja[d](tokens))`` (Linear D → c_d, LayerNorm) → token mean
   ``[B, c_d]`` (NOTE: the release normalises before the mean).
2. top: DoubleConv(2D → D) on [visual 0 ; audio 0 tiled over g × g].
3. for d = 1, 2, 3: lateral ``lat[d−1]`` = transposed conv ×2^d (kernel = stride) on visual d →
   DoubleConv → ``[B, c_d, 2^d g, 2^d g]``, concatenated with audio d tiled; ``up[d−1]``:
   transposed conv ×2 of the running map → concat that lateral → DoubleConv → c_d channels.
   NOTE: as released, the later (deeper) layers decode at the finer scales.
4. predictor: 3×3 conv (c3 → 128) → bilinear ×2 → 3×3 conv (128 → classes): logits at 16 g.
"""

from __future__ import annotations

from functools import partial

import torch
from torch import Tensor, nn

from model.deepavfusion import EncoderOutput

from .blocks import DoubleConv, Up, release_init, tile, token_map

SCALES = (1, 2, 4, 8)
PREDICTOR_WIDTH = 128  # the release's fixed width of the last two convolutions


def release_avs_channels(dim: int) -> tuple[int, ...]:
    """The release's widths per scale: ``max(128, D // s)`` for s = 1, 2, 4, 8."""
    return tuple(max(128, dim // s) for s in SCALES)


class AVSHead(nn.Module):
    """``(image states 4 × [B, g², D], audio tokens [B, Na, D]) → logits [B, classes, 16g, 16g]``."""

    def __init__(
        self,
        dim: int,
        grid: int,
        channels: tuple[int, ...] | None = None,
        num_classes: int = 1,
    ):
        super().__init__()
        c = tuple(channels) if channels is not None else release_avs_channels(dim)
        if len(c) != len(SCALES) or c[0] != dim:
            # NOTE: the release's own rule breaks below D = 128 (its top block expects 2D inputs
            # but gets D + 128); smaller models name their widths, the first equal to D.
            raise ValueError(f"AVSHead: 4 widths, the first equal to D = {dim}; got {c}")
        self.grid = (grid, grid)
        self.normv = nn.ModuleList(nn.LayerNorm(dim) for _ in SCALES)
        self.proja = nn.ModuleList(nn.Linear(dim, w) for w in c)
        self.norma = nn.ModuleList(nn.LayerNorm(w) for w in c)
        self.top = DoubleConv(2 * dim, dim)
        self.lat = nn.ModuleList(Up(dim, c[d], factor=SCALES[d]) for d in range(1, len(c)))
        self.up = nn.ModuleList(Up(c[d], c[d + 1], skip=2 * c[d + 1]) for d in range(len(c) - 1))
        self.predictor = nn.Sequential(
            nn.Conv2d(c[-1], PREDICTOR_WIDTH, 3, padding=1),
            nn.Upsample(scale_factor=2, mode="bilinear", align_corners=False),
            nn.Conv2d(PREDICTOR_WIDTH, num_classes, 3, padding=1),
        )
        self.apply(partial(release_init, conv_bias=True))

    def forward(self, layers: list[Tensor], audio: Tensor) -> Tensor:
        visual = [token_map(norm(x), self.grid) for norm, x in zip(self.normv, layers, strict=True)]
        sound = [
            norm(proj(audio)).mean(1) for norm, proj in zip(self.norma, self.proja, strict=True)
        ]
        x = self.top(torch.cat((visual[0], tile(sound[0], self.grid)), 1))
        for lat, up, v, a in zip(self.lat, self.up, visual[1:], sound[1:], strict=True):
            v = lat(v)
            x = up(x, torch.cat((v, tile(a, v.shape[2:])), 1))
        return self.predictor(x)

    def from_encoder(self, out: EncoderOutput, layers: list[int]) -> Tensor:
        """The release's wiring: pre-norm image states of ``layers`` and the last layer's
        pre-norm audio tokens (``out`` from ``encoder(..., return_layers=True)``)."""
        return self([out.layers[i][0] for i in layers], out.layers[-1][1])
