"""Independent re-implementations of the published dense metrics, for tests only: numpy and plain
loops, transcribed from the sources' formulas (not from pipeline/eval/metrics). Each takes what
the source's evaluation loop sees and returns percentages (dB for separation).

- release AVS: stoneMo/DeepAVFusion ``eval_avsegm.py`` (``AVSegmEvaluator``);
- AVSBench: OpenNLPLab/AVSBench ``avs_scripts/avs_s4/utils/utility.py`` (``mask_iou``,
  ``_eval_pr``, ``Eval_Fmeasure``) as ``test.py`` calls them, one video per batch;
- LVS: hche11/Localizing-Visual-Sounds-the-Hard-Way ``test.py`` + ``utils.py``;
- separation: stoneMo/DeepAVFusion ``eval_avsrcsep.py`` (skip rule, ``AVSrcSepEvaluator``).
"""

from __future__ import annotations

import warnings

import mir_eval
import numpy as np


def sigmoid(x: np.ndarray) -> np.ndarray:
    return (1 / (1 + np.exp(-x.astype(np.float64)))).astype(np.float32)


def release_avs(prob: np.ndarray, truth: np.ndarray) -> dict[str, float]:
    """``AVSegmEvaluator`` with one class: labels 1 = background, 2 = foreground."""
    iou_sum, cls_sum, fscores = np.zeros(2), np.zeros(2), []
    for p, t in zip(prob, truth.astype(int) + 1, strict=True):
        if (t > 1).sum() == 0:
            continue
        y = (p > 0.5).astype(int) + 1
        inter = y * (y == t)
        area_inter = np.array([(inter == c).sum() for c in (1, 2)], dtype=float)
        area_pred = np.array([(y == c).sum() for c in (1, 2)], dtype=float)
        area_lab = np.array([(t == c).sum() for c in (1, 2)], dtype=float)
        union = area_pred + area_lab - area_inter
        iou_sum += area_inter / (1e-10 + union)
        cls_sum += union > 0
        prec, rec = [], []
        for thr in np.linspace(0, 1 - 1e-10, 256):
            ypred = (p >= thr).astype(int) + 1
            tp = ((ypred == 2) * (t == 2)).sum()
            prec.append(tp / ((ypred == 2).sum() + 1e-10))
            rec.append(tp / ((t == 2).sum() + 1e-10))
        prec, rec = np.array(prec), np.array(rec)
        fscores.append((1.3 * prec * rec / (0.3 * prec + rec + 1e-10)).max())
    seen = cls_sum > 0
    return {
        "miou": 100 * float(np.mean(iou_sum[seen] / cls_sum[seen])),
        "fscore": 100 * float(np.mean(fscores)),
    }


def avsbench_miou(prob: np.ndarray, truth: np.ndarray) -> float:
    """``mask_iou`` over all frames (no-object frames: background IoU)."""
    ious = []
    for p, t in zip(prob, truth.astype(int), strict=True):
        pred = (p > 0.5).astype(int)
        if t.sum() == 0:
            inter, union = ((1 - t) * (1 - pred)).sum(), t.size
        else:
            inter, union = (pred * t).sum(), np.maximum(pred, t).sum()
        ious.append(inter / (union + 1e-7))
    return 100 * float(np.mean(ious))


def avsbench_fscore(prob: np.ndarray, truth: np.ndarray, video: np.ndarray) -> float:
    """``Eval_Fmeasure`` per video (255 thresholds), then the mean over videos."""
    scores = []
    for v in dict.fromkeys(video.tolist()):
        frames = [i for i in range(len(video)) if video[i] == v]
        avg_f, n, score = 0.0, 0, np.zeros(255)
        for i in frames:
            gt = truth[i].astype(float)
            if gt.mean() == 0.0:
                continue
            prec, rec = np.zeros(255), np.zeros(255)
            for k, thr in enumerate(np.linspace(0, 1 - 1e-10, 255)):
                y = (prob[i] >= thr).astype(float)
                tp = (y * gt).sum()
                prec[k], rec[k] = tp / (y.sum() + 1e-20), tp / (gt.sum() + 1e-20)
            with np.errstate(invalid="ignore"):
                f = 1.3 * prec * rec / (0.3 * prec + rec)
            f[f != f] = 0
            avg_f, n = avg_f + f, n + 1
            score = avg_f / n
        scores.append(score.max())
    return 100 * float(np.mean(scores))


def lvs_localization(heatmaps: np.ndarray, truth: np.ndarray) -> dict[str, float]:
    """LVS ``test.py``: normalise, keep pixels above the sorted value at H·W/2, ``cal_CIOU``."""
    ious = []
    for heat, gt in zip(heatmaps.astype(np.float64), truth.astype(np.float64), strict=True):
        value = -heat
        if not value.max() - value.min() == 0:
            value = (value - value.min()) / (value.max() - value.min())
        pred = 1 - value
        threshold = np.sort(pred.flatten())[int(pred.shape[0] * pred.shape[1] / 2)]
        pred[pred > threshold] = 1
        pred[pred < 1] = 0
        infer = np.zeros(pred.shape)
        infer[pred >= 0.5] = 1
        with np.errstate(invalid="ignore"):
            ious.append(np.sum(infer * gt) / (np.sum(gt) + np.sum(infer * (gt == 0))))
    x = [0.05 * i for i in range(21)]
    results = [np.sum(np.array(ious) >= 0.05 * i) / len(ious) for i in range(21)]
    area = sum((x[i + 1] - x[i]) * (results[i + 1] + results[i]) / 2 for i in range(20))
    return {
        "ciou": 100 * float(np.sum(np.array(ious) >= 0.5) / len(ious)),
        "auc": 100 * float(area),
    }


def bss(references: np.ndarray, estimates: np.ndarray) -> np.ndarray:
    """``[3, S]``: ``bss_eval_sources(references, estimates, False)``'s SDR, SIR, SAR."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        return np.stack(mir_eval.separation.bss_eval_sources(references, estimates, False)[:3])


def release_separation(references: np.ndarray, estimates: np.ndarray) -> dict[str, float]:
    """``eval_avsrcsep.evaluate``: skip silent pairs, ``bss_eval_sources(gt, pred, False)``,
    ``np.mean`` of the per-pair arrays."""
    sdr, sir, sar = [], [], []
    for gt, pred in zip(references, estimates, strict=True):
        if np.any((gt**2).sum(-1) < 1e-5) or np.any((pred**2).sum(-1) < 1e-5):
            continue
        s, i, a = bss(gt, pred)
        sdr.append(s)
        sir.append(i)
        sar.append(a)
    return {"sdr": float(np.mean(sdr)), "sir": float(np.mean(sir)), "sar": float(np.mean(sar))}
