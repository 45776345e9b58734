"""Dense metrics (docs/EVAL.md): a table of hand-made cases for every named definition with the
answers worked out here, and agreement with independent transcriptions of the published code
(tests/pipeline/metric_references.py) on random cases.

Probabilities in the hand cases avoid the threshold grids (multiples of 1/255 and 1/254 such as
0.2, 0.4, 0.5, 0.8), so that no case depends on how a grid value rounds.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from pipeline.eval.metrics.baselines import centred_prior
from pipeline.eval.metrics.localization import LocalizationScores, consensus_iou, foreground
from pipeline.eval.metrics.segmentation import SegmentationScores
from pipeline.eval.metrics.separation import SeparationScores

from . import metric_references as ref

TL = [[1, 0], [0, 0]]  # a 2 × 2 truth with only the top-left pixel


def _t(rows) -> torch.Tensor:
    return torch.tensor(rows, dtype=torch.float32)


def _left_half() -> list[list[int]]:
    return [[1, 1, 0, 0]] * 4  # 8 of 16 pixels


def _cols(values: list[float]) -> list[list[float]]:
    return [values] * 4  # a 4 × 4 frame whose columns hold these values


# --------------------------------------------------------------------------------------------
# AVS: (frames prob, truth, video ids) → every key, by hand
# --------------------------------------------------------------------------------------------

AVS_CASES = {
    # frame 1: truth = columns 0-1 (8 px); prob 0.9 on columns 0-2 → pred 12 px.
    #   fg IoU 8/12; bg: pred bg = column 3 (4), truth bg = columns 2-3 (8) → 4/8.
    #   F (β² = 0.3, F = 1.3 TP / (0.3 |truth| + |pred|)): t = 0 → 1.3·8/(2.4 + 16) = 0.565;
    #   0 < t ≤ 0.9 → 1.3·8/(2.4 + 12) = 13/18; t > 0.9 → 0. Max 13/18.
    # frame 2: no object; prob 0.9 on column 0 → release: skipped; AVSBench: bg IoU 12/16.
    "frame_without_an_object": (
        [_cols([0.9, 0.9, 0.9, 0]), _cols([0.9, 0, 0, 0])],
        [_left_half(), [[0] * 4] * 4],
        ["a", "a"],
        {
            "miou": 100 * (2 / 3 + 1 / 2) / 2,
            "miou_avsbench": 100 * (2 / 3 + 12 / 16) / 2,
            "fscore": 100 * 13 / 18,
            "fscore_avsbench": 100 * 13 / 18,  # the one frame with an object
            "frames": 2,
        },
    ),
    # frame 1: all foreground, prob 0.7 everywhere: fg IoU 1, background union empty → the
    #   background class is not counted for it (a naive per-frame mean would give (1 + 0)/2).
    # frame 2: truth = left column (2 px), prob 0.9 on left column + top-right → pred 3 px:
    #   fg 2/3; bg: pred bg = bottom-right (1), truth bg = right column (2) → 1/2.
    # release miou: fg (1 + 2/3)/2 = 5/6, bg 1/2 over 1 frame → (5/6 + 1/2)/2 = 2/3
    #   (naive per-frame average: ((1 + 0)/2 + (2/3 + 1/2)/2)/2 = 0.5417).
    # F: frame 1 = 1 (0 < t ≤ 0.7: pred = truth); frame 2: 0 < t ≤ 0.9 → 1.3·2/(0.6 + 3) = 13/18.
    # one video: mean curve on 0 < t ≤ 0.7 is (1 + 13/18)/2 = 31/36, the max.
    "all_foreground_frame_predicted_perfectly": (
        [[[0.7, 0.7], [0.7, 0.7]], [[0.9, 0.9], [0.9, 0.0]]],
        [[[1, 1], [1, 1]], [[1, 0], [1, 0]]],
        ["a", "a"],
        {
            "miou": 100 * 2 / 3,
            "miou_avsbench": 100 * (1 + 2 / 3) / 2,
            "fscore": 100 * (1 + 13 / 18) / 2,
            "fscore_avsbench": 100 * 31 / 36,
            "frames": 2,
        },
    ),
    "only_an_all_foreground_frame": (
        [[[0.7, 0.7], [0.7, 0.7]]],
        [[[1, 1], [1, 1]]],
        ["a"],
        {"miou": 100.0, "miou_avsbench": 100.0, "fscore": 100.0, "fscore_avsbench": 100.0},
    ),
    # truth = top-left pixel in both frames.
    # frame A: TL 0.35, rest 0.15 → F = 1 on 0.15 < t ≤ 0.35, 1.3/(0.3 + 4) = 13/43 for t ≤ 0.15.
    # frame B: TL 0.85, rest 0.55 → F = 1 on 0.55 < t ≤ 0.85, 13/43 for t ≤ 0.55.
    # release: per-frame max → 1 and 1. AVSBench, one video: the mean curve peaks at
    #   (1 + 13/43)/2 = 28/43 on 0.15 < t ≤ 0.35 (0.5 on 0.55 < t ≤ 0.85).
    # miou: A pred none → fg 0/1, bg 3/4; B pred all → fg 1/4, bg 0/3 → ((0 + 1/4)/2 + (3/4 + 0)/2)/2.
    "one_video_max_of_the_mean_curve": (
        [[[0.35, 0.15], [0.15, 0.15]], [[0.85, 0.55], [0.55, 0.55]]],
        [TL, TL],
        ["v", "v"],
        {
            "miou": 100 * (1 / 8 + 3 / 8) / 2,
            "miou_avsbench": 100 * (0 + 1 / 4) / 2,
            "fscore": 100.0,
            "fscore_avsbench": 100 * 28 / 43,
        },
    ),
    "the_same_frames_as_two_videos": (
        [[[0.35, 0.15], [0.15, 0.15]], [[0.85, 0.55], [0.55, 0.55]]],
        [TL, TL],
        ["v", "w"],
        {"fscore": 100.0, "fscore_avsbench": 100.0},
    ),
    # video x: a frame without an object only → Eval_Fmeasure returns 0 and the video counts;
    # video y: TL predicted perfectly (0.9 vs 0.1) → 1. Release fscore skips x's frame.
    # AVSBench IoU: x → bg share 4/4 (nothing predicted); y → 1.
    "video_without_an_object_scores_zero": (
        [[[0.1, 0.1], [0.1, 0.1]], [[0.9, 0.1], [0.1, 0.1]]],
        [[[0, 0], [0, 0]], TL],
        ["x", "y"],
        {"fscore": 100.0, "fscore_avsbench": 50.0, "miou_avsbench": 100.0, "miou": 100.0},
    ),
}


@pytest.mark.parametrize("name", AVS_CASES)
def test_avs_metric_table(name):
    prob, truth, video, want = AVS_CASES[name]
    scores = SegmentationScores()
    scores.update(_t(prob), _t(truth).bool(), video)
    got = scores.result()
    for key, value in want.items():
        assert got[key] == pytest.approx(value, abs=1e-6), key


def test_avs_frames_of_a_video_may_span_updates_and_state_sums_across_ranks():
    """The video of case one_video_max_of_the_mean_curve split over two updates gives the same
    result; two accumulators' summed state equals one that saw everything."""
    prob, truth, video, want = AVS_CASES["one_video_max_of_the_mean_curve"]
    split = SegmentationScores()
    split.update(_t(prob[:1]), _t(truth[:1]).bool(), video[:1])
    split.update(_t(prob[1:]), _t(truth[1:]).bool(), video[1:])
    assert split.result()["fscore_avsbench"] == pytest.approx(want["fscore_avsbench"], abs=1e-6)
    ranks = [SegmentationScores(), SegmentationScores()]
    other_prob, other_truth, other_video, _ = AVS_CASES["frame_without_an_object"]
    ranks[0].update(_t(prob), _t(truth).bool(), video)
    ranks[1].update(_t(other_prob), _t(other_truth).bool(), other_video)
    merged = SegmentationScores()
    merged.sums = ranks[0].sums + ranks[1].sums
    # videos: v → 28/43, a → 13/18
    assert merged.result()["fscore_avsbench"] == pytest.approx(100 * (28 / 43 + 13 / 18) / 2)
    assert merged.result()["frames"] == 4


