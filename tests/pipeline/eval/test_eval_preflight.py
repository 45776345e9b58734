"""An evaluation checks its encoder, data, batch arithmetic and output folder before DeepSpeed
starts (#29.6): each fault is one line naming the key or path, exit status 2, no process group
(in this process: the entry point's ``main``, so the test can see none was joined)."""

from __future__ import annotations

import json
import shutil

import pytest

from tests.pipeline.conftest import write_shard_set
from tests.pipeline.test_user_faults import checkpoint_root, never_joined, one_error_line
from tests.support.procs import REPO

LINEAR = str(REPO / "configs" / "eval" / "debug_linear.yaml")


@pytest.fixture(scope="module")
def sets(tmp_path_factory, shard_set):
    """The labelled shard set, the same set with other classes, an unlabelled one, a checkpoint."""
    root = tmp_path_factory.mktemp("eval-preflight")
    other = root / "other-classes"
    shutil.copytree(shard_set, other)
    manifest = json.loads((other / "manifest.json").read_text())
    (other / "manifest.json").write_text(json.dumps(manifest | {"labels": ["ant", "cat", "dog"]}))
    write_shard_set(root / "unlabelled", 16, 8, labelled=False)
    checkpoint_root(root / "run" / "checkpoints")
    return {"S": str(shard_set), "O": str(other), "U": str(root / "unlabelled"), "R": root}


# case → (overrides, the start of the error line); {S} labelled set, {O} other classes,
# {U} unlabelled, {R} the folder holding run/ (a debug-preset checkpoint), {T} scratch
CASES = {
    "encoder missing": (
        {"encoder.checkpoint": "{T}/none"},
        "error: encoder.checkpoint: {T}/none: no such file or folder",
    ),
    "encoder preset disagrees with the checkpoint": (
        {"encoder.checkpoint": "{R}/run", "encoder.preset": "vit-b"},
        "error: encoder.preset: 'vit-b', but {R}/run/checkpoints/step00000002 was written by "
        "model preset 'debug' (its stored config); leave encoder.preset unset or set it to 'debug'",
    ),
    "test set missing": ({"data.test": "{T}/none"}, "error: {T}/none/manifest.json: not found"),
    "unlabelled train set": (
        {"data.train": "{U}"},
        "error: {U}/manifest.json: no 'labels' — the shard set is unlabelled",
    ),
    "class lists differ": (
        {"data.test": "{O}"},
        "error: {O}/manifest.json: class list differs from {S}/manifest.json (class 0: 'bird' "
        "in the train set, 'ant' in the test set)",
    ),
    "batch arithmetic": (
        {"train.effective_batch_size": 12},
        "error: train.effective_batch_size: 12 is not a multiple of data.train.batch_size × world "
        "size = 8 × 1",
    ),
    "epoch too short": (  # 61 samples, batches of 8, the rest padded: 8 batches < 9
        {"train.effective_batch_size": 72},
        "error: data.train.shards: 8 batches per rank per epoch is fewer than one optimizer step "
        "(9 micro-batches)",
    ),
    "output folder not writable": (
        {"train.output_dir": "{T}/a-file/eval"},
        "error: train.output_dir: cannot write checkpoints to {T}/a-file/eval",
    ),
    "dense set without masks": (
        {"task": "avs", "optim.name": "adamw"},
        "error: {S}/manifest.json: the set has no mask members",
    ),
}


@pytest.mark.parametrize("case", list(CASES))
def test_bad_evaluation_setup_fails_before_deepspeed_starts(
    case, sets, tmp_path, capsys, monkeypatch
):
    from pipeline.evaluate import main

    monkeypatch.setattr("pipeline.engine.distributed.init_distributed", never_joined)

    (tmp_path / "a-file").write_text("")
    names = {k: v for k, v in sets.items()} | {"T": tmp_path}
    extra, expected = CASES[case]
    base = {
        "encoder.checkpoint": "",
        "encoder.init": "random",
        "encoder.preset": "debug",
        "data.train": "{S}",
        "data.test": "{S}",
        "data.train.batch_size": 8,
        "train.output_dir": "{T}/eval",
        "tracking.enabled": "false",
    }
    if "encoder.checkpoint" in extra:
        base |= {"encoder.init": "pretrained", "encoder.preset": ""}
    overrides = [f"{k}={str(v).format(**names)}" for k, v in (base | extra).items()]
    assert main(["--config", LINEAR, *overrides]) == 2
    line = one_error_line(capsys)
    assert line.startswith(expected.format(**names)), line
