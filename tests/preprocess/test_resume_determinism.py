"""A real ``kill -9`` + ``--resume``, and byte-identical output whatever the worker count."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest

from .conftest import BUILD_ARGS, MEDIA, REPO, cli, load_set

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


def test_kill_9_then_resume_gives_the_uninterrupted_result(media_build, tmp_path):
    out = tmp_path / "killed"
    proc = subprocess.Popen(
        [sys.executable, "-m", "pipeline.cli", "shards", "build", str(MEDIA / "typical"),
         str(MEDIA / "broken"), "--out", str(out), *BUILD_ARGS],
        cwd=REPO, start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    first_record = out / ".progress" / "shard-000000.tar.json"
    deadline = time.monotonic() + 180
    while not first_record.exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGKILL)       # the builder, its forkserver and its workers
    proc.wait()
    assert first_record.exists() and not (out / "manifest.json").exists()

    with pytest.raises(SystemExit, match="unfinished build; pass --resume"):
        cli("shards", "build", MEDIA / "typical", MEDIA / "broken", "--out", out, *BUILD_ARGS)
    cli("shards", "build", MEDIA / "typical", MEDIA / "broken", "--out", out, *BUILD_ARGS, "--resume")
    _same_set(media_build, out)
    _, _, samples = load_set(out)
    assert len(samples) == json.loads((out / "manifest.json").read_text())["num_samples"]


def test_output_does_not_depend_on_worker_count(tmp_path):
    listing = tmp_path / "inputs.txt"
    names = ["bbb_mpeg4_mp3_22k_mono_480x270.avi", "moviepy_fire2.mp4", "ok_moov_end.mp4",
             "torchcodec_nasa_13013.mp4", "moviepy_doc_example3.mp4"]
    listing.write_text("".join(f"{MEDIA / 'typical' / n}\n" for n in names)
                       + f"{MEDIA / 'broken' / 'zero_byte.mp4'}\n")
    for workers in ("1", "2"):
        cli("shards", "build", listing, "--out", tmp_path / workers, "--workers", workers,
                 "--samples-per-shard", "2")
    _same_set(tmp_path / "1", tmp_path / "2")
    assert json.loads((tmp_path / "1" / "manifest.json").read_text())["num_samples"] == 7
