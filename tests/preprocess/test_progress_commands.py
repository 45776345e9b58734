"""Every long command logs progress lines (count/total, rate, ETA) while it runs when stderr is
not a terminal (here: pytest's capture), not only a summary at the end."""

from __future__ import annotations

import re

import pytest

from .conftest import cli

pytestmark = [pytest.mark.slow, pytest.mark.multiproc]

TINY = (
    "--clip-seconds",
    "2",
    "--min-clip-seconds",
    "1",
    "--frame-size",
    "32",
    "--samples-per-shard",
    "1",
    "--workers",
    "1",
)


@pytest.fixture(autouse=True)
def _every_update_logged(monkeypatch):
    # a microsecond: every update is at least that far from the last, so each one is a line
    monkeypatch.setenv("AVFUSION_PROGRESS_SECONDS", "0.000001")


def _counts(err: str, desc: str, unit: str, total: int) -> list[int]:
    """The counts of the progress lines of ``desc`` in ``err`` (each must carry the total,
    a rate and an ETA)."""
    line = re.compile(
        rf"^{desc}: (\d+)/{total} {unit} \(\d+%\) .*{unit}/s, elapsed \d\d:\d\d, ETA \S+$"
    )
    matches = [line.match(text) for text in err.splitlines() if text.startswith(f"{desc}:")]
    assert matches and all(matches), err
    return [int(m.group(1)) for m in matches]


def _assert_progress(err: str, desc: str, unit: str, total: int) -> None:
    counts = _counts(err, desc, unit, total)
    assert counts == sorted(counts) and counts[-1] == total, err
    assert any(0 < c < total for c in counts), f"no line while {desc} ran:\n{err}"


def test_long_commands_log_progress(tmp_path, capsys):
    videos = tmp_path / "videos"
    cli(
        "synth",
        "--out",
        videos,
        "--videos",
        "4",
        "--seconds",
        "2",
        "--classes",
        "2",
        "--workers",
        "1",
    )
    _assert_progress(capsys.readouterr().err, "synth", "videos", 4)
    for i in range(2):
        cli(
            "shards",
            "build",
            videos / "labels.csv",
            "--out",
            tmp_path / f"part{i}",
            *TINY,
            "--num-parts",
            "2",
            "--part-index",
            str(i),
        )
        _assert_progress(capsys.readouterr().err, "shards build", "videos", 2)
    cli("shards", "verify", tmp_path / "part0")
    _assert_progress(capsys.readouterr().err, "shards verify", "shards", 2)
    cli("shards", "merge", tmp_path / "part0", tmp_path / "part1", "--out", tmp_path / "merged")
    _assert_progress(capsys.readouterr().err, "shards merge", "shards", 4)
    cli(
        "data",
        "bench",
        tmp_path / "merged",
        "--workers",
        "0",
        "--batch-size",
        "1",
        "--image-size",
        "32",
    )
    _assert_progress(capsys.readouterr().err, "data bench", "batches", 4)
