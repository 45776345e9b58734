"""Dense-task heads (REFERENCE.md §8): pure modules over encoder layer states.

AVSHead (AVBench S4): visual = pre-norm image tokens of four layers (release: [0, 3, 7, 11]),
each LayerNorm'd and laid out as ``[B, D, g, g]``; audio = last-layer audio tokens through a
per-scale Linear(D → c_s) + LayerNorm, token mean, broadcast over the map. Steps: top
DoubleConv on the first layer at ``g``; the other layers upsampled ×2, ×4, ×8 (NOTE: as released,
the deepest layer goes to the finest scale); per stage: bilinear ×2 → concat the skip →
DoubleConv → + audio; finally bilinear ×2 and a 1×1 conv → 1-channel logits at ``16 g``.

SeparationHead (mix-and-separate, the release's UNet: 46,926,241 parameters at D = 768):
audio = pre-norm audio tokens of five layers (release: [11, 8, 5, 2, 0]), each LayerNorm'd into
``[B, D, 8, 12]`` maps; visual = LayerNorm'd mean of the last image tokens, projected per scale
(Linear D → D/2^k) and tiled. Steps: bottom DoubleConv on [last listed layer, visual] at 8×12;
each other layer decoded by a transposed conv ×2, ×4, ×8, ×16 (NOTE: as released, the first
listed — deepest — layer goes to the finest scale) and concatenated with its visual tiles; four
up-stages (transposed conv ×2 → concat that lateral → DoubleConv) down to D/16 channels; a 3×3
conv → mask logits ``[B, 1, 128, 192]``. ``image=None`` gives the audio-only baseline (zero
visual tiles, same architecture).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn
from torch.nn import functional as F

AVS_CHANNELS = (768, 384, 192, 128)


def token_map(x: Tensor, grid: tuple[int, int]) -> Tensor:
    """Tokens ``[B, h·w, D]`` (row-major) → map ``[B, D, h, w]``."""
    b, _, d = x.shape
    return x.transpose(1, 2).reshape(b, d, *grid)


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
        maps = [
            token_map(norm(x), (self.grid,) * 2) for norm, x in zip(self.norms, layers, strict=True)
        ]
        sound = [
            proj(audio).mean(1)[:, :, None, None] for proj in self.audio_proj
        ]  # [B, c_s, 1, 1]
        x = self.top(maps[0]) + sound[0]
        for s, stage in enumerate(self.stages, start=1):
            x = F.interpolate(x, scale_factor=2, mode="bilinear", align_corners=False)
            skip = F.interpolate(maps[s], scale_factor=2**s, mode="bilinear", align_corners=False)
            x = stage(torch.cat((x, skip), 1)) + sound[s]
        return self.out(F.interpolate(x, scale_factor=2, mode="bilinear", align_corners=False))


class UpBlock(nn.Module):
    """``[B, cin, h, w]`` → transposed conv (kernel = stride = ``factor``, so every token decodes
    its own ``factor × factor`` block) to ``cin / factor`` channels → concat ``skip`` → DoubleConv."""

    def __init__(self, cin: int, cout: int, factor: int = 2, skip: int = 0):
        super().__init__()
        self.up = nn.ConvTranspose2d(cin, cin // factor, factor, stride=factor)
        self.conv = DoubleConv(cin // factor + skip, cout)

    def forward(self, x: Tensor, skip: Tensor | None = None) -> Tensor:
        x = self.up(x)
        return self.conv(x if skip is None else torch.cat((x, skip), 1))


class SeparationHead(nn.Module):
    """``(audio layer states 5 × [B, h·w, D] finest scale first, image tokens [B, Ni, D] | None)
    → mask logits [B, 1, 16h, 16w]``; widths D, D/2, D/4, D/8, D/16 from the bottom up."""

    SCALES = 5

    def __init__(self, dim: int, grid: tuple[int, int]):
        super().__init__()
        self.grid = grid
        width = [dim // 2**k for k in range(self.SCALES)]  # bottom (8×12) … finest (×16)
        self.norms = nn.ModuleList(nn.LayerNorm(dim) for _ in width)
        self.visual_norm = nn.LayerNorm(dim)
        self.cond = nn.ModuleList(nn.Linear(dim, c) for c in width)
        self.bottom = DoubleConv(2 * dim, dim)
        self.lateral = nn.ModuleList(
            UpBlock(dim, width[k], factor=2**k) for k in range(1, self.SCALES)
        )
        self.stages = nn.ModuleList(
            UpBlock(width[k - 1], width[k], skip=2 * width[k]) for k in range(1, self.SCALES)
        )
        self.out = nn.Conv2d(width[-1], 1, 3, padding=1)
        self.apply(_init_weights)

    def forward(self, layers: list[Tensor], image: Tensor | None = None) -> Tensor:
        maps = [
            token_map(norm(x), self.grid) for norm, x in zip(self.norms, layers[::-1], strict=True)
        ]
        v = self.visual_norm(image.mean(1)) if image is not None else None
        x = self.bottom(torch.cat((maps[0], self._condition(v, 0, x_like=maps[0])), 1))
        for k, (lateral, stage) in enumerate(zip(self.lateral, self.stages, strict=True), 1):
            lat = lateral(maps[k])
            x = stage(x, torch.cat((lat, self._condition(v, k, x_like=lat)), 1))
        return self.out(x)

    def _condition(self, v: Tensor | None, k: int, x_like: Tensor) -> Tensor:
        """The visual vector projected for scale ``k``, tiled over the map ``[B, c_k, h, w]``
        (zeros for the audio-only baseline)."""
        b, _, h, w = x_like.shape
        c = self.cond[k].out_features
        if v is None:
            return x_like.new_zeros(b, c, h, w)
        return self.cond[k](v)[:, :, None, None].expand(b, c, h, w)


def _init_weights(m: nn.Module) -> None:
    """As released: xavier Linear (zero bias), kaiming (fan-out, relu) convs, unit BatchNorm."""
    if isinstance(m, nn.Linear):
        nn.init.xavier_uniform_(m.weight)
        nn.init.zeros_(m.bias)
    elif isinstance(m, nn.Conv2d | nn.ConvTranspose2d):
        nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
    elif isinstance(m, nn.BatchNorm2d):
        nn.init.ones_(m.weight)
        nn.init.zeros_(m.bias)
