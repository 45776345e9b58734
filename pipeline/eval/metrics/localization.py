"""Visual sound localization metrics: cIoU and AUC as LVS computes them (Chen et al., CVPR 2021,
"Localizing Visual Sounds the Hard Way"; github hche11/Localizing-Visual-Sounds-the-Hard-Way
``test.py`` + ``utils.py``), the protocol EZ-VSL (stoneMo/EZ-VSL ``test.py`` + ``utils.py``) and
its successors report on VGG-SS and Flickr-SoundNet. Results ×100.

Per sample, ``heatmap [H, W]`` (any real scores) and ``truth [H, W]`` in [0, 1]:
1. min-max normalise the heatmap (float64; a constant map is left as it is);
2. foreground = pixels *strictly above* the value at index ``H·W // 2`` of the sorted map
   (LVS: ``pred[pred > threshold] = 1``). NOTE: EZ-VSL keeps ``pred >= threshold``, so on ties
   at the median it keeps more pixels; the two agree whenever the median value is unique;
3. ``cIoU_i = Σ(pred·g) / (Σg + Σ pred·[g = 0])`` — soft truth allowed (Flickr-SoundNet's
   annotator consensus 0 / 0.5 / 1); an empty denominator (no truth, no foreground) gives NaN,
   which reaches no threshold (as ``0/0`` in numpy does there);
4. ``ciou`` = share of samples with ``cIoU_i ≥ 0.5``; ``auc`` = trapezoid area of the success
   rate ``mean(cIoU_i ≥ t)`` over ``t = 0.05·i``, i = 0 … 20, computed in float64 exactly as the
   sources do (NOTE: so ``0.05·6 = 0.30000000000000004`` and a cIoU of exactly 0.3 misses it).
"""

from __future__ import annotations

import torch
from torch import Tensor

THRESHOLDS = torch.tensor([0.05 * i for i in range(21)], dtype=torch.float64)
CIOU_AT = 0.5  # = THRESHOLDS[10] exactly


def foreground(heatmap: Tensor) -> Tensor:
    """``[N, H, W]`` → bool ``[N, H, W]``: min-max normalised map strictly above its value at
    sorted index ``H·W // 2``."""
    flat = heatmap.detach().double().flatten(1)
    lo, hi = flat.min(1, keepdim=True).values, flat.max(1, keepdim=True).values
    flat = torch.where(hi > lo, (flat - lo) / (hi - lo).where(hi > lo, 1.0), flat)
    median = flat.sort(1).values[:, flat.shape[1] // 2, None]
    return (flat > median).view(heatmap.shape)


def consensus_iou(heatmap: Tensor, truth: Tensor) -> Tensor:
    """cIoU per sample ``[N]`` (float64) of ``heatmap [N, H, W]`` against ``truth [N, H, W]``."""
    pred = foreground(heatmap).flatten(1).double()
    g = truth.detach().double().flatten(1)
    inter = (pred * g).sum(1)
    return inter / (g.sum(1) + (pred * (g == 0)).sum(1))


def success_counts(ciou: Tensor) -> Tensor:
    """``[21]`` float64: how many of ``ciou [N]`` reach each threshold 0.05·i (NaN reaches none)."""
    return (ciou[:, None] >= THRESHOLDS[None]).sum(0).double()


def auc(success: Tensor) -> float:
    """Trapezoid area of the success rates ``[21]`` over the thresholds (``sklearn.metrics.auc``)."""
    return float(torch.trapezoid(success.double(), THRESHOLDS))


class LocalizationScores:
    """Accumulates ``update(heatmap [N, H, W], truth [N, H, W])``; ``result()`` → ``ciou``,
    ``auc``, ``samples``. ``sums`` (float64: samples, then the 21 success counts) is the state
    ranks all-reduce."""

    def __init__(self):
        self.sums = torch.zeros(1 + len(THRESHOLDS), dtype=torch.float64)

    def update(self, heatmap: Tensor, truth: Tensor) -> None:
        if heatmap.shape != truth.shape or heatmap.dim() != 3:
            raise ValueError(
                f"localization: heatmap {list(heatmap.shape)} and truth {list(truth.shape)} "
                "must both be [N, H, W]"
            )
        self.sums[0] += len(heatmap)
        self.sums[1:] += success_counts(consensus_iou(heatmap.cpu(), truth.cpu()))

    def result(self) -> dict[str, float]:
        n = float(self.sums[0])
        if n == 0:
            raise ValueError("localization: no sample to score")
        success = self.sums[1:] / n
        return {
            "ciou": 100 * float(success[THRESHOLDS.tolist().index(CIOU_AT)]),
            "auc": 100 * auc(success),
            "samples": int(n),
        }
