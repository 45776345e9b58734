"""Dataset builds keep the builder's guarantees: ``kill -9`` + ``--resume`` gives the
uninterrupted result; index, media and output on a real S3 server give the local result."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time

import pytest

from tests.support.lookalike import synth_videos, vggsound_tree

from .conftest import REPO, avfusion, cli, cli_error, load_set, meta
from .test_resume_determinism import _same_set

pytestmark = [pytest.mark.slow, pytest.mark.multiproc]

BUILD = ("--workers", "1", "--frame-size", "64", "--samples-per-shard", "1")


@pytest.fixture(scope="module")
def videos(tmp_path_factory):
    return synth_videos(tmp_path_factory.mktemp("videos"), 5, 4.0, seed=6)


def test_a_killed_dataset_build_resumes_to_the_uninterrupted_result(videos, tmp_path, capsys):
    tree = vggsound_tree(tmp_path / "vgg", videos)
    with open(tree.index[0], "a") as f:  # more clips: the full-length video cut at 0..2 s
        f.writelines(f"Cc_000_3_4x,{s},dog barking,train\n" for s in (0, 2))
    args = ["shards", "build", "--dataset", "vggsound", "--index", str(tree.index[0])]
    args += ["--media", str(tree.media), *BUILD, "--shuffle-window", "1"]  # commit per clip
    cli(*args, "--out", tmp_path / "whole")
    out = tmp_path / "killed"
    proc = subprocess.Popen(
        [sys.executable, "-m", "pipeline.cli", *args, "--out", str(out)],
        cwd=REPO,
        start_new_session=True,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    first = out / ".progress" / "shard-000000.tar.json"
    deadline = time.monotonic() + 180
    while not first.exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    assert first.exists() and not (out / "manifest.json").exists(), "killed too late"
    assert "unfinished build; pass --resume" in cli_error(capsys, *args, "--out", out)
    cli(*args, "--out", out, "--resume")
    _same_set(tmp_path / "whole", out)
    assert json.loads((out / "manifest.json").read_text())["dataset"]["built"] == 6


def test_index_and_media_on_s3_build_into_s3_as_locally(s3_server, videos, tmp_path):
    tree = vggsound_tree(tmp_path / "vgg", videos)
    bucket = s3_server.root / "data"
    shutil.copytree(tree.media, bucket / "media")
    shutil.copy(tree.index[0], bucket / "vggsound.csv")
    s3_server.make_bucket("shards")
    common = ["--dataset", "vggsound", "--split", "train", *BUILD]
    avfusion(
        "shards",
        "build",
        *common,
        "--index",
        "s3://data/vggsound.csv",
        "--media",
        "s3://data/media",
        "--out",
        "s3://shards/train",
        env=s3_server.env,
    )
    cli(
        "shards",
        "build",
        *common,
        "--index",
        tree.index[0],
        "--media",
        tree.media,
        "--out",
        tmp_path / "local",
    )
    manifest, errors, samples = load_set(s3_server.root / "shards" / "train")
    local = load_set(tmp_path / "local")
    assert manifest["dataset"]["built"] == local[0]["dataset"]["built"] == 3
    assert [e["stage"] for e in errors] == [e["stage"] for e in local[1]]
    assert set(samples) == set(local[2])
    for key, sample in samples.items():
        other = local[2][key]
        assert meta(sample)["source"].startswith("s3://data/media/")
        assert {k: v for k, v in sample.items() if k != "json"} == {
            k: v for k, v in other.items() if k != "json"
        }