def test_avs_rejects_a_video_that_comes_back_and_frames_without_objects_only():
    scores = SegmentationScores()
    frame = torch.ones(1, 2, 2)
    scores.update(frame, frame.bool(), ["a"])
    scores.update(frame, frame.bool(), ["b"])
    with pytest.raises(ValueError, match="video 'a' arrived apart"):
        scores.update(frame, frame.bool(), ["a"])
    empty = SegmentationScores()
    empty.update(frame, torch.zeros(1, 2, 2, dtype=torch.bool), ["a"])
    with pytest.raises(ValueError, match="no frame with an object"):
        empty.result()


# --------------------------------------------------------------------------------------------
# Localization: per-sample cIoU and the AUC grid, by hand
# --------------------------------------------------------------------------------------------

CIOU_CASES = {
    # sorted [1, 1, 1, 3], index 4 // 2 = 2 → value 1; strictly above: the 3 only. Truth TL →
    # 1 / (1 + 0) = 1. (EZ-VSL's ≥ keeps all four pixels: 1 / (1 + 3) = 0.25.)
    "ties_at_the_median": ([[3, 1], [1, 1]], TL, 1.0),
    # 0 … 15: sorted[8] = 8 → pixels 9 … 15 (7 px); truth = rows 2-3 (values 8 … 15, 8 px):
    # 7 / (8 + 0).
    "unique_median": (np.arange(16).reshape(4, 4).tolist(), [[0] * 4] * 2 + [[1] * 4] * 2, 7 / 8),
    # sorted [1, 2, 3, 4] → value 3 → foreground = TL. Flickr consensus truth: TL 0.5, TR 1:
    # Σ pred·g = 0.5, Σ g = 1.5, no predicted pixel on g = 0 → 1/3 (boolean truth would give 1/2).
    "soft_truth": ([[4, 3], [1, 2]], [[0.5, 1.0], [0.0, 0.0]], 1 / 3),
    # foreground TL on soft 0.5 truth at BR: 0 / (0.5 + 1).
    "soft_truth_missed": ([[4, 3], [1, 2]], [[0.0, 0.0], [0.0, 0.5]], 0.0),
    # constant map: nothing strictly above the median → 0 / Σg.
    "constant_map": ([[2, 2], [2, 2]], TL, 0.0),
    # the min-max normalisation does not move the rule: scaled and shifted map, same answer.
    "affine_map": ([[-40, -50], [-70, -60]], [[0.5, 1.0], [0.0, 0.0]], 1 / 3),
}


