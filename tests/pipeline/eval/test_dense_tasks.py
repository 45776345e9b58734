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

from avbase.shardformat import read_samples
from tests.pipeline.pretrain.test_train import losses
from tests.support.procs import AVFUSION, REPO, cpu_env, deepspeed_module

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
        "data.train.batch_size": 4,
        "data.test.batch_size": 4,
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


def _run(cmd: list[str], timeout: float = 900, env: dict | None = None) -> dict:
    proc = subprocess.run(
        cmd, cwd=REPO, env=env or cpu_env(), capture_output=True, text=True, timeout=timeout
    )
    assert proc.returncode == 0, f"{cmd}:\n{proc.stdout[-2000:]}\n{proc.stderr[-4000:]}"
    return _last_json(proc.stdout)


def _deepspeed(args: list[str]) -> list[str]:
    return deepspeed_module("pipeline.evaluate", *args)


def _masks(root: Path, size: int) -> list:
    """Every stored mask of the set, nearest-resized to the model side (read here, from the tars)."""
    import torch

    from avbase.members import read_mask

    out = []
    for tar in sorted(root.glob("shard-*.tar")):
        with open(tar, "rb") as f:
            for _, members in read_samples(f):
                for ext, data in members:
                    if ext.endswith(".mask.png"):
                        m = torch.from_numpy(read_mask(data))[None, None].float()
                        resized = torch.nn.functional.interpolate(m, size=(size, size))
                        out.append(resized[0, 0] > 0.5)
    return out


def test_localization_two_ranks_equal_one_and_the_prior_is_scored_independently(
    dense_set, tmp_path
):
    from pipeline.eval.metrics.baselines import centred_prior
    from pipeline.eval.metrics.localization import LocalizationScores

    free = {"localization.trained": "none"}  # training-free: no training noise
    one = _run([*AVFUSION, "eval", *_args("localization", dense_set, tmp_path / "one", **free)])
    two = _run(_deepspeed(_args("localization", dense_set, tmp_path / "two", **free)))
    assert one == two  # the 6 clips split 3 + 3, sums reduced
    masks = _masks(dense_set, 64)
    scores = LocalizationScores()
    for mask in masks:
        scores.update(centred_prior(1, 64, 64, 0.25), mask[None])
    want = scores.result()
    assert one["baseline_samples"] == len(masks) == 3 * 6
    assert (one["baseline_ciou"], one["baseline_auc"]) == (
        round(want["ciou"], 4),
        round(want["auc"], 4),
    )


def test_dense_training_items_are_reshuffled_every_epoch(dense_set):
    """The AVS task reads its items through the shared loader: another order in every epoch."""
    from model.presets import get_model_config
    from pipeline.data.dense import DenseSpec
    from pipeline.engine.distributed import DistInfo
    from pipeline.eval.config import load_eval_config
    from pipeline.eval.dense import dense_loader

    cfg = load_eval_config(
        REPO / "configs" / "eval" / "debug_avs.yaml",
        _args("avs", dense_set, dense_set / "unused")[2:]
        + ["data.train.workers=0", "data.train.batch_size=2"],  # 3 batches: no rank padding
    )
    info = DistInfo(0, 1, 0, __import__("torch").device("cpu"))
    loader = dense_loader(cfg, info, get_model_config("debug"), DenseSpec(masks=True), train=True)
    orders = []
    for epoch in (0, 1):
        loader.set_epoch(epoch)
        orders.append([k for batch in loader for k in batch["key"]])
    assert sorted(orders[0]) == sorted(orders[1]) and len(orders[0]) == 6
    assert orders[0] != orders[1]


