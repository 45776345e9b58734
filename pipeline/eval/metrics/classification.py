"""Classification metrics and report files (REFERENCE.md §8; release defects fixed, §9.19).

Scores of several views of a video (clips × frames) are averaged per video key before any
metric. Single-label: top-1 / top-5 accuracy (%). Multi-label: mAP and mean ROC-AUC over the
classes that have positives (AUC: positives and negatives), in %.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw
from torch import Tensor


def average_views(
    keys: list[str], scores: dict[str, Tensor], labels: Tensor
) -> tuple[list[str], dict[str, Tensor], Tensor]:
    """Mean score per unique key over all its rows (views, rank padding); keys in first-seen order.

    scores: head → ``[N, C]``; labels ``[N]`` or ``[N, C]`` (the first row of each key is kept).
    """
    index: dict[str, int] = {}
    rows = torch.tensor([index.setdefault(k, len(index)) for k in keys], dtype=torch.long)
    counts = torch.zeros(len(index)).index_add_(0, rows, torch.ones(len(keys)))
    averaged = {
        h: torch.zeros(len(index), s.shape[1], dtype=torch.float64)
        .index_add_(0, rows, s.double())
        .div_(counts[:, None])
        .float()
        for h, s in scores.items()
    }
    first = torch.full((len(index),), -1, dtype=torch.long)
    for i in reversed(range(len(keys))):
        first[rows[i]] = i
    return list(index), averaged, labels[first]


def topk_accuracy(scores: Tensor, labels: Tensor, k: int) -> float:
    """% of rows whose label is among the ``k`` highest scores."""
    k = min(k, scores.shape[1])
    hit = (scores.topk(k, dim=1).indices == labels[:, None]).any(dim=1)
    return float(hit.float().mean() * 100)


def average_precision(scores: Tensor, targets: Tensor) -> Tensor:
    """AP per class ``[C]`` (NaN where a class has no positive); scores, targets ``[N, C]``."""
    order = scores.argsort(dim=0, descending=True)
    hits = targets.gather(0, order).double()
    precision = hits.cumsum(0) / torch.arange(1, len(scores) + 1, dtype=torch.float64)[:, None]
    positives = hits.sum(0)
    return ((precision * hits).sum(0) / positives).where(positives > 0, torch.tensor(float("nan")))


def roc_auc(scores: Tensor, targets: Tensor) -> Tensor:
    """ROC-AUC per class ``[C]`` (Mann–Whitney, ties count ½; NaN without both classes)."""
    s = scores.double()
    ranks = torch.empty_like(s)
    for c in range(s.shape[1]):  # average ranks for ties
        values, inverse = s[:, c].unique(return_inverse=True)
        sorted_counts = torch.bincount(inverse, minlength=len(values)).double()
        ends = sorted_counts.cumsum(0)
        ranks[:, c] = (ends - (sorted_counts - 1) / 2)[inverse]
    pos = targets.double().sum(0)
    neg = len(s) - pos
    auc = ((ranks * targets).sum(0) - pos * (pos + 1) / 2) / (pos * neg)
    return auc.where((pos > 0) & (neg > 0), torch.tensor(float("nan")))


def classification_metrics(
    scores: dict[str, Tensor], labels: Tensor, multi_label: bool
) -> dict[str, float]:
    """``top1_<head>``, ``top5_<head>`` (single-label) or ``map_<head>``, ``auc_<head>`` (multi-label)."""
    out = {}
    for head, s in scores.items():
        if multi_label:
            out[f"map_{head}"] = float(np.nanmean(average_precision(s, labels).numpy()) * 100)
            out[f"auc_{head}"] = float(np.nanmean(roc_auc(s, labels).numpy()) * 100)
        else:
            out[f"top1_{head}"] = topk_accuracy(s, labels, 1)
            out[f"top5_{head}"] = topk_accuracy(s, labels, 5)
    return out


def write_predictions(
    path: Path,
    keys: list[str],
    scores: Tensor,
    labels: Tensor,
    classes: list[str],
    top_k: int,
    multi_label: bool,
) -> Path:
    """One JSON line per video: key, true label(s), the ``top_k`` classes with their scores
    (probabilities: softmax single-label, sigmoid multi-label)."""
    probs = scores.sigmoid() if multi_label else scores.softmax(dim=1)
    values, indices = probs.topk(min(top_k, probs.shape[1]), dim=1)
    with open(path, "w") as f:
        for i, key in enumerate(keys):
            truth = (
                [classes[c] for c in labels[i].nonzero().flatten().tolist()]
                if multi_label
                else classes[int(labels[i])]
            )
            f.write(
                json.dumps(
                    {
                        "key": key,
                        "label": truth,
                        "top": [
                            [classes[c], round(float(v), 5)]
                            for c, v in zip(indices[i].tolist(), values[i], strict=True)
                        ],
                    }
                )
                + "\n"
            )
    return path


def confusion_matrix(scores: Tensor, labels: Tensor, num_classes: int) -> Tensor:
    """Counts ``[C, C]``: row = true class, column = predicted class."""
    flat = labels * num_classes + scores.argmax(dim=1)
    return torch.bincount(flat, minlength=num_classes**2).reshape(num_classes, num_classes)


def save_confusion_figure(path: Path, matrix: Tensor, classes: list[str], cell: int = 24) -> Path:
    """Row-normalised confusion matrix as a PNG heat map (true rows, predicted columns)."""
    c = len(classes)
    rates = (matrix.double() / matrix.sum(1, keepdim=True).clamp(min=1)).numpy()
    margin = 8 + 6 * min(max(len(n) for n in classes), 24)
    img = Image.new("RGB", (margin + c * cell + 8, margin + c * cell + 8), "white")
    draw = ImageDraw.Draw(img)
    for i in range(c):
        draw.text((4, margin + i * cell + cell // 3), classes[i][:24], fill="black")
        for j in range(c):
            shade = int(255 * (1 - rates[i, j]))
            x, y = margin + j * cell, margin + i * cell
            draw.rectangle((x, y, x + cell - 1, y + cell - 1), fill=(shade, shade, 255))
            if c <= 32:
                draw.text(
                    (x + 3, y + cell // 3),
                    str(int(matrix[i, j])),
                    fill="black" if shade > 96 else "white",
                )
    draw.text((margin, 4), "true (rows) vs predicted (columns)", fill="black")
    img.save(path)
    return path


def write_class_ap(path: Path, scores: Tensor, targets: Tensor, classes: list[str]) -> Path:
    """Per-class AP / AUC / positives table (TSV), best AP first."""
    ap, auc, pos = average_precision(scores, targets), roc_auc(scores, targets), targets.sum(0)
    rows = sorted(range(len(classes)), key=lambda c: -np.nan_to_num(float(ap[c]), nan=-1.0))
    lines = ["class\tap\tauc\tpositives"] + [
        f"{classes[c]}\t{float(ap[c]) * 100:.2f}\t{float(auc[c]) * 100:.2f}\t{int(pos[c])}"
        for c in rows
    ]
    path.write_text("\n".join(lines) + "\n")
    return path
