"""Separation head: the release's ``AVSrcSepUNet`` (official ``models/avsrcsep.py``,
stoneMo/DeepAVFusion at 2768e7f), 46,926,241 parameters at D = 768.

Inputs (what the release's ``AVSrcSep`` feeds it): the encoder's per-layer audio states *before*
the final norm, five layers finest scale first (release:
``np.linspace(0, depth − 1, 5)[::-1]`` → [11, 8, 5, 2, 0]), and the last layer's pre-norm image
tokens (``all_embs[-1][0]``, not the final-normed ones). Widths from the bottom up
``w = (D, D/2, D/4, D/8, D/16)``; audio grid (h, w) = (8, 12) at 128 × 192.

Steps:
1. audio: layer i → ``xa_norm[i]`` (LayerNorm) → map ``[B, D, h, w]``; visual:
   ``xv_norm`` (LayerNorm) of every image token, then the token mean ``[B, D]`` (NOTE: the
   release normalises before the mean); per scale k, ``cond[k]`` (Linear D → w_k) tiled.
2. top (bottom of the UNet): DoubleConv(2D → D) on [last listed layer ; visual 0] at h × w.
3. for k = 1 … 4: lateral = transposed conv ×2^k (kernel = stride, so each token decodes its own
   block of mel bins and frames) → DoubleConv → w_k channels, of listed layer 4 − k,
   concatenated with visual k tiled; ``up[k−1]``: transposed conv ×2 → concat → DoubleConv → w_k.
   NOTE: as released, the first listed (deepest) layer decodes at the finest scale.
4. ``pred``: 3×3 conv → mask logits ``[B, 1, 16h, 16w]``.
``image=None`` gives the audio-only baseline (zero visual tiles, same architecture; not in the
release).

Module names follow the release except that its numbered attributes are lists here:
``cond.k`` ↔ ``cond{5−k}``, ``lat.j`` ↔ ``lat{4−j}``, ``up.j`` ↔ ``up{4−j}``
(``model.heads.keys.adapt_head_keys``).
"""

from __future__ import annotations

from functools import partial

import torch
from torch import Tensor, nn

from model.deepavfusion import EncoderOutput

from .blocks import DoubleConv, Up, release_init, tile, token_map

SCALES = 5


class SeparationHead(nn.Module):
    """``(audio states 5 × [B, h·w, D] finest scale first, image tokens [B, Ni, D] | None)
    → mask logits [B, 1, 16h, 16w]``."""

    def __init__(self, dim: int, grid: tuple[int, int]):
        super().__init__()
        self.grid = tuple(grid)
        width = [dim // 2**k for k in range(SCALES)]  # bottom (h × w) … finest (×16)
        self.xv_norm = nn.LayerNorm(dim)
        self.xa_norm = nn.ModuleList(nn.LayerNorm(dim) for _ in width)
        self.cond = nn.ModuleList(nn.Linear(dim, w) for w in width)
        self.top = DoubleConv(2 * dim, dim)
        self.lat = nn.ModuleList(Up(dim, width[k], factor=2**k) for k in range(1, SCALES))
        self.up = nn.ModuleList(
            Up(width[k - 1], width[k], skip=width[k - 1]) for k in range(1, SCALES)
        )
        self.pred = nn.Conv2d(width[-1], 1, 3, padding=1)
        self.apply(partial(release_init, conv_bias=False))

    def forward(self, layers: list[Tensor], image: Tensor | None = None) -> Tensor:
        maps = [token_map(norm(x), self.grid) for norm, x in zip(self.xa_norm, layers, strict=True)]
        v = self.xv_norm(image).mean(1) if image is not None else None
        x = self.top(torch.cat((maps[-1], self._visual(v, 0, maps[-1])), 1))
        for k, (lat, up) in enumerate(zip(self.lat, self.up, strict=True), 1):
            skip = lat(maps[-1 - k])
            x = up(x, torch.cat((skip, self._visual(v, k, skip)), 1))
        return self.pred(x)

    def from_encoder(self, out: EncoderOutput, layers: list[int], visual: bool = True) -> Tensor:
        """The release's wiring: pre-norm audio states of ``layers`` and the last layer's
        pre-norm image tokens (``visual=False``: the audio-only baseline, no visual tiles)."""
        image = out.layers[-1][0] if visual else None
        return self([out.layers[i][1] for i in layers], image)

    def _visual(self, v: Tensor | None, k: int, like: Tensor) -> Tensor:
        """The visual vector projected for scale ``k`` and tiled over the map ``like``
        ``[B, ·, h, w]`` → ``[B, w_k, h, w]`` (zeros for the audio-only baseline)."""
        b, _, h, w = like.shape
        if v is None:
            return like.new_zeros(b, self.cond[k].out_features, h, w)
        return tile(self.cond[k](v), (h, w))
