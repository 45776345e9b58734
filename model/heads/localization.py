"""The trained localization variant's head (EZ-VSL-style contrastive projections)."""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn

PROJ_DIM = 128


class Projections(nn.Module):
    """The trained variant's head: ``(patches [B, N, D], query [B, D]) → ([B, N, d], [B, d])``, unit norm."""

    def __init__(self, dim: int, out: int = PROJ_DIM):
        super().__init__()
        self.patch, self.query = nn.Linear(dim, out), nn.Linear(dim, out)

    def forward(self, patches: Tensor, query: Tensor) -> tuple[Tensor, Tensor]:
        return F.normalize(self.patch(patches), dim=-1), F.normalize(self.query(query), dim=-1)
