"""A real 2-rank evaluation run (`deepspeed --module pipeline.evaluate`) on CPU.

Small labelled shard sets written per docs/FORMAT.md (tests/pipeline/conftest.py) and the `debug`
encoder: a 2-rank ZeRO-3 fine-tune of an official-format checkpoint on a multi-label set. An
evaluation killed with -9 and resumed: tests/pipeline/eval/test_dense_tasks.py (the engine is every
task's; a linear probe of a pretrained run: tests/pipeline/pretrain/test_run_artifacts.py).
A test set whose classes differ is a pre-flight error: tests/pipeline/test_eval_preflight.py.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest
import torch

from model import build_avmae
from model.parity import apply_weight_rule
from tests.pipeline.pretrain.test_train import env
from tests.support.procs import REPO, deepspeed_module
from tests.support.shardsets import LABELS, write_shard_set

pytestmark = [pytest.mark.multiproc, pytest.mark.slow]

CONFIG = REPO / "configs" / "eval" / "debug_linear.yaml"


def labelled_set(dest: Path, n: int, multi: bool = False, labels=LABELS) -> Path:
    """``n`` samples; multi-label: every third sample also carries the next class."""

    def relabel(i: int, sample: dict) -> dict:
        meta = json.loads(sample["json"])
        names = [labels[i % len(labels)]] + (
            [labels[(i + 1) % len(labels)]] if multi and i % 3 == 0 else []
        )
        meta.update(
            label=";".join(names),
            label_index=sorted(labels.index(x) for x in names) if multi else labels.index(names[0]),
        )
        return {**sample, "json": json.dumps(meta).encode()}

    manifest = write_shard_set(dest, n, 8, frame_size=72, damage=relabel)
    counts = [0] * len(labels)
    for i in range(n):
        counts[i % len(labels)] += 1
        if multi and i % 3 == 0:
            counts[(i + 1) % len(labels)] += 1
    manifest.update(labels=list(labels), multi_label=multi, labelled_inputs=n, label_counts=counts)
    (dest / "manifest.json").write_text(json.dumps(manifest))
    return dest


def overrides(train: Path, test: Path, out: Path, **extra) -> list[str]:
    base = {
        "encoder.checkpoint": "",
        "encoder.init": "random",
        "encoder.preset": "debug",
        "data.train": train,
        "data.test": test,
        "train.output_dir": out,
        "data.train.batch_size": 8,
        "data.train.workers": 1,
        "data.test.batch_size": 8,
        "data.test.workers": 1,
        "optim.epochs": 2,
        "optim.warmup_epochs": 1,
        "optim.lr": 1.0,
        "train.log_every": 1,
        "eval.every_epochs": 1,
        "tracking.uri": f"sqlite:///{out}.db",
        "tracking.system_metrics": "false",
    }
    base.update(extra)
    return [f"{k}={v}" for k, v in base.items()]


def run(cmd: list[str], timeout: float = 900) -> dict:
    proc = subprocess.run(cmd, cwd=REPO, env=env(), capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, f"{cmd} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-5000:]}"
    # the result is rank 0's last line; the deepspeed launcher may log after it
    return json.loads(
        next(line for line in reversed(proc.stdout.splitlines()) if line.startswith("{"))
    )


@pytest.fixture(scope="module")
def sets(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("eval-sets")
    return {
        "mtrain": labelled_set(root / "mtrain", 48, multi=True),
        "mtest": labelled_set(root / "mtest", 24, multi=True),
    }


def test_two_rank_zero3_finetune_of_an_official_checkpoint_on_multilabel_data(sets, tmp_path):
    model = build_avmae("debug")
    apply_weight_rule(model)  # the parity fixtures' weights
    ckpt = tmp_path / "official.pth"
    torch.save({"state_dict": model.state_dict(), "epoch": 200}, ckpt)  # the release's file layout
    out = tmp_path / "ft"
    args = overrides(
        sets["mtrain"],
        sets["mtest"],
        out,
        **{
            "task": "finetune",
            "encoder.init": "pretrained",
            "encoder.checkpoint": ckpt,
            "encoder.preset": "debug",
            "encoder.drop_path": 0.2,
            "optim.name": "adamw",
            "optim.lr": 1e-3,
            "optim.layer_decay": 0.75,
            "optim.weight_decay": 0.05,
            "train.zero_stage": 3,
            "classification.batchnorm": "false",
            "classification.bias_init": "class_freq",
            "classification.mixup": 1.0,
            "classification.label_smoothing": 0.1,
            "eval.clips": 2,
            "eval.frames": 2,
            "eval.random_vol_db": 2.0,
        },
    )
    result = run(deepspeed_module("pipeline.evaluate", "--config", str(CONFIG), *args))
    assert (
        result["task"] == "finetune" and result["videos"] == 24 and result["steps"] == 6
    )  # 48 / (8·2) · 2
    for head in ("image", "audio", "fusion", "all"):
        assert 0 < result[f"map_{head}"] <= 100 and 0 <= result[f"auc_{head}"] <= 100
    predictions = [json.loads(x) for x in (out / "predictions.jsonl").read_text().splitlines()]
    assert len(predictions) == 24 and len({p["key"] for p in predictions}) == 24
    assert any(len(p["label"]) == 2 for p in predictions) and len(predictions[0]["top"]) == 3
    assert len((out / "class_ap.tsv").read_text().splitlines()) == 1 + len(LABELS)
    from mlflow.tracking import MlflowClient

    client = MlflowClient(f"sqlite:///{out}.db")
    (mlrun,) = client.search_runs([client.get_experiment_by_name("avfusion-demo").experiment_id])
    assert mlrun.data.metrics["eval/map_all"] == pytest.approx(result["map_all"])
    assert (
        mlrun.data.params["task"] == "finetune" and mlrun.data.tags["avfusion.task"] == "finetune"
    )
    assert {h.step for h in client.get_metric_history(mlrun.info.run_id, "eval/map_all")} == {3, 6}
