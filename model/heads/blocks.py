"""Building blocks shared by the dense-task heads (the release's UNet parts).

Facts from the official ``models/avsrcsep.py`` (stoneMo/DeepAVFusion at 2768e7f), which both of
its dense heads import: ``DoubleConv`` is (3×3 conv, no bias → BatchNorm → ReLU) × 2 under the
attribute ``double_conv``; ``Up`` with ``bilinear=False`` is a transposed convolution with kernel =
stride = ``factor`` to ``cin / factor`` channels (so every input position decodes its own
``factor × factor`` block), optionally concatenated with a second input, then a DoubleConv.
Attribute names follow the release so that state-dict keys match it.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor, nn


def token_map(x: Tensor, grid: tuple[int, int]) -> Tensor:
    """Tokens ``[B, h·w, D]`` (row-major) → map ``[B, D, h, w]``."""
    b, _, d = x.shape
    return x.transpose(1, 2).reshape(b, d, *grid)


def tile(v: Tensor, size: tuple[int, int]) -> Tensor:
    """A vector per sample ``[B, C]`` repeated over a map ``[B, C, h, w]``."""
    return v[:, :, None, None].expand(*v.shape, *size)


def release_layers(depth: int, n: int) -> list[int]:
    """The layers the release's heads read: ``np.linspace(0, depth − 1, n).astype(int)``
    (ViT-B: n = 4 → [0, 3, 7, 11]; n = 5 → [0, 2, 5, 8, 11])."""
    return [int(i) for i in np.linspace(0, depth - 1, n, endpoint=True).astype(int)]


class DoubleConv(nn.Module):
    """``[B, cin, h, w]`` → (3×3 conv → BatchNorm → ReLU) × 2 → ``[B, cout, h, w]``."""

    def __init__(self, cin: int, cout: int):
        super().__init__()
        self.double_conv = nn.Sequential(
            nn.Conv2d(cin, cout, 3, padding=1, bias=False),
            nn.BatchNorm2d(cout),
            nn.ReLU(inplace=True),
            nn.Conv2d(cout, cout, 3, padding=1, bias=False),
            nn.BatchNorm2d(cout),
            nn.ReLU(inplace=True),
        )

    def forward(self, x: Tensor) -> Tensor:
        return self.double_conv(x)


class Up(nn.Module):
    """``x [B, cin, h, w]`` (, ``skip [B, skip, f·h, f·w]``) → ``[B, cout, f·h, f·w]``: transposed
    conv (kernel = stride = ``factor``) to ``cin // factor`` channels → concat ``skip`` → DoubleConv."""

    def __init__(self, cin: int, cout: int, factor: int = 2, skip: int = 0):
        super().__init__()
        self.up = nn.ConvTranspose2d(cin, cin // factor, factor, stride=factor)
        self.conv = DoubleConv(cin // factor + skip, cout)

    def forward(self, x: Tensor, skip: Tensor | None = None) -> Tensor:
        x = self.up(x)
        return self.conv(x if skip is None else torch.cat((x, skip), 1))


def release_init(module: nn.Module, conv_bias: bool) -> None:
    """The release's head init over ``module.modules()``: xavier-uniform Linear weights with zero
    bias; kaiming-normal (fan-out, ReLU) conv and transposed-conv kernels; BatchNorm and LayerNorm
    weight 1, bias 0. ``conv_bias``: also zero the conv biases (the AVS head does; NOTE: the
    separation UNet's init leaves them at PyTorch's default uniform draw, as released)."""
    for m in module.modules():
        if isinstance(m, nn.Linear):
            nn.init.xavier_uniform_(m.weight)
            nn.init.zeros_(m.bias)
        elif isinstance(m, nn.Conv2d | nn.ConvTranspose2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            if conv_bias and m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.BatchNorm2d | nn.LayerNorm):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
