"""A real ``kill -9`` + ``--resume``, and byte-identical output whatever the worker count."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest

from avbase.shardformat import read_samples

from .conftest import BUILD_ARGS, MEDIA, REPO, cli, cli_error, load_set

pytestmark = [pytest.mark.slow, pytest.mark.multiproc]


def _without_timestamp(manifest: dict) -> dict:
    manifest = json.loads(json.dumps(manifest))
    del manifest["created_by"]["created"]
    return manifest


def _same_set(a, b) -> None:
    """Byte-identical shards and errors; manifests equal apart from the creation time."""
    ma, mb = (json.loads((d / "manifest.json").read_text()) for d in (a, b))
    assert _without_timestamp(ma) == _without_timestamp(mb)
    for entry in ma["shards"]:
        assert (a / entry["name"]).read_bytes() == (b / entry["name"]).read_bytes(), entry["name"]
    assert (a / "errors.jsonl").read_bytes() == (b / "errors.jsonl").read_bytes()
    assert sorted(p.name for p in a.iterdir()) == sorted(p.name for p in b.iterdir())


def _identity(path) -> tuple[int, int]:
    st = path.stat()
    return st.st_ino, st.st_mtime_ns


def test_kill_9_then_resume_gives_the_uninterrupted_result(media_build, tmp_path, capsys):
    out = tmp_path / "killed"
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "pipeline.cli",
            "shards",
            "build",
            str(MEDIA / "typical"),
            str(MEDIA / "broken"),
            "--out",
            str(out),
            *BUILD_ARGS,
        ],
        cwd=REPO,
        start_new_session=True,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    first_record = out / ".progress" / "shard-000000.tar.json"
    deadline = time.monotonic() + 180
    while not first_record.exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGKILL)  # the builder, its forkserver and its workers
    proc.wait()
    assert first_record.exists() and not (out / "manifest.json").exists()
    recorded = [
        json.loads(r.read_text())["shard"]["name"]
        for r in sorted((out / ".progress").glob("shard-*.tar.json"))
    ]
    kept = {name: _identity(out / name) for name in recorded}

    assert "unfinished build; pass --resume" in cli_error(
        capsys, "shards", "build", MEDIA / "typical", MEDIA / "broken", "--out", out, *BUILD_ARGS
    )
    cli(
        "shards",
        "build",
        MEDIA / "typical",
        MEDIA / "broken",
        "--out",
        out,
        *BUILD_ARGS,
        "--resume",
    )
    assert {name: _identity(out / name) for name in recorded} == kept  # finished shards untouched
    _same_set(media_build, out)
    _, _, samples = load_set(out)
    assert len(samples) == json.loads((out / "manifest.json").read_text())["num_samples"]


def _shard_keys(out) -> list[list[str]]:
    manifest = json.loads((out / "manifest.json").read_text())
    keys = []
    for entry in manifest["shards"]:
        with open(out / entry["name"], "rb") as f:
            keys.append([key for key, _ in read_samples(f)])
    return keys


def test_output_depends_on_the_seed_not_on_the_worker_count(tmp_path):
    listing = tmp_path / "inputs.txt"
    names = [
        "bbb_mpeg4_mp3_22k_mono_480x270.avi",
        "moviepy_fire2.mp4",
        "ok_moov_end.mp4",
        "torchcodec_nasa_13013.mp4",
        "moviepy_doc_example3.mp4",
    ]
    listing.write_text(
        "".join(f"{MEDIA / 'typical' / n}\n" for n in names)
        + f"{MEDIA / 'broken' / 'zero_byte.mp4'}\n"
    )
    builds = {
        "1": ("--workers", "1"),
        "2": ("--workers", "2"),
        "seed7": ("--seed", "7"),
        "sorted": ("--no-shuffle",),
    }
    for name, args in builds.items():
        cli("shards", "build", listing, "--out", tmp_path / name, "--samples-per-shard", "2", *args)
    _same_set(tmp_path / "1", tmp_path / "2")
    assert json.loads((tmp_path / "1" / "manifest.json").read_text())["num_samples"] == 7
    shards = {name: _shard_keys(tmp_path / name) for name in builds}
    assert sorted(sum(shards["seed7"], [])) == sorted(sum(shards["1"], []))
    assert [sorted(s) for s in shards["seed7"]] != [sorted(s) for s in shards["1"]]
    in_order = sum(shards["sorted"], [])  # --no-shuffle: sorted inputs, then clip order
    sources = [
        json.loads(s["json"])["source"]
        for s in (load_set(tmp_path / "sorted")[2][k] for k in in_order)
    ]
    assert sources == sorted(sources) and sum(shards["1"], []) != in_order
