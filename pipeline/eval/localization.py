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

from model.heads.localization import Projections
from pipeline.data.dense import DenseSpec
from pipeline.engine.distributed import DistInfo
from pipeline.engine.loop import Engine
from pipeline.eval import avs
from pipeline.eval.config import EvalConfig
from pipeline.eval.dense import DenseTask, score_frames
from pipeline.eval.encoder import LoadedEncoder, load_encoder
from pipeline.eval.figures import heatmap_grid
from pipeline.eval.metrics.localization import LocalizationScores
from pipeline.eval.run import run_folder

TEMPERATURE = 0.07


class Localization(DenseTask):
    """Similarity maps of a frozen encoder's patch tokens and the clip's query embedding;
    ``head``: the trained variant's projections (None: training-free)."""

    def __init__(self, cfg: EvalConfig, info: DistInfo, enc: LoadedEncoder, trained: bool):
        enc.encoder.requires_grad_(False)
        head = Projections(enc.config.embed_dim).to(info.device) if trained else None
        super().__init__(cfg, info, enc, head, DenseSpec())
        self.chosen = self.layer(cfg.localization.layer)

    def tokens(self, encoder, image: Tensor, audio: Tensor) -> tuple[Tensor, Tensor]:
        """(final-normed patch tokens of the chosen layer ``[B, N, D]``, query ``[B, D]``)."""
        with torch.no_grad():
            out = encoder(image, audio, return_layers=True)
            patches = encoder.image.norm(out.layers[self.chosen][0])
            query = out.fusion if self.cfg.localization.embedding == "fusion" else out.audio
        return patches, query.mean(1)

    def forward(self, encoder, head, image: Tensor, audio: Tensor, train: bool = False) -> Tensor:
        """Training: ``[B img, B aud]`` pair scores (max patch similarity / temperature);
        scoring: ``[B, S, S]`` similarity maps at frame resolution."""
        patches, query = self.tokens(encoder, image, audio)
        if head is not None:
            patches, query = head(patches, query)
        if train:
            return torch.einsum("bnd,cd->bcn", patches, query).amax(-1) / TEMPERATURE
        sim = torch.einsum("bnd,bd->bn", F.normalize(patches, dim=-1), F.normalize(query, dim=-1))
        grid = sim.view(-1, 1, self.grid, self.grid)
        size = (self.size, self.size)
        return F.interpolate(grid, size=size, mode="bilinear", align_corners=False)[:, 0]

    def loss(self, engine, batch: dict) -> Tensor:
        """EZ-VSL's symmetric InfoNCE: each clip's own frame wins over the batch's others."""
        scores = engine(*self.inputs(batch), train=True).float()
        target = torch.arange(len(scores), device=scores.device)
        return (F.cross_entropy(scores, target) + F.cross_entropy(scores.T, target)) / 2

    def heatmap(self, module: nn.Module, batch: dict) -> Tensor:
        return module(*self.inputs(batch))


def run(cfg: EvalConfig, info: DistInfo) -> dict:
    variant = cfg.localization.trained
    if variant == "masks":
        task, engine = avs.train(cfg, info, frozen=True)
        module, folder, step, predict = (
            engine.module,
            engine.folder,
            engine.progress.step,
            task.probabilities,
        )
    else:
        torch.manual_seed(cfg.train.seed)
        enc = load_encoder(cfg.encoder)
        task = Localization(cfg, info, enc, trained=variant == "contrastive")
        folder = run_folder(cfg, info, enc)
        if variant == "contrastive":
            engine = Engine(cfg.engine_spec(), info, task, folder)
            engine.fit()
            module, step = engine.module, engine.progress.step
        else:  # training-free: nothing to train, the map is the encoder's
            folder.start(None, {"world_size": info.world_size})
            module, step = task.model().to(info.device), 0
        predict = task.heatmap
    metrics, shown = score_frames(
        task,
        module,
        predict,
        LocalizationScores,
        cfg.localization.prior_sigma,
        cfg.localization.artifacts,
        soft_truth=True,  # Flickr-SoundNet's annotator consensus (0 / 0.5 / 1)
    )
    return avs.finish(folder, step, metrics, shown, heatmap_grid, "localization_heatmaps.png")
