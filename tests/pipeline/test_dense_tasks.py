"""Dense evaluations end to end through the real entry point: rank sums equal one pass,
the baselines are what an independent computation gives, a run killed with -9 resumes to the
same result in the same MLflow run."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from pathlib import Path

import pytest

from tests.pipeline.helpers import AVFUSION, REPO, cpu_env, deepspeed_module

pytestmark = [pytest.mark.slow, pytest.mark.multiproc]


@pytest.fixture(scope="module")
def dense_set(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("dense")
    subprocess.run(
        [
            *AVFUSION,
            "synth",
            "--out",
            str(root / "videos"),
            "--videos",
            "6",
            "--seconds",
            "3",
            "--classes",
            "2",
            "--seed",
            "3",
            "--workers",
            "1",
            "--masks",
        ],
        check=True,
        cwd=REPO,
        env=cpu_env(),
        capture_output=True,
    )
    subprocess.run(
        [
            *AVFUSION,
            "shards",
            "build",
            str(root / "videos" / "labels.csv"),
            "--out",
            str(root / "set"),
            "--clip-seconds",
            "3",
            "--frame-size",
            "64",
            "--samples-per-shard",
            "2",
            "--keep-waveform",
        ],
        check=True,
        cwd=REPO,
        env=cpu_env(),
        capture_output=True,
    )
    return root / "set"


def _args(task: str, shards: Path, out: Path, **extra) -> list[str]:
    base = {
        "encoder.init": "random",
        "encoder.checkpoint": "",
        "encoder.preset": "debug",
        "data.train": shards,
        "data.test": shards,
        "data.batch_size": 4,
        "train.output_dir": out,
        "tracking.enabled": "false",
        "train.log_every": 1,
    }
    base.update(extra)
    return [
        "--config",
        str(REPO / "configs" / "eval" / f"debug_{task}.yaml"),
        *(f"{k}={v}" for k, v in base.items()),
    ]


def _last_json(stdout: str) -> dict:
    """The result line (the deepspeed launcher prints its own lines after it)."""
    return json.loads([line for line in stdout.splitlines() if line.startswith('{"task"')][-1])


def _run(cmd: list[str], timeout: float = 900) -> dict:
    proc = subprocess.run(
        cmd, cwd=REPO, env=cpu_env(), capture_output=True, text=True, timeout=timeout
    )
    assert proc.returncode == 0, f"{cmd}:\n{proc.stdout[-2000:]}\n{proc.stderr[-4000:]}"
    return _last_json(proc.stdout)


def _deepspeed(args: list[str]) -> list[str]:
    return deepspeed_module("pipeline.evaluate", *args)


def test_localization_two_ranks_equal_one_and_the_prior_is_scored_independently(
    dense_set, tmp_path
):
    from model.presets import get_frontend
    from pipeline.eval.dense_data import DenseSpec, dense_items
    from pipeline.eval.metrics.baselines import centred_prior
    from pipeline.eval.metrics.localization import LocalizationScores

    free = {"localization.trained": "none"}  # training-free: no training noise
    one = _run([*AVFUSION, "eval", *_args("localization", dense_set, tmp_path / "one", **free)])
    two = _run(_deepspeed(_args("localization", dense_set, tmp_path / "two", **free)))
    assert one == two  # the 6 clips split 3 + 3, sums reduced
    meter = LocalizationScores()
    for item in dense_items(
        str(dense_set), DenseSpec(64, get_frontend("deepavfusion"), masks=True)
    ):
        meter.update(centred_prior(1, 64, 64, 0.25), item["mask"][None])
    want = meter.result()
    assert (one["baseline_ciou"], one["baseline_auc"]) == (
        round(want["ciou"], 4),
        round(want["auc"], 4),
    )


def test_avs_killed_with_sigkill_resumes_to_the_same_result(dense_set, tmp_path):
    from mlflow.tracking import MlflowClient

    uri = f"sqlite:///{tmp_path / 'mlruns.db'}"
    extra = {"optim.epochs": 4, "optim.warmup_epochs": 1, "avs.oversample": 1, "data.batch_size": 2}
    reference = _run([*AVFUSION, "eval", *_args("avs", dense_set, tmp_path / "ref", **extra)])
    out = tmp_path / "killed"
    args = _args(
        "avs", dense_set, out, **extra, **{"tracking.enabled": "true", "tracking.uri": uri}
    )
    proc = subprocess.Popen(
        [*AVFUSION, "eval", *args],
        cwd=REPO,
        env=cpu_env(),
        start_new_session=True,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    checkpoint, deadline = out / "dense-model.pt", time.time() + 900
    while not checkpoint.exists():
        assert proc.poll() is None and time.time() < deadline, (
            "run ended before its first checkpoint"
        )
        time.sleep(0.02)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    import torch

    assert torch.load(checkpoint, weights_only=True)["epoch"] < 4, "killed after the last epoch"
    resumed = _run([*AVFUSION, "eval", *args])
    assert resumed == reference
    client = MlflowClient(uri)
    runs = client.search_runs([client.get_experiment_by_name("avfusion-demo").experiment_id])
    assert len(runs) == 1 and runs[0].data.metrics["eval/miou"] == resumed["miou"]
    assert runs[0].data.metrics["eval/baseline_miou"] == resumed["baseline_miou"]


def test_separation_trains_both_heads_and_scores_the_mixture_independently(dense_set, tmp_path):
    import mir_eval
    import numpy as np

    from model.presets import get_frontend
    from pipeline.eval.dense_data import DenseSpec, dense_items

    extra = {"optim.epochs": 2, "optim.warmup_epochs": 1}
    got = _run([*AVFUSION, "eval", *_args("separation", dense_set, tmp_path / "run", **extra)])
    assert {"sdr", "sir", "sar", "baseline_audio_only_sdr"} <= set(got)
    assert (tmp_path / "run" / "dense-model.pt").exists()
    assert (tmp_path / "run" / "dense-audio_only.pt").exists()
    # the mixture baseline, computed here from the clips alone: pairs (i, i+1) within each test
    # batch of data.batch_size (4) clips, both sources scored against the mixture
    spec = DenseSpec(64, get_frontend("deepavfusion"), waveform=True, centre_frame=True)
    waves = [item["wave"].numpy() for item in dense_items(str(dense_set), spec)]
    sdr = []
    for start in range(0, len(waves), 4):
        batch = waves[start : start + 4]
        for i, w in enumerate(batch):
            partner = batch[(i + 1) % len(batch)]
            mixture = w + partner
            s, _, _, _ = mir_eval.separation.bss_eval_sources(
                np.stack([w, partner]), np.stack([mixture, mixture]), compute_permutation=False
            )
            sdr.append(s.mean())
    assert got["baseline_sdr"] == round(float(np.mean(sdr)), 4)
    assert got["sdr"] != got["baseline_sdr"] and got["sdr"] != got["baseline_audio_only_sdr"]
