"""A small labelled shard set built by the real CLI (for benchmarks and tests)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
AVFUSION = [sys.executable, "-m", "pipeline.cli"]


def synth_shards(root: Path, videos: int = 24, seconds: float = 3.0, classes: int = 3) -> Path:
    """A labelled shard set built by the real CLI from a synthetic corpus."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    subprocess.run(
        [
            *AVFUSION,
            "synth",
            "--out",
            str(root / "videos"),
            "--videos",
            str(videos),
            "--seconds",
            str(seconds),
            "--classes",
            str(classes),
            "--seed",
            "0",
        ],
        check=True,
        cwd=REPO,
        env=env,
        capture_output=True,
    )
    # Relative input paths (run from ``root``): the sample keys and the build-time shuffle hash the
    # path as given, so the set (and a loss curve trained on it) does not depend on where it lives.
    subprocess.run(
        [
            *AVFUSION,
            "shards",
            "build",
            "videos/labels.csv",
            "--out",
            "shards",
            "--workers",
            "2",
            "--samples-per-shard",
            "8",
        ],
        check=True,
        cwd=root,
        env={
            **env,
            "PYTHONPATH": os.pathsep.join(p for p in (str(REPO), env.get("PYTHONPATH")) if p),
        },
        capture_output=True,
    )
    return root / "shards"
