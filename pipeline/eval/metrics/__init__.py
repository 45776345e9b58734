"""Evaluation metrics, one implementation each (docs/EVAL.md has the definitions and sources).

- :mod:`.classification` — top-k accuracy, mAP, ROC-AUC, view averaging and report files (its
  public names are re-exported here: ``from pipeline.eval import metrics as M``);
- :mod:`.segmentation` — AVS ``miou``, ``miou_avsbench``, ``fscore``, ``fscore_avsbench``;
- :mod:`.localization` — LVS cIoU / AUC;
- :mod:`.separation` — BSS Eval SDR / SIR / SAR;
- :mod:`.baselines` — the centred prior the dense evaluations score beside the model.

The dense metrics are pure functions per frame / video / pair plus accumulators whose state is a
float64 tensor of sums (``sums``: ranks all-reduce it and assign it back) with ``update`` and
``result``; they are imported from their modules (separation loads mir_eval).
"""

from __future__ import annotations

from .classification import (
    average_precision,
    average_views,
    classification_metrics,
    confusion_matrix,
    roc_auc,
    save_confusion_figure,
    topk_accuracy,
    write_class_ap,
    write_predictions,
)

__all__ = [
    "average_precision",
    "average_views",
    "classification_metrics",
    "confusion_matrix",
    "roc_auc",
    "save_confusion_figure",
    "topk_accuracy",
    "write_class_ap",
    "write_predictions",
]
