"""Real media, the CLI as a subprocess, and one full build shared by the builder tests."""

from __future__ import annotations

import csv
import io
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from tests.support.media import MEDIA, REPO


def media_rows() -> list[dict]:
    """MANIFEST.tsv rows: path, expected (ok | fail: ... | any: ...), expected_samples, ..."""
    with open(MEDIA / "MANIFEST.tsv", newline="") as f:
        return list(csv.DictReader(f, delimiter="\t"))


def avfusion(
    *args: str, env: dict | None = None, check: bool = True, timeout: float = 240
) -> subprocess.CompletedProcess:
    """Run the real console entry point in a fresh process."""
    proc = subprocess.run(
        [sys.executable, "-m", "pipeline.cli", *map(str, args)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, **(env or {})},
    )
    if check and proc.returncode != 0:
        raise AssertionError(
            f"avfusion {' '.join(map(str, args))} -> {proc.returncode}\n{proc.stderr}"
        )
    return proc


def cli(*args, expect: int = 0) -> None:
    """The same entry point in this process (faster: the worker forkserver is reused)."""
    from pipeline.cli import main

    assert main([str(a) for a in args]) == expect, args


def cli_error(capsys, *args) -> str:
    """Run the entry point in this process on unusable input: exit status 2 and one
    ``error:`` line on stderr, which is returned."""
    from pipeline.cli import main

    capsys.readouterr()
    assert main([str(a) for a in args]) == 2, args
    lines = capsys.readouterr().err.splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), lines
    return lines[0]


def load_set(out: Path) -> tuple[dict, list[dict], dict[str, dict]]:
    """(manifest, errors, {key: {ext: bytes}}) of a local shard set."""
    from avbase.shardformat import read_samples

    manifest = json.loads((out / "manifest.json").read_text())
    errors = [json.loads(line) for line in (out / "errors.jsonl").read_text().splitlines()]
    samples = {}
    for entry in manifest["shards"]:
        with open(out / entry["name"], "rb") as f:
            samples.update((key, dict(members)) for key, members in read_samples(f))
    return manifest, errors, samples


def meta(sample: dict) -> dict:
    return json.loads(sample["json"])


def mel(sample: dict) -> np.ndarray:
    return np.load(io.BytesIO(sample["mel.npy"]))


BUILD_ARGS = ("--workers", "2", "--samples-per-shard", "8")


@pytest.fixture(scope="session")
def media_build(tmp_path_factory) -> Path:
    """typical/ + broken/ built once, as in the acceptance command."""
    out = tmp_path_factory.mktemp("media") / "shards"
    avfusion("shards", "build", MEDIA / "typical", MEDIA / "broken", "--out", out, *BUILD_ARGS)
    return out