def test_avs_from_s3_accumulates_and_resumes_after_kill_9(dense_set, s3_server, tmp_path):
    """The acceptance run of #24: shards on the tests' S3 server, effective batch = 4 × the
    per-rank batch (accumulation 4 in the run's MLflow params), kill -9 mid-run, and the same
    command resumes to the uninterrupted run's final numbers in the same MLflow run."""
    import shutil

    from mlflow.tracking import MlflowClient

    shutil.copytree(dense_set, s3_server.root / "dense" / "set")
    s3_set = f"{s3_server.make_bucket('dense')}/set"
    extra = {
        "data.train": s3_set,
        "data.train.batch_size": 1,
        "train.effective_batch_size": 4,  # 6 clips: 6 micro-batches, 1 step of 4 per epoch
        "optim.epochs": 4,
        "optim.warmup_epochs": 1,
        "avs.oversample": 1,
        "train.save_every_steps": 1,
        "tracking.enabled": "true",
    }
    env = cpu_env() | s3_server.env
    uri = f"sqlite:///{tmp_path / 'mlruns.db'}"
    ref_args = _args("avs", dense_set, tmp_path / "ref", **extra, **{"tracking.uri": uri})
    reference = _run([*AVFUSION, "eval", *ref_args], env=env)
    out = tmp_path / "killed"
    kill_uri = f"sqlite:///{tmp_path / 'killed.db'}"
    args = _args("avs", dense_set, out, **extra, **{"tracking.uri": kill_uri})
    proc = subprocess.Popen(
        [*AVFUSION, "eval", *args],
        cwd=REPO,
        env=env,
        start_new_session=True,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    latest, deadline = out / "checkpoints" / "latest", time.time() + 900
    while not (latest.exists() and latest.read_text().strip() >= "step00000002"):
        assert proc.poll() is None and time.time() < deadline, "run ended before step 2"
        time.sleep(0.02)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    assert latest.read_text().strip() < "step00000004", "killed after the last step"
    resumed = _run([*AVFUSION, "eval", *args], env=env)
    assert resumed == reference
    want = losses(tmp_path / "ref")
    assert sorted(want) == [1, 2, 3, 4]  # one step per epoch
    assert losses(out) == pytest.approx(want, rel=1e-6)  # the last value logged for each step
    for db, result in ((uri, reference), (kill_uri, resumed)):
        client = MlflowClient(db)
        (run,) = client.search_runs([client.get_experiment_by_name("avfusion-demo").experiment_id])
        assert run.info.status == "FINISHED"
        assert run.data.params["derived.accumulation_steps"] == "4"
        assert run.data.params["derived.effective_batch_size"] == "4"
        assert run.data.metrics["eval/miou"] == result["miou"]


def test_separation_draws_its_test_pairs_from_two_classes_of_the_stored_labels(dense_set):
    """Without separation.pairs: every clip of the test set, paired with one of another class
    (its label read from the shards: 3 clips of each of 2 classes give 3 pairs)."""
    from types import SimpleNamespace

    import torch

    from model import get_model_config
    from pipeline.engine.distributed import DistInfo
    from pipeline.eval.config import load_eval_config
    from pipeline.eval.separation import test_clips, test_pairs

    argv = _args("separation", dense_set, dense_set.parent / "unused")
    cfg = load_eval_config(argv[1], argv[2:])
    info = DistInfo(0, 1, 0, torch.device("cpu"))
    clips = test_clips(cfg, info, SimpleNamespace(mcfg=get_model_config("debug")))
    stored = {}
    for tar in sorted(dense_set.glob("shard-*.tar")):
        with open(tar, "rb") as f:
            for key, members in read_samples(f):
                stored[key] = json.loads(dict(members)["json"])["label_index"]
    assert {k: c[2] for k, c in clips.items()} == stored
    pairs, how = test_pairs(cfg, [[(k, c[2]) for k, c in clips.items()]])
    assert len(pairs) == 3 and "different classes" in how
    assert all(stored[a] != stored[b] for a, b in pairs)
    assert sorted(k for p in pairs for k in p) == sorted(stored)


def test_separation_trains_both_heads_and_scores_the_mixture_independently(dense_set, tmp_path):
    """Listed pairs (separation.pairs): the mixture baseline equals mir_eval's on the clips'
    own waveforms (the centre 3-s window of a 3-s clip is the whole clip)."""
    import mir_eval
    import numpy as np

    from avbase.members import read_flac

    waves, labels = {}, {}
    for tar in sorted(dense_set.glob("shard-*.tar")):
        with open(tar, "rb") as f:
            for key, members in read_samples(f):
                waves[key] = read_flac(dict(members)["flac"])[0]
                labels[key] = json.loads(dict(members)["json"])["label"]
    keys = sorted(waves)
    pairs = [
        (a, b) for a, b in zip(keys, keys[1:] + keys[:1], strict=True) if labels[a] != labels[b]
    ]
    (tmp_path / "pairs.csv").write_text("key_a,key_b\n" + "".join(f"{a},{b}\n" for a, b in pairs))
    extra = {
        "optim.epochs": 2,
        "optim.warmup_epochs": 1,
        "separation.pairs": tmp_path / "pairs.csv",
    }
    got = _run([*AVFUSION, "eval", *_args("separation", dense_set, tmp_path / "run", **extra)])
    assert {"sdr", "sir", "sar", "baseline_audio_only_sdr"} <= set(got)
    assert got["pairs_listed"] == len(pairs) and got["baseline_pairs"] == len(pairs)
    for name in ("model", "audio_only"):  # one engine run per trained head
        assert (tmp_path / "run" / "checkpoints" / name / "latest").is_file()
    sdr = []
    for a, b in pairs:
        n = min(len(waves[a]), len(waves[b]), 48000)
        ref = np.stack([waves[a][:n], waves[b][:n]])
        mixture = ref.sum(0)
        s, _, _, _ = mir_eval.separation.bss_eval_sources(
            ref, np.stack([mixture, mixture]), compute_permutation=False
        )
        sdr.append(s.mean())
    assert got["baseline_sdr"] == pytest.approx(float(np.mean(sdr)), abs=1e-3)
