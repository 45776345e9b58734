"""Reference predictions the dense evaluations score next to the model's."""

from __future__ import annotations

import torch
from torch import Tensor


def centred_prior(n: int, height: int, width: int, sigma: float = 0.25) -> Tensor:
    """``[n, H, W]`` centred Gaussian in (0, 1]; ``sigma`` as a fraction of each side.

    At 0.5 it is the centred ellipse with half-axes ``sigma · sqrt(2 ln 2) ≈ 0.29`` of the sides.
    """
    y = (torch.arange(height) + 0.5) / height - 0.5
    x = (torch.arange(width) + 0.5) / width - 0.5
    g = torch.exp(-(y[:, None] ** 2 + x[None] ** 2) / (2 * sigma * sigma))
    return g.expand(n, height, width)
