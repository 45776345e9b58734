"""AVS segmentation metrics (AVSBench S4), each as its source computes it. All results ×100.

Inputs per frame: ``prob [H, W]`` = sigmoid of the logits, held as float32 as both sources hold
it; ``truth [H, W]`` bool. A frame "with an object" has a non-empty ``truth``.

- ``miou`` — the release (stoneMo/DeepAVFusion ``eval_avsegm.py``, ``AVSegmEvaluator``): frames
  without an object are skipped; per frame, ``pred = prob > 0.5`` gives the foreground and the
  background IoU; each class is averaged over the frames where its union is non-empty, then
  the mean of the classes seen (an all-foreground frame predicted perfectly: 100, not 50).
- ``miou_avsbench`` — AVSBench ``mask_iou`` (OpenNLPLab/AVSBench ``avs_scripts/avs_s4/utils/
  utility.py``): the mean over all frames of the foreground IoU, where a frame without an object
  scores the background IoU (pixels predicted background / all pixels).
- ``fscore`` — the release (``_batch_fscore_bin``): per frame with an object, the max over the
  256 thresholds ``torch.linspace(0, 1 − 1e-10, 256)`` of F_β (β² = 0.3) of ``prob ≥ t``;
  then the mean over those frames.
- ``fscore_avsbench`` — AVSBench's S4 test (``test.py`` at batch 1 video + ``Eval_Fmeasure``):
  per video, the F_β curve over 255 thresholds averaged over its frames with an object, its max;
  then the mean over videos. NOTE: as in ``Eval_Fmeasure``, a video with no frame with an
  object scores 0 and counts.
F_β = (1 + β²)·P·R / (β²·P + R) = 1.3·TP / (0.3·|truth| + |pred|) (0 when TP = 0); the sources'
epsilons (1e-10, 1e-20) change nothing at the 1e-6 level.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

F_BETA2 = 0.3
RELEASE_THRESHOLDS = torch.linspace(0, 1 - 1e-10, 256)  # float32, as the sources build them
AVSBENCH_THRESHOLDS = torch.linspace(0, 1 - 1e-10, 255)
# sums: frames, frames with an object, Σ fg IoU, Σ bg IoU, frames whose bg union is non-empty,
# Σ AVSBench IoU, Σ release F, Σ AVSBench video F, videos
_N = 9


def class_ious(prob: Tensor, truth: Tensor) -> tuple[float, float | None]:
    """The release's per-frame (foreground IoU, background IoU or None when the background
    union is empty) of ``prob > 0.5``, for a frame with an object."""
    pred = prob > 0.5
    fg_union = int((pred | truth).sum())
    bg_union = int((~pred | ~truth).sum())
    fg = int((pred & truth).sum()) / fg_union
    return fg, (int((~pred & ~truth).sum()) / bg_union if bg_union else None)


def avsbench_iou(prob: Tensor, truth: Tensor) -> float:
    """AVSBench ``mask_iou`` of one frame: foreground IoU, or for a frame without an object
    the share of pixels predicted background."""
    pred = prob > 0.5
    if not truth.any():
        return int((~pred).sum()) / pred.numel()
    return int((pred & truth).sum()) / int((pred | truth).sum())


def f_measure(prob: Tensor, truth: Tensor, thresholds: Tensor) -> Tensor:
    """F_β of ``prob ≥ t`` for each threshold ``[T]`` (float64), counted by sorting."""
    p = prob.flatten().float()
    t = thresholds.to(p)
    predicted = len(p) - torch.searchsorted(p.sort().values, t).double()
    fg = p[truth.flatten()]
    hits = len(fg) - torch.searchsorted(fg.sort().values, t).double()
    return (1 + F_BETA2) * hits / (F_BETA2 * len(fg) + predicted)


def release_fscore(prob: Tensor, truth: Tensor) -> float:
    """The release's per-frame F-score (frame with an object): max over 256 thresholds."""
    return float(f_measure(prob, truth, RELEASE_THRESHOLDS).max())


def avsbench_video_fscore(probs: Tensor, truths: Tensor) -> float:
    """AVSBench ``Eval_Fmeasure`` of one video ``[n, H, W]``: the max of the F_β curve (255
    thresholds) averaged over its frames with an object; 0 when it has none."""
    curves = [f_measure(p, t, AVSBENCH_THRESHOLDS) for p, t in zip(probs, truths, strict=True)]
    curves = [c for c, t in zip(curves, truths, strict=True) if t.any()]
    return float(torch.stack(curves).mean(0).max()) if curves else 0.0


class SegmentationScores:
    """Accumulates ``update(prob [N, H, W], truth [N, H, W], video [N])``; ``result()`` →
    ``miou``, ``miou_avsbench``, ``fscore``, ``fscore_avsbench``, ``frames``.

    ``sums`` is the float64 state ranks all-reduce (then assign the reduced tensor back). The
    frames of one video must arrive together, in one or consecutive updates; reading ``sums``
    counts the video still open as complete (its frames all live on one rank).
    """

    def __init__(self):
        self._closed = torch.zeros(_N, dtype=torch.float64)
        self._video: object = None  # the open video's id (meaningful while _frames is not empty)
        self._frames: list[tuple[Tensor, Tensor]] = []  # the open video's frames
        self._seen: set = set()

    def update(self, prob: Tensor, truth: Tensor, video: Sequence) -> None:
        prob, truth = prob.detach().float().cpu(), truth.cpu().bool()
        if prob.shape != truth.shape or prob.dim() != 3 or len(video) != len(prob):
            raise ValueError(
                f"segmentation: prob {list(prob.shape)}, truth {list(truth.shape)} and "
                f"{len(video)} video ids do not match"
            )
        for p, t, v in zip(prob, truth, video, strict=True):
            if not self._frames or v != self._video:
                self._close()
                if v in self._seen:
                    raise ValueError(f"segmentation: frames of video {v!r} arrived apart")
                self._video = v
                self._seen.add(v)
            self._closed += _frame_sums(p, t)
            self._frames.append((p, t))

    @property
    def sums(self) -> Tensor:
        return self._closed + self._video_sums()

    @sums.setter
    def sums(self, value: Tensor) -> None:
        self._closed, self._frames = value.clone(), []

    def result(self) -> dict[str, float]:
        s = self.sums
        if s[1] == 0:
            raise ValueError("segmentation: no frame with an object to score")
        classes = [s[2] / s[1]] + ([s[3] / s[4]] if s[4] else [])
        return {
            "miou": 100 * float(sum(classes)) / len(classes),
            "miou_avsbench": 100 * float(s[5] / s[0]),
            "fscore": 100 * float(s[6] / s[1]),
            "fscore_avsbench": 100 * float(s[7] / s[8]),
            "frames": int(s[0]),
        }

    def _video_sums(self) -> Tensor:
        out = torch.zeros(_N, dtype=torch.float64)
        if self._frames:
            probs, truths = (torch.stack(x) for x in zip(*self._frames, strict=True))
            out[7], out[8] = avsbench_video_fscore(probs, truths), 1
        return out

    def _close(self) -> None:
        self._closed += self._video_sums()
        self._frames = []


def _frame_sums(prob: Tensor, truth: Tensor) -> Tensor:
    """One frame's share of every per-frame sum."""
    out = torch.zeros(_N, dtype=torch.float64)
    out[0], out[5] = 1, avsbench_iou(prob, truth)
    if truth.any():
        fg, bg = class_ious(prob, truth)
        out[1], out[2], out[6] = 1, fg, release_fscore(prob, truth)
        if bg is not None:
            out[3], out[4] = bg, 1
    return out
