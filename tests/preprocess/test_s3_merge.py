"""s3:// round trip against a real server, and merging separately built parts."""

from __future__ import annotations

import json
import shutil

import pytest

from .conftest import MEDIA, avfusion, cli, load_set, meta

pytestmark = [pytest.mark.slow, pytest.mark.multiproc]

FILES = [
    "moviepy_fire2.mp4",
    "bbb_vp8_vorbis11k_mono_352x198_15fps.webm",
    "ok_faststart.mp4",
    "torchcodec_nasa_13013.mp4",
]


def _by_clip(samples: dict) -> dict:
    """{(file name, clip index): members without the json (whose source path differs)}."""
    return {
        (meta(s)["source"].rsplit("/", 1)[-1], meta(s)["clip_index"]): {
            k: v for k, v in s.items() if k != "json"
        }
        for s in samples.values()
    }


def test_s3_round_trip(s3_server, tmp_path):
    bucket = s3_server.root / "media"
    (bucket / "videos").mkdir(parents=True)
    for name in FILES:
        shutil.copy(MEDIA / "typical" / name, bucket / "videos" / name)
    (bucket / "videos" / "empty.mp4").write_bytes(b"")
    rows = "".join(
        f"{n},{'cat' if i % 2 else 'dog'}\n" for i, n in enumerate(FILES + ["empty.mp4"])
    )
    (bucket / "videos" / "list.csv").write_text("path,label\n" + rows)
    s3_server.make_bucket("shards")

    env = s3_server.env
    avfusion(
        "shards",
        "build",
        "s3://media/videos/list.csv",
        "--out",
        "s3://shards/set",
        "--workers",
        "2",
        "--samples-per-shard",
        "2",
        env=env,
    )
    verified = avfusion("shards", "verify", "s3://shards/set", env=env)
    assert verified.stdout.strip().endswith("0 problems")

    stored = s3_server.root / "shards" / "set"  # what the server holds
    assert not (stored / ".progress").exists()
    assert not [p for p in stored.rglob("*") if ".tmp-" in p.name]
    manifest, errors, samples = load_set(stored)
    assert manifest["labels"] == ["cat", "dog"] and manifest["num_samples"] == 5
    assert [(e["source"], e["stage"]) for e in errors] == [("s3://media/videos/empty.mp4", "open")]
    assert {meta(s)["label"] for s in samples.values()} == {"cat", "dog"}

    local = tmp_path / "local"  # same bytes as a local build
    cli(
        "shards", "build", *[MEDIA / "typical" / n for n in FILES], "--out", local, "--workers", "1"
    )
    assert _by_clip(samples) == _by_clip(load_set(local)[2])


def test_merge_of_indexed_job_parts_equals_one_build(tmp_path, monkeypatch):
    listing = tmp_path / "inputs.txt"
    listing.write_text(
        "".join(f"{MEDIA / 'typical' / n}\n" for n in FILES)
        + f"{MEDIA / 'broken' / 'text_named.mp4'}\n"
    )
    parts = [tmp_path / f"part-{k}" for k in range(3)]
    for k, part in enumerate(parts):  # as a Kubernetes Indexed Job runs them
        monkeypatch.setenv("JOB_COMPLETION_INDEX", str(k))
        cli(
            "shards",
            "build",
            listing,
            "--out",
            part,
            "--num-parts",
            "3",
            "--workers",
            "1",
            "--samples-per-shard",
            "2",
        )
    cli("shards", "build", listing, "--out", tmp_path / "whole", "--workers", "1")
    cli("shards", "merge", *parts, "--out", tmp_path / "merged")
    cli("shards", "verify", tmp_path / "merged")

    merged, errors, samples = load_set(tmp_path / "merged")
    whole = load_set(tmp_path / "whole")
    assert samples == whole[2] and errors == whole[1]
    part_shards = [
        e for p in parts for e in json.loads((p / "manifest.json").read_text())["shards"]
    ]
    assert [(e["num_samples"], e["sha256"]) for e in merged["shards"]] == [
        (e["num_samples"], e["sha256"]) for e in part_shards
    ]
    assert [e["name"] for e in merged["shards"]] == [
        f"shard-{i:06d}.tar" for i in range(len(part_shards))
    ]


def test_merge_reconciles_label_maps(tmp_path):
    typical = MEDIA / "typical"
    (tmp_path / "a.csv").write_text(
        f"path,label\n{typical / FILES[0]},cat\n{typical / FILES[1]},dog\n"
    )
    (tmp_path / "b.csv").write_text(
        f"path,label\n{typical / FILES[2]},bird\n{typical / FILES[3]},dog\n"
    )
    for name in ("a", "b"):
        cli("shards", "build", tmp_path / f"{name}.csv", "--out", tmp_path / name, "--workers", "1")
    assert json.loads((tmp_path / "b" / "manifest.json").read_text())["labels"] == ["bird", "dog"]
    cli("shards", "merge", tmp_path / "a", tmp_path / "b", "--out", tmp_path / "merged")
    cli("shards", "verify", tmp_path / "merged")
    manifest, _, samples = load_set(tmp_path / "merged")
    assert manifest["labels"] == ["bird", "cat", "dog"]
    got = {
        meta(s)["source"].rsplit("/", 1)[-1]: (meta(s)["label"], meta(s)["label_index"])
        for s in samples.values()
    }
    assert got == {
        FILES[0]: ("cat", 1),
        FILES[1]: ("dog", 2),
        FILES[2]: ("bird", 0),
        FILES[3]: ("dog", 2),
    }
