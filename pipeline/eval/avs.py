"""AVS segmentation, AVSBench S4 protocol (REFERENCE.md §8): encoder + AVSHead trained with
BCE-with-logits on (frame, mask) pairs, scored with mIoU / F-score next to a centred prior.

Steps: training items (one random masked frame per sample, audio jitter, the training set passed
``avs.oversample`` times per epoch) → head on the image states of ``avs.layers`` and the last
audio tokens → BCE → AdamW with layer decay → evaluation on every masked frame of ``data.test``:
the model's sigmoid map and the centred Gaussian prior, each into a :class:`SegmentationScores`
(frames grouped by clip key, the video of ``fscore_avsbench``) → sums over ranks → metrics +
``baseline_`` twins → overlays (frame | truth | prediction).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from model.heads import AVSHead
from pipeline.distributed import DistInfo
from pipeline.eval.config import EvalConfig
from pipeline.eval.dense_data import DenseSpec
from pipeline.eval.dense_figures import overlay_grid
from pipeline.eval.dense_loop import DenseModel, DenseRun
from pipeline.eval.metrics.segmentation import SegmentationScores


def run(cfg: EvalConfig, info: DistInfo) -> dict:
    r = DenseRun(cfg, info)
    model = train_avs(r)
    return _evaluate(r, model, [r.layer(i) for i in cfg.avs.layers])


def train_avs(r: DenseRun, frozen: bool = False) -> DenseModel:
    """The encoder + AVSHead trained on ``data.train`` (``frozen``: the head only)."""
    info, acfg = r.info, r.cfg.avs
    layers = [r.layer(i) for i in acfg.layers]
    head = AVSHead(r.mcfg.embed_dim, r.grid, tuple(acfg.channels)).to(info.device)
    r.encoder.requires_grad_(not frozen)
    model = DenseModel(r.encoder, head)
    train_spec = DenseSpec(
        r.size, r.audio, masks=True, train=True, jitter_seconds=acfg.audio_jitter
    )

    def loss_fn(m: nn.Module, batch: dict) -> Tensor:
        logits = avs_logits(m, r, layers, batch)
        return F.binary_cross_entropy_with_logits(logits, batch["mask"].float().to(logits.device))

    r.train(model, train_spec, loss_fn, passes=acfg.oversample)
    return model


def avs_logits(m: nn.Module, r: DenseRun, layers: list[int], batch: dict) -> Tensor:
    """``[B, S, S]`` mask logits (the release's wiring: pre-norm image states of ``layers``, the
    last layer's pre-norm audio tokens)."""
    m = getattr(m, "module", m)
    out = m.encoder(r.image(batch), batch["audio"].to(r.info.device), return_layers=True)
    return m.head.from_encoder(out, layers)[:, 0]


def _evaluate(r: DenseRun, model: DenseModel, layers: list[int]) -> dict:
    return r.score_masked_frames(
        lambda batch: torch.sigmoid(avs_logits(model, r, layers, batch)).cpu(),
        SegmentationScores,
        lambda scores, prob, batch: scores.update(prob, batch["mask"], batch["key"]),
        r.cfg.avs.prior_sigma,
        r.cfg.avs.artifacts,
        overlay_grid,
        "avs_overlays.png",
    )
