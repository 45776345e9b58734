"""Visual sound localization: a heatmap per frame from a pretrained encoder, scored with cIoU /
AUC against the masks next to a centred prior (definitions in docs/EVAL.md).

Training-free map (default): cosine similarity between the clip's query embedding (audio token
mean, or fusion token mean with ``localization.embedding: fusion``) and every final-normed patch
token of image layer ``localization.layer``, bilinearly upsampled to the frame.
Trained variants (the encoder stays frozen, only a small head learns on ``data.train``):
- ``contrastive``: two linear maps (patch → 128, query → 128) with the EZ-VSL objective — the
  audio-visual score of a pair is the maximum patch similarity, and a symmetric InfoNCE
  (temperature 0.07) makes each clip's own frame win over the batch's other frames. No mask is
  used; the heatmap is the similarity of the projected tokens.
- ``masks``: the AVS head (``avs.layers`` / ``avs.channels``) trained with BCE on the training
  masks; the heatmap is its sigmoid map. Supervised, so it is a ceiling rather than a VSL method.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from model.heads import AVSHead
from pipeline.distributed import DistInfo
from pipeline.eval.avs import avs_logits, train_avs
from pipeline.eval.config import EvalConfig
from pipeline.eval.dense_data import DenseSpec
from pipeline.eval.dense_figures import heatmap_grid
from pipeline.eval.dense_loop import DenseModel, DenseRun
from pipeline.eval.metrics.localization import LocalizationScores

PROJ_DIM, TEMPERATURE = 128, 0.07


class Projections(nn.Module):
    """The trained variant's head: ``(patches [B, N, D], query [B, D]) → ([B, N, d], [B, d])``, unit norm."""

    def __init__(self, dim: int, out: int = PROJ_DIM):
        super().__init__()
        self.patch, self.query = nn.Linear(dim, out), nn.Linear(dim, out)

    def forward(self, patches: Tensor, query: Tensor) -> tuple[Tensor, Tensor]:
        return F.normalize(self.patch(patches), dim=-1), F.normalize(self.query(query), dim=-1)


def run(cfg: EvalConfig, info: DistInfo) -> dict:
    r = DenseRun(cfg, info)
    r.layer(cfg.localization.layer)
    r.encoder.requires_grad_(False)
    r.encoder.eval()
    variant = cfg.localization.trained
    if variant == "masks":
        model = train_avs(r, frozen=True)
    else:
        model = DenseModel(
            r.encoder,
            Projections(r.mcfg.embed_dim).to(info.device) if variant == "contrastive" else None,
        )
    if variant == "contrastive":
        spec = DenseSpec(r.size, r.audio, train=True)
        r.train(model, spec, lambda m, batch: _contrastive_loss(r, getattr(m, "module", m), batch))
    return _evaluate(r, model)


def _tokens(r: DenseRun, batch: dict) -> tuple[Tensor, Tensor]:
    """(final-normed patch tokens of the chosen layer ``[B, N, D]``, query embedding ``[B, D]``)."""
    with torch.no_grad():
        out = r.encoder(r.image(batch), batch["audio"].to(r.info.device), return_layers=True)
        patches = r.encoder.image.norm(out.layers[r.layer(r.cfg.localization.layer)][0])
        query = (out.fusion if r.cfg.localization.embedding == "fusion" else out.audio).mean(1)
    return patches, query


def _contrastive_loss(r: DenseRun, model: DenseModel, batch: dict) -> Tensor:
    patches, query = model.head(*_tokens(r, batch))
    scores = torch.einsum("bnd,cd->bcn", patches, query).amax(-1) / TEMPERATURE  # [B img, B aud]
    target = torch.arange(len(scores), device=scores.device)
    return (F.cross_entropy(scores, target) + F.cross_entropy(scores.T, target)) / 2


def heatmap(r: DenseRun, model: DenseModel, batch: dict) -> Tensor:
    """``[B, S, S]`` similarity map at frame resolution."""
    if isinstance(model.head, AVSHead):
        with torch.no_grad():
            return torch.sigmoid(
                avs_logits(model, r, [r.layer(i) for i in r.cfg.avs.layers], batch)
            ).cpu()
    patches, query = _tokens(r, batch)
    if model.head is not None:
        with torch.no_grad():
            patches, query = model.head(patches, query)
    sim = torch.einsum("bnd,bd->bn", F.normalize(patches, dim=-1), F.normalize(query, dim=-1))
    grid = sim.view(-1, 1, r.grid, r.grid)
    return F.interpolate(grid, size=(r.size, r.size), mode="bilinear", align_corners=False)[
        :, 0
    ].cpu()


def _evaluate(r: DenseRun, model: DenseModel) -> dict:
    return r.score_masked_frames(
        lambda batch: heatmap(r, model, batch),
        LocalizationScores,
        lambda scores, heat, batch: scores.update(heat, batch["mask"]),
        r.cfg.localization.prior_sigma,
        r.cfg.localization.artifacts,
        heatmap_grid,
        "localization_heatmaps.png",
    )
