"""The debug dense evaluations run on sets built from dataset look-alikes (``--dataset
avsbench-s4`` for ``configs/eval/debug_avs.yaml``, ``--dataset vggss`` for
``configs/eval/debug_localization.yaml``): the configs need only path overrides, and the
scored masks are the ones the builds stored (the prior baseline, computed here from the sets,
is what the run reports)."""

from __future__ import annotations

import json
import subprocess

import pytest

from tests.support.lookalike import avsbench_tree, synth_videos, vggss_tree
from tests.support.procs import AVFUSION, REPO, cpu_env

from .conftest import cli

pytestmark = [pytest.mark.slow, pytest.mark.multiproc]

BUILD = ("--workers", "1", "--frame-size", "64")


def _eval(config: str, out, **overrides) -> dict:
    args = {
        "encoder.init": "random",
        "encoder.checkpoint": "",
        "encoder.preset": "debug",
        "train.output_dir": out,
        "tracking.enabled": "false",
        "optim.epochs": 1,
        "optim.warmup_epochs": 0,
        "avs.oversample": 1,
        **overrides,
    }
    cmd = [
        *AVFUSION,
        "eval",
        "--config",
        str(REPO / "configs" / "eval" / config),
        *(f"{k}={v}" for k, v in args.items()),
    ]
    proc = subprocess.run(cmd, cwd=REPO, env=cpu_env(), capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, f"{cmd}:\n{proc.stdout[-2000:]}\n{proc.stderr[-4000:]}"
    return json.loads([x for x in proc.stdout.splitlines() if x.startswith('{"task"')][-1])


def _prior(shards, meter_type, by_video: bool = False) -> dict:
    """The centred-prior baseline scored on every masked frame of ``shards`` (64-px items)."""
    from pipeline.data.dense import DenseSpec
    from pipeline.eval.metrics.baselines import centred_prior
    from tests.support.dense import dense_rows

    meter = meter_type()
    for key, row in dense_rows(shards, DenseSpec(masks=True)):
        prior = centred_prior(1, 64, 64, 0.25)
        if by_video:
            meter.update(prior, row["mask"][None] > 0.5, [key])
        else:
            meter.update(prior, row["mask"][None])
    return {k: round(v, 4) for k, v in meter.result().items()}


def test_debug_avs_runs_on_an_avsbench_s4_lookalike(tmp_path_factory, tmp_path):
    from pipeline.eval.metrics.segmentation import SegmentationScores

    videos = synth_videos(tmp_path_factory.mktemp("avs-videos"), 4, 5.0, seed=3)
    tree = avsbench_tree(tmp_path / "avs", videos)
    index = ("--dataset", "avsbench-s4", "--index", tree.index[0], "--media", tree.media)
    for split in ("train", "val"):
        cli("shards", "build", *index, "--split", split, "--out", tmp_path / split, *BUILD)
    got = _eval(
        "debug_avs.yaml",
        tmp_path / "run",
        **{
            "data.train": tmp_path / "train",
            "data.test": tmp_path / "val",
            "data.train.batch_size": 2,
        },
    )
    want = _prior(tmp_path / "val", SegmentationScores, by_video=True)  # 2 clips × 5 frames
    assert got["task"] == "avs"
    assert (got["baseline_miou"], got["baseline_fscore"]) == (want["miou"], want["fscore"])
    assert 0 <= got["miou"] <= 100 and got["miou"] != got["baseline_miou"]


def test_debug_localization_runs_on_a_vggss_lookalike(tmp_path_factory, tmp_path):
    from pipeline.eval.metrics.localization import LocalizationScores

    videos = synth_videos(tmp_path_factory.mktemp("vggss-videos"), 4, 4.0, seed=4)
    tree = vggss_tree(tmp_path / "vggss", videos)
    cli(
        "shards",
        "build",
        "--dataset",
        "vggss",
        "--index",
        tree.index[0],
        "--media",
        tree.media,
        "--out",
        tmp_path / "set",
        *BUILD,
    )
    shards = tmp_path / "set"
    got = _eval(
        "debug_localization.yaml",
        tmp_path / "run",
        **{"data.train": shards, "data.test": shards, "data.train.batch_size": 2},
    )
    want = _prior(shards, LocalizationScores)  # one masked (centre) frame per clip
    assert got["task"] == "localization"
    assert (got["baseline_ciou"], got["baseline_auc"]) == (want["ciou"], want["auc"])
    assert 0 <= got["ciou"] <= 100 and 0 <= got["auc"] <= 100