@pytest.mark.parametrize("name", CIOU_CASES)
def test_ciou_table(name):
    heat, truth, want = CIOU_CASES[name]
    assert float(consensus_iou(_t([heat]), _t([truth]))[0]) == pytest.approx(want, abs=1e-12)


def test_foreground_keeps_exactly_the_pixels_above_the_median():
    heat = torch.tensor([[[5.0, 5.0, 1.0], [5.0, 0.0, 2.0], [9.0, 5.0, 5.0]]])  # 9 px, index 4
    # sorted [0, 1, 2, 5, 5, 5, 5, 5, 9]: value 5 → only the 9
    assert foreground(heat)[0].nonzero().tolist() == [[2, 0]]


def _sample(fg: list[int], truth: list[int], side: int = 4) -> tuple[list, list]:
    """A map whose foreground is exactly the flat indices ``fg`` (they hold the top values and
    number fewer than half the pixels), and a truth mask on the flat indices ``truth``."""
    heat, g = np.zeros(side * side), np.zeros(side * side)
    heat[fg] = 1 + np.arange(len(fg))
    g[truth] = 1
    return heat.reshape(side, side).tolist(), g.reshape(side, side).tolist()


def test_localization_auc_on_grid_values():
    """cIoU values 1, 0.5, 0.25 and 0.3 — all exactly on or next to the grid 0.05·i:
    0.25 = 0.05·5 reaches i ≤ 5; 0.3 < 0.05·6 = 0.30000000000000004 reaches i ≤ 5 too (as in
    LVS / EZ-VSL); 0.5 = 0.05·10 reaches i ≤ 10; 1 reaches all 21.
    success: i = 0…5 → 4/4, i = 6…10 → 2/4, i = 11…20 → 1/4.
    AUC = 5·0.05·1 + 0.05·(1 + 0.5)/2 + 4·0.05·0.5 + 0.05·(0.5 + 0.25)/2 + 9·0.05·0.25
        = 0.25 + 0.0375 + 0.1 + 0.01875 + 0.1125 = 0.51875; cIoU = success at 0.5 = 2/4."""
    samples = [
        _sample([0], [0]),  # 1 / 1
        _sample([0], [0, 1]),  # 1 / 2
        _sample([0], [0, 1, 2, 3]),  # 1 / 4
        _sample([0, 1, 2, 3, 4, 5, 6], [0, 1, 2, 10, 11, 12]),  # 3 / (6 + 4) = 0.3
    ]
    heat, truth = (_t([s[k] for s in samples]) for k in (0, 1))
    cious = consensus_iou(heat, truth).tolist()
    assert cious == [1.0, 0.5, 0.25, 0.3]
    scores = LocalizationScores()
    scores.update(heat[:2], truth[:2])  # two updates add up like one
    scores.update(heat[2:], truth[2:])
    got = scores.result()
    assert got["ciou"] == pytest.approx(50.0, abs=1e-9)
    assert got["auc"] == pytest.approx(100 * 0.51875, abs=1e-9)
    assert got["samples"] == 4


