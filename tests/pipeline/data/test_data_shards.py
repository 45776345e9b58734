"""The loader on shards built by ``avfusion shards build`` from real videos, and the bench CLI."""

from __future__ import annotations

import hashlib
import io
import json
import os
import subprocess
import sys
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch

from avbase.features import FRONTENDS, ImageSpec
from pipeline.config import DataConfig
from pipeline.data.augment import pad_frames
from pipeline.data.loader import build_loader
from tests.pipeline.data.test_data_loader import keys_of, run_epoch
from tests.support.media import FOUR_VIDEOS, REPO, SHARED

VIDEOS = FOUR_VIDEOS  # 7 samples of 10 s
DAF = FRONTENDS["deepavfusion"]
pytestmark = [pytest.mark.slow, pytest.mark.multiproc]


def avfusion(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "pipeline.cli", *args],
        cwd=REPO,
        check=True,
        capture_output=True,
        text=True,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )


@pytest.fixture(scope="session")
def built(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("built") / "shards"
    avfusion(
        "shards",
        "build",
        *(str(SHARED / "media" / "typical" / v) for v in VIDEOS),
        "--out",
        str(out),
        "--samples-per-shard",
        "2",
        "--workers",
        "2",
    )
    return out


def stored(root: Path) -> dict[str, dict]:
    """Every sample's json and mel, read with the standard library (independent of the loader)."""
    samples: dict[str, dict] = {}
    for tar in sorted(root.glob("shard-*.tar")):
        with tarfile.open(tar) as tf:
            for m in tf.getmembers():
                key, ext = m.name.split(".", 1)
                data = tf.extractfile(m).read()
                if ext == "json":
                    samples.setdefault(key, {})["meta"] = json.loads(data)
                elif ext == "mel.npy":
                    samples.setdefault(key, {})["mel"] = torch.from_numpy(
                        np.load(io.BytesIO(data))
                    ).float()
    return samples


def loader(root, rank=0, world=2, train=True, batch=2, workers=2):
    return build_loader(
        DataConfig(shards=str(root), batch_size=batch, workers=workers),
        audio=DAF,
        image=ImageSpec(),
        rank=rank,
        world_size=world,
        seed=0,
        train=train,
    )


def test_built_shards_stream_every_sample_once_per_epoch(built):
    samples = stored(built)
    assert len(samples) == 7
    seen = []
    for rank in range(2):
        batches = run_epoch(loader(built, rank=rank))
        for b in batches:
            assert b["image"].shape == (2, 3, 224, 224) and b["audio"].shape == (2, 1, 128, 192)
            assert b["audio"].isfinite().all() and b["audio"].min() >= -7.5
            assert b["image"].flatten(1).std(1).min() > 0.05
        seen.append(set(keys_of(batches)))
    assert not seen[0] & seen[1] and seen[0] | seen[1] == set(samples)


def test_built_shards_evaluation_windows(built):
    samples = stored(built)
    (batch,) = run_epoch(loader(built, world=1, train=False, batch=7, workers=0))
    for key, audio in zip(batch["key"], batch["audio"], strict=True):
        meta, mel = samples[key]["meta"], samples[key]["mel"]
        dur = meta["clip_seconds"]
        if dur >= 3.0:
            start = round((dur / 2 - 1.5) * 64)
            assert torch.equal(audio[0], mel[:, start : start + 192])
        else:  # the 2.07-s partial clip: padded
            assert mel.shape[1] < 192
            assert torch.equal(audio[0], pad_frames(mel, 192, DAF))
    assert any(samples[k]["meta"]["clip_seconds"] < 3.0 for k in batch["key"])


def test_bench_ranks_report_disjoint_keys_covering_the_set(built, tmp_path, capsys):
    """`avfusion data bench` as two ranks (in this process: the console entry point's main)."""
    from pipeline.cli import main

    reports, keys = [], []
    for rank in range(2):
        out = tmp_path / f"keys{rank}.txt"
        code = main(
            [
                "data",
                "bench",
                str(built),
                "--world-size",
                "2",
                "--rank",
                str(rank),
                "--workers",
                "2",
                "--batch-size",
                "2",
                "--keys-out",
                str(out),
            ]
        )
        assert code == 0
        (line,) = capsys.readouterr().out.strip().splitlines()
        reports.append(json.loads(line))
        keys.append(out.read_text().split())
    for report, rank_keys in zip(reports, keys, strict=True):
        assert report["keys"] == len(rank_keys) and report["samples_per_s"] > 0
        assert report["keys_sha256"] == hashlib.sha256("\n".join(rank_keys).encode()).hexdigest()
        assert report["errors"] == {"shard": 0, "meta": 0, "audio": 0, "image": 0}
        assert report["batches"] == report["batches_per_epoch"] == 2
    assert not set(keys[0]) & set(keys[1])
    assert set(keys[0]) | set(keys[1]) == set(stored(built))
    assert sum(r["samples"] for r in reports) == 7 + sum(r["padded"] for r in reports)
