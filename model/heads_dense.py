"""Dense-task heads (REFERENCE.md §8): pure modules over encoder layer states.

AVSHead (AVBench S4): visual = pre-norm image tokens of four layers (release: [0, 3, 7, 11]),
each LayerNorm'd and laid out as ``[B, D, g, g]``; audio = last-layer audio tokens through a
per-scale Linear(D → c_s) + LayerNorm, token mean, broadcast over the map. Steps: top
DoubleConv on the first layer at ``g``; the other layers upsampled ×2, ×4, ×8 (NOTE: as released,
the deepest layer goes to the finest scale); per stage: bilinear ×2 → concat the skip →
DoubleConv → + audio; finally bilinear ×2 and a 1×1 conv → 1-channel logits at ``16 g``.

SeparationHead (mix-and-separate): audio = pre-norm audio tokens of five layers (release:
[11, 8, 5, 2, 0]), each LayerNorm'd into ``[B, D, 8, 12]`` maps; visual = LayerNorm'd mean of the
last image tokens. Steps: bottom DoubleConv on the first (deepest) layer at 8×12; four
up-stages (bilinear ×2 → concat the next layer's map upsampled to the same size → DoubleConv);
after the bottom and every stage the visual vector modulates the features (FiLM: ``x·(1+γ)+β``;
NOTE: the release's exact conditioning is not reproduced); a 1×1 conv → mask logits
``[B, 1, 128, 192]``. ``visual=False`` builds the audio-only baseline (no modulation).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn
from torch.nn import functional as F

AVS_CHANNELS = (768, 384, 192, 128)


class DoubleConv(nn.Module):
    """(3×3 conv → BatchNorm → ReLU) × 2."""

    def __init__(self, cin: int, cout: int):
        super().__init__()
        self.net = nn.Sequential(
            nn.Conv2d(cin, cout, 3, padding=1, bias=False),
            nn.BatchNorm2d(cout),
            nn.ReLU(inplace=True),
            nn.Conv2d(cout, cout, 3, padding=1, bias=False),
            nn.BatchNorm2d(cout),
            nn.ReLU(inplace=True),
        )

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x)


class AVSHead(nn.Module):
    """``(image layer states 4 × [B, g², D], audio tokens [B, Na, D]) → logits [B, 1, 16g, 16g]``."""

    def __init__(self, dim: int, grid: int, channels: tuple[int, ...] = AVS_CHANNELS):
        super().__init__()
        if len(channels) != 4:
            raise ValueError(f"AVSHead: 4 channel widths (one per layer), got {channels}")
        self.grid = grid
        self.norms = nn.ModuleList(nn.LayerNorm(dim, eps=1e-6) for _ in channels)
        self.audio_proj = nn.ModuleList(
            nn.Sequential(nn.Linear(dim, c), nn.LayerNorm(c)) for c in channels
        )
        self.top = DoubleConv(dim, channels[0])
        self.stages = nn.ModuleList(
            DoubleConv(cin + dim, cout) for cin, cout in zip(channels, channels[1:], strict=False)
        )
        self.out = nn.Conv2d(channels[-1], 1, 1)

    def forward(self, layers: list[Tensor], audio: Tensor) -> Tensor:
        maps = [self._grid(norm(x)) for norm, x in zip(self.norms, layers, strict=True)]
        sound = [
            proj(audio).mean(1)[:, :, None, None] for proj in self.audio_proj
        ]  # [B, c_s, 1, 1]
        x = self.top(maps[0]) + sound[0]
        for s, stage in enumerate(self.stages, start=1):
            x = F.interpolate(x, scale_factor=2, mode="bilinear", align_corners=False)
            skip = F.interpolate(maps[s], scale_factor=2**s, mode="bilinear", align_corners=False)
            x = stage(torch.cat((x, skip), 1)) + sound[s]
        return self.out(F.interpolate(x, scale_factor=2, mode="bilinear", align_corners=False))

    def _grid(self, x: Tensor) -> Tensor:
        b, n, d = x.shape
        return x.transpose(1, 2).reshape(b, d, self.grid, self.grid)


class SeparationHead(nn.Module):
    """``(audio layer states 5 × [B, h·w, D], image tokens [B, Ni, D] | None) → logits [B, 1, 16h, 16w]``
    (16 = 2^4 up-stages)."""

    def __init__(
        self, dim: int, grid: tuple[int, int], channels: tuple[int, ...], visual: bool = True
    ):
        super().__init__()
        self.grid = grid
        self.norms = nn.ModuleList(nn.LayerNorm(dim, eps=1e-6) for _ in channels)
        self.bottom = DoubleConv(dim, channels[0])
        self.stages = nn.ModuleList(
            DoubleConv(cin + dim, cout) for cin, cout in zip(channels, channels[1:], strict=False)
        )
        self.visual_norm = nn.LayerNorm(dim, eps=1e-6) if visual else None
        self.film = nn.ModuleList(nn.Linear(dim, 2 * c) for c in channels) if visual else None
        self.out = nn.Conv2d(channels[-1], 1, 1)

    def forward(self, layers: list[Tensor], image: Tensor | None = None) -> Tensor:
        maps = [self._grid(norm(x)) for norm, x in zip(self.norms, layers, strict=True)]
        v = self.visual_norm(image.mean(1)) if self.visual_norm is not None else None
        x = self._modulate(self.bottom(maps[0]), v, 0)
        for s, stage in enumerate(self.stages, start=1):
            x = F.interpolate(x, scale_factor=2, mode="bilinear", align_corners=False)
            skip = F.interpolate(maps[s], size=x.shape[-2:], mode="bilinear", align_corners=False)
            x = self._modulate(stage(torch.cat((x, skip), 1)), v, s)
        return self.out(x)

    def _modulate(self, x: Tensor, v: Tensor | None, s: int) -> Tensor:
        if v is None:
            return x
        gamma, beta = self.film[s](v)[:, :, None, None].chunk(2, dim=1)
        return x * (1 + gamma) + beta

    def _grid(self, x: Tensor) -> Tensor:
        b, n, d = x.shape
        return x.transpose(1, 2).reshape(b, d, *self.grid)
