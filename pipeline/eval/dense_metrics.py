"""Dense-task metrics as sums over frames, so ranks can add them up (docs/EVAL.md has the
definitions).

- Segmentation (AVSBench S4, as the release computes it): frames whose ground truth is all
  background are skipped; per frame, the prediction ``p > 0.5`` gives the foreground IoU and the
  background IoU; ``miou`` = mean over frames of their average, ``jaccard_fg`` = mean foreground
  IoU; F-score: per frame and threshold ``t`` (256 thresholds evenly in [0, 1)), precision and
  recall of ``p >= t``, ``F = (1 + β²) P R / (β² P + R)`` with β² = 0.3, averaged over frames,
  then the maximum over thresholds.
- Localization (VGG-SS / Flickr-SoundNet literature): the map is min-max normalised per frame;
  ``pred = map > 0.5``; ``ciou_i = |pred ∩ gt| / (|gt| + |pred \\ gt|)``, with a consensus
  map's 0.5 pixels counting half in ``|pred ∩ gt|`` and ``|gt|`` (LVS); ``ciou`` = share of
  frames with ``ciou_i >= 0.5``; ``auc`` = trapezoid area under the success rate
  ``mean(ciou_i >= t)`` for ``t`` in 0, 0.05, …, 1.
All results are percentages.
"""

from __future__ import annotations

import torch
from torch import Tensor

EPS = 1e-7
F_BETA2 = 0.3
F_THRESHOLDS = torch.linspace(0, 1 - 1e-10, 256)
CIOU_THRESHOLDS = torch.linspace(0, 1, 21)


class SegmentationMeter:
    """Accumulates ``update(prob [N,H,W], gt [N,H,W])`` (gt > 0: foreground); ``result()`` →
    miou, jaccard_fg, fscore."""

    def __init__(self):
        self.sums = torch.zeros(
            3 + len(F_THRESHOLDS), dtype=torch.float64
        )  # n, iou_fg, iou_bg, F[t]

    def update(self, prob: Tensor, gt: Tensor) -> None:
        prob, gt = prob.detach().float().cpu().flatten(1), gt.cpu().bool().flatten(1)
        keep = gt.any(1)  # background-only frames are skipped
        prob, gt = prob[keep], gt[keep]
        if not len(gt):
            return
        pred = prob > 0.5
        self.sums[0] += len(gt)
        self.sums[1] += _iou(pred, gt).sum()
        self.sums[2] += _iou(~pred, ~gt).sum()
        self.sums[3:] += _f_measure(prob, gt).sum(0)

    def result(self) -> dict[str, float]:
        n = float(self.sums[0])
        if n == 0:
            raise ValueError("segmentation: no frame with a foreground mask to score")
        return {
            "miou": 100 * float(self.sums[1] + self.sums[2]) / (2 * n),
            "jaccard_fg": 100 * float(self.sums[1]) / n,
            "fscore": 100 * float(self.sums[3:].max()) / n,
        }


class LocalizationMeter:
    """Accumulates ``update(heatmap [N,H,W], gt [N,H,W])``; ``result()`` → ciou, auc. ``gt`` is
    binary or a consensus map of 0 / 0.5 / 1 (Flickr-SoundNet)."""

    def __init__(self):
        self.sums = torch.zeros(1 + len(CIOU_THRESHOLDS), dtype=torch.float64)  # n, success[t]

    def update(self, heatmap: Tensor, gt: Tensor) -> None:
        ciou = consensus_iou(heatmap.detach().float().cpu(), gt.cpu().float())
        self.sums[0] += len(ciou)
        self.sums[1:] += (ciou[:, None] >= CIOU_THRESHOLDS[None].double()).sum(0)

    def result(self) -> dict[str, float]:
        n = float(self.sums[0])
        if n == 0:
            raise ValueError("localization: no frame to score")
        success = self.sums[1:] / n
        half = int(torch.isclose(CIOU_THRESHOLDS, torch.tensor(0.5)).nonzero())
        return {
            "ciou": 100 * float(success[half]),
            "auc": 100 * float(torch.trapezoid(success, CIOU_THRESHOLDS.double())),
        }


def consensus_iou(heatmap: Tensor, gt: Tensor) -> Tensor:
    """Per-frame cIoU ``[N]`` (float64) of min-max normalised maps thresholded at 0.5 against
    ``gt`` weights (binary, or a consensus map of 0 / 0.5 / 1), as LVS computes it:
    ``sum(pred · gt) / (sum(gt) + sum(pred · [gt = 0]))``."""
    flat = heatmap.flatten(1)
    lo, hi = flat.min(1, keepdim=True).values, flat.max(1, keepdim=True).values
    pred = ((flat - lo) / (hi - lo).clamp_min(EPS) > 0.5).double()
    gt = gt.flatten(1).double()
    inter = (pred * gt).sum(1)
    return inter / (gt.sum(1) + (pred * (gt == 0)).sum(1)).clamp_min(EPS)


def centred_prior(n: int, height: int, width: int, sigma: float = 0.25) -> Tensor:
    """``[n, H, W]`` centred Gaussian in (0, 1]; ``sigma`` as a fraction of each side.

    At 0.5 it is the centred ellipse with half-axes ``sigma · sqrt(2 ln 2) ≈ 0.29`` of the sides.
    """
    y = (torch.arange(height) + 0.5) / height - 0.5
    x = (torch.arange(width) + 0.5) / width - 0.5
    g = torch.exp(-(y[:, None] ** 2 + x[None] ** 2) / (2 * sigma * sigma))
    return g.expand(n, height, width)


def _iou(pred: Tensor, gt: Tensor) -> Tensor:
    inter = (pred & gt).sum(1).double()
    return inter / ((pred | gt).sum(1).double() + EPS)


def _f_measure(prob: Tensor, gt: Tensor) -> Tensor:
    """``[N, len(F_THRESHOLDS)]`` F_β per frame and threshold (counts ``p >= t`` by sorting)."""
    out = []
    for p, g in zip(prob, gt, strict=True):
        t = F_THRESHOLDS.to(p)
        positive = len(p) - torch.searchsorted(p.sort().values, t).double()
        tp = g.sum() - torch.searchsorted(p[g].sort().values, t).double()
        precision = tp / (positive + EPS)
        recall = tp / (g.sum().double() + EPS)
        out.append((1 + F_BETA2) * precision * recall / (F_BETA2 * precision + recall + EPS))
    return torch.stack(out)
