"""#14.7: a write limit (``ulimit -f``, RLIMIT_FSIZE) hit while building shards: one line naming
the shard, the shards committed before it kept byte for byte, and ``--resume`` completes the set
exactly as an unlimited build does."""

from __future__ import annotations

import resource
import subprocess
import sys

import av
import numpy as np
import pytest

from .conftest import REPO
from .test_resume_determinism import _same_set

pytestmark = [pytest.mark.multiproc]

ARGS = ["--no-shuffle", "--samples-per-shard", "2", "--frame-size", "96", "--clip-seconds", "3"]
ARGS += ["--workers", "1"]


def write_video(path, noise: bool, seconds: int = 3, fps: int = 10, size: int = 96) -> None:
    """A flat grey clip (small JPEG frames) or a noise clip (large ones), with a tone."""
    rng = np.random.default_rng(0)
    with av.open(str(path), "w") as c:
        v = c.add_stream("libx264", rate=fps)
        v.width = v.height = size
        v.pix_fmt = "yuv420p"
        a = c.add_stream("aac", rate=16000)
        for _ in range(seconds * fps):
            img = rng.integers(0, 256, (size, size, 3), np.uint8) if noise else None
            img = np.full((size, size, 3), 128, np.uint8) if img is None else img
            c.mux(v.encode(av.VideoFrame.from_ndarray(img, format="rgb24")))
        c.mux(v.encode())
        tone = 0.1 * np.sin(2 * np.pi * 440 * np.arange(16000 * seconds) / 16000)
        for k in range(0, tone.size, 1024):
            frame = av.AudioFrame.from_ndarray(
                tone[None, k : k + 1024].astype(np.float32), format="fltp", layout="mono"
            )
            frame.sample_rate = 16000
            c.mux(a.encode(frame))
        c.mux(a.encode())


def build(inputs, out, *extra, limit: int | None = None) -> subprocess.CompletedProcess:
    def set_limit():
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

    return subprocess.run(
        [sys.executable, "-m", "pipeline.cli", "shards", "build", inputs, "--out", out, *ARGS]
        + list(extra),
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
        preexec_fn=set_limit if limit else None,
    )


def test_write_limit_during_a_build_keeps_the_committed_shards(tmp_path):
    inputs = tmp_path / "in"
    inputs.mkdir()
    for name, noise in (("a", False), ("b", False), ("c", True), ("d", False)):
        write_video(inputs / f"{name}.mp4", noise)
    reference = tmp_path / "reference"
    assert build(inputs, reference).returncode == 0
    sizes = [(reference / f"shard-00000{i}.tar").stat().st_size for i in (0, 1)]
    assert sizes[0] < sizes[1], sizes  # [flat, flat] then [noise, flat]
    out = tmp_path / "limited"
    proc = build(inputs, out, limit=(sizes[0] + sizes[1]) // 2)
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines()[-1] == (
        f"error: {out}/shard-000001.tar: write failed (File too large); nothing was replaced"
    )
    assert sorted(p.name for p in out.iterdir()) == [".progress", "shard-000000.tar"]
    assert (out / "shard-000000.tar").read_bytes() == (reference / "shard-000000.tar").read_bytes()
    assert build(inputs, out, "--resume").returncode == 0
    _same_set(out, reference)
