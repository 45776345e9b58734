"""Range errors of the command lines name the flag and state the range it must lie in."""

from __future__ import annotations

import pytest

from .conftest import cli_error

CASES = [
    (["synth", "--out", "{T}/v", "--videos", "0"], "--videos: expected an integer >= 1, got 0"),
    (
        ["synth", "--out", "{T}/v", "--videos", "2", "--seconds", "0.5"],
        "--seconds: expected seconds >= 1, got 0.5",
    ),
    (
        ["synth", "--out", "{T}/v", "--videos", "2", "--workers", "0"],
        "--workers: expected an integer >= 1, got 0",
    ),
    (
        ["synth", "--out", "{T}/v", "--videos", "2", "--object-scale", "5"],
        "--object-scale: expected a number in (0, 4], got 5.0",
    ),
    (
        ["shards", "build", "{T}/a.mp4", "--out", "{T}/s", "--workers", "0"],
        "--workers: expected an integer >= 1, got 0",
    ),
    (
        ["shards", "build", "{T}/a.mp4", "--out", "{T}/s", "--timeout", "-1"],
        "--timeout: expected seconds > 0, got -1.0",
    ),
    (
        ["shards", "build", "{T}/a.mp4", "--out", "{T}/s", "--num-parts", "2", "--part-index", "2"],
        "--part-index: expected an integer in [0, --num-parts 2), got 2",
    ),
    (
        ["data", "bench", "{T}/s", "--world-size", "0"],
        "--world-size: expected an integer >= 1, got 0",
    ),
    (
        ["data", "bench", "{T}/s", "--world-size", "2", "--rank", "2"],
        "--rank: expected an integer in [0, --world-size 2), got 2",
    ),
    (["data", "bench", "{T}/s", "--workers", "-1"], "--workers: expected an integer >= 0, got -1"),
    (["data", "bench", "{T}/s", "--batches", "0"], "--batches: expected an integer >= 1, got 0"),
]


@pytest.mark.parametrize(
    ("args", "message"), CASES, ids=[m.split(":")[0] + "-" + a[0] for a, m in CASES]
)
def test_range_errors_state_the_range(args, message, tmp_path, capsys):
    line = cli_error(capsys, *(a.format(T=tmp_path) for a in args))
    assert line == f"error: {message}"
    assert not any(tmp_path.iterdir()), "nothing is written before the arguments are checked"