def test_localization_empty_union_reaches_no_threshold():
    """No truth and nothing above the median (constant map): 0/0, which counts nowhere, not even
    at t = 0 (numpy's NaN ≥ 0 is False in the sources). The other sample: cIoU 1.
    success: 1/2 at every threshold → AUC 0.5, cIoU 0.5."""
    scores = LocalizationScores()
    scores.update(_t([[[1, 1], [1, 1]], [[3, 1], [1, 1]]]), _t([[[0, 0], [0, 0]], TL]))
    got = scores.result()
    assert got["ciou"] == pytest.approx(50.0) and got["auc"] == pytest.approx(50.0)


# --------------------------------------------------------------------------------------------
# Separation: the skip rule and the mean over pairs and sources
# --------------------------------------------------------------------------------------------


def _tones(n: int = 4000, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    t = np.arange(n) / 8000
    a = np.sin(2 * np.pi * 440 * t) + 0.1 * rng.standard_normal(n)
    b = np.sin(2 * np.pi * 1250 * t) + 0.1 * rng.standard_normal(n)
    return np.stack([a, b])


def test_separation_skip_rule_and_averaging():
    """Pair 1 and 2 are scored; pair 3 has a silent reference, pair 4 a silent estimate
    (Σx² = 1000 · (0.9e-4)² = 8.1e-6 < 1e-5), pair 5 an estimate just above the line
    (1000 · (1.1e-4)² = 1.21e-5) and is scored. Expected = the mean of the 6 scored
    (pair, source) values mir_eval gives for each pair alone."""
    refs = _tones(1000)
    est1 = refs + 0.3 * refs[::-1]  # each estimate leaks the other source
    est2 = 0.7 * refs + 0.05
    quiet = np.stack([refs[0], np.full(1000, 0.9e-4)])
    above = np.stack([refs[0], np.full(1000, 1.1e-4)])
    silent_ref = np.stack([refs[0], np.zeros(1000)])
    pairs = [(refs, est1), (refs, est2), (silent_ref, est1), (refs, quiet), (refs, above)]
    scores = SeparationScores()
    scores.update(np.stack([p[0] for p in pairs]), np.stack([p[1] for p in pairs]))
    got = scores.result()
    per_pair = [ref.bss(r, e) for r, e in (pairs[0], pairs[1], pairs[4])]  # each [3, 2]
    want = np.concatenate(per_pair, axis=1).mean(1)  # over 3 pairs × 2 sources
    assert got["pairs"] == 3
    for k, key in enumerate(("sdr", "sir", "sar")):
        assert got[key] == pytest.approx(float(want[k]), abs=1e-9)


def test_separation_without_a_scored_pair_raises():
    scores = SeparationScores()
    scores.update(np.zeros((1, 2, 100)), np.ones((1, 2, 100)))
    with pytest.raises(ValueError, match="no test pair"):
        scores.result()


# --------------------------------------------------------------------------------------------
# Agreement with independent transcriptions of the published code on random cases
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("seed", range(4))
def test_avs_agrees_with_the_published_code(seed):
    rng = np.random.default_rng(seed)
    n, side = 10, 12
    truth = np.zeros((n, side, side), dtype=np.int64)
    for i in range(n):
        if i % 4 != 3:  # every fourth frame has no object
            r, c, h, w = rng.integers(0, 6, 2).tolist() + rng.integers(2, 7, 2).tolist()
            truth[i, r : r + h, c : c + w] = 1
    truth[0] = 1  # an all-foreground frame
    prob = ref.sigmoid(rng.standard_normal((n, side, side)) * 2 + truth * 1.5 - 0.5)
    prob[0] = 0.7  # … predicted perfectly
    video = np.arange(n) // 5
    scores = SegmentationScores()
    scores.update(torch.from_numpy(prob), torch.from_numpy(truth).bool(), video.tolist())
    got = scores.result()
    want = ref.release_avs(prob, truth)
    want["miou_avsbench"] = ref.avsbench_miou(prob, truth)
    want["fscore_avsbench"] = ref.avsbench_fscore(prob, truth, video)
    for key, value in want.items():
        assert got[key] == pytest.approx(value, abs=1e-3), key


@pytest.mark.parametrize("seed", range(4))
def test_localization_agrees_with_lvs(seed):
    rng = np.random.default_rng(seed)
    n, side = 40, 16
    heat = rng.standard_normal((n, side, side)).astype(np.float32)
    yy, xx = np.mgrid[:side, :side]
    heat += (3 * np.exp(-((yy - 8) ** 2 + (xx - 8) ** 2) / 20)).astype(np.float32)
    truth = np.zeros((n, side, side))
    for i in range(n):
        r, c = rng.integers(2, 10, 2)
        truth[i, r : r + 6, c : c + 6] = 1.0
        truth[i, r : r + 3, c : c + 3] = 0.5 if i % 2 else 1.0  # soft consensus on half
    scores = LocalizationScores()
    scores.update(torch.from_numpy(heat), torch.from_numpy(truth))
    got, want = scores.result(), ref.lvs_localization(heat, truth)
    assert got["ciou"] == pytest.approx(want["ciou"], abs=1e-3)
    assert got["auc"] == pytest.approx(want["auc"], abs=1e-3)


def test_separation_agrees_with_the_release():
    rng = np.random.default_rng(0)
    refs = np.stack([_tones(2000, seed) for seed in range(3)])
    ests = refs + 0.2 * rng.standard_normal(refs.shape)
    ests[1, 1] = 1e-5  # a silent estimate: that pair is skipped
    scores = SeparationScores()
    scores.update(torch.from_numpy(refs), torch.from_numpy(ests))
    got, want = scores.result(), ref.release_separation(refs, ests)
    assert got["pairs"] == 2
    for key in ("sdr", "sir", "sar"):
        assert got[key] == pytest.approx(want[key], abs=1e-3)


def test_centred_prior_half_level_is_the_expected_ellipse():
    g = centred_prior(1, 400, 600)[0]
    assert float(g.max()) == pytest.approx(1.0, abs=1e-4)
    assert g[200, 300] > g[200, 0] and g[200, 300] > g[0, 300]
    half_axis = 0.25 * math.sqrt(2 * math.log(2))
    assert float((g > 0.5).float().mean()) == pytest.approx(math.pi * half_axis**2, rel=0.01)
