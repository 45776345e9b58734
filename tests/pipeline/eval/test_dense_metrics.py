"""Dense metrics on hand-made masks whose answers are worked out by hand (docs/EVAL.md)."""

from __future__ import annotations

import math

import pytest
import torch

from pipeline.eval.dense_metrics import LocalizationMeter, SegmentationMeter, centred_prior


def _left_half() -> torch.Tensor:
    gt = torch.zeros(4, 4, dtype=torch.bool)
    gt[:, :2] = True  # 8 foreground pixels
    return gt


def test_segmentation_miou_fscore_known_answer():
    prob = torch.zeros(2, 4, 4)
    prob[0, :, :3] = 0.9  # 12 px predicted, 8 of them right
    gt = torch.stack([_left_half(), torch.zeros(4, 4, dtype=torch.bool)])  # frame 2: skipped
    meter = SegmentationMeter()
    meter.update(prob, gt)
    r = meter.result()
    # fg IoU 8/12, bg IoU 4/8 (column 3 vs columns 2-3)
    assert r["jaccard_fg"] == pytest.approx(100 * 2 / 3, abs=1e-4)
    assert r["miou"] == pytest.approx(100 * (2 / 3 + 1 / 2) / 2, abs=1e-4)
    # best threshold in (0, 0.9]: P = 2/3, R = 1 → F = 1.3 P / (0.3 P + 1)
    assert r["fscore"] == pytest.approx(100 * 1.3 * (2 / 3) / (0.3 * 2 / 3 + 1), abs=1e-4)


def test_segmentation_fscore_finds_the_separating_threshold():
    prob = torch.zeros(1, 4, 4)
    prob[0, :, :2], prob[0, :, 2] = 0.9, 0.6  # thresholds in (0.6, 0.9] are exact
    meter = SegmentationMeter()
    meter.update(prob, _left_half()[None])
    assert meter.result()["fscore"] == pytest.approx(100, abs=1e-4)
    assert meter.result()["jaccard_fg"] == pytest.approx(100 * 8 / 12, abs=1e-4)  # at 0.5


def test_segmentation_without_foreground_raises():
    meter = SegmentationMeter()
    meter.update(torch.ones(1, 4, 4), torch.zeros(1, 4, 4, dtype=torch.bool))
    with pytest.raises(ValueError, match="no frame"):
        meter.result()


def test_localization_ciou_auc_known_answer():
    heat = torch.zeros(2, 4, 4)
    heat[0, :, :3] = 5.0  # normalised > 0.5 on columns 0-2
    heat[1, :, 3] = 2.0  # only the wrong column
    gt = torch.stack([_left_half(), _left_half()])
    meter = LocalizationMeter()
    meter.update(heat[:1], gt[:1])  # two updates add up like one
    meter.update(heat[1:], gt[1:])
    r = meter.result()
    assert r["ciou"] == pytest.approx(50.0)  # cIoU 8/12 and 0
    # success: 1 at t=0, 1/2 for t in (0, 2/3], 0 after → trapezoids on the 0.05 grid
    assert r["auc"] == pytest.approx(100 * (0.0375 + 0.3 + 0.0125), abs=1e-6)


def test_centred_prior_half_level_is_the_expected_ellipse():
    g = centred_prior(1, 400, 600)[0]
    assert float(g.max()) == pytest.approx(1.0, abs=1e-4)
    assert g[200, 300] > g[200, 0] and g[200, 300] > g[0, 300]
    half_axis = 0.25 * math.sqrt(2 * math.log(2))
    assert float((g > 0.5).float().mean()) == pytest.approx(math.pi * half_axis**2, rel=0.01)
