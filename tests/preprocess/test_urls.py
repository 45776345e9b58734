"""avbase.urls.redact: credentials out, everything that says which resource in."""

from __future__ import annotations

import functools
import http.server
import json
import re
import threading

import pytest

from avbase.errors import AvfusionError, error_line
from avbase.urls import redact, redact_tree

from .conftest import MEDIA, avfusion, load_set, meta

CREDENTIALED = [
    ("http://user:s3cret@127.0.0.1:5000", "http://***@127.0.0.1:5000"),
    ("https://token@mlflow.example.com/path?x=1", "https://***@mlflow.example.com/path?x=1"),
    ("postgresql://mlflow:p%40ss@db:5432/mlflow", "postgresql://***@db:5432/mlflow"),
    ("s3://AKIA:wJalr@bucket/key.mp4", "s3://***@bucket/key.mp4"),
    (
        "https://b.s3.amazonaws.com/v.mp4?X-Amz-Algorithm=AWS4-HMAC-SHA256&X-Amz-Credential=AKIA%2F2026"
        "&X-Amz-Date=20261130T000000Z&X-Amz-Expires=3600&X-Amz-Security-Token=FwoG&X-Amz-Signature=ab12",
        "https://b.s3.amazonaws.com/v.mp4?X-Amz-Algorithm=AWS4-HMAC-SHA256&X-Amz-Credential=***"
        "&X-Amz-Date=20261130T000000Z&X-Amz-Expires=3600&X-Amz-Security-Token=***&X-Amz-Signature=***",
    ),
    (
        "https://a.blob.core.windows.net/c/v.mp4?sv=2024&se=2026&sig=abc%3D",
        "https://a.blob.core.windows.net/c/v.mp4?sv=2024&se=2026&sig=***",
    ),
    (
        "https://storage.googleapis.com/b/v.mp4?X-Goog-Credential=x&X-Goog-Signature=y#t=3",
        "https://storage.googleapis.com/b/v.mp4?X-Goog-Credential=***&X-Goog-Signature=***#t=3",
    ),
    (
        "https://cdn.example.com/v.mp4?Policy=p&Signature=s&Key-Pair-Id=k&token=t&page=2",
        "https://cdn.example.com/v.mp4?Policy=***&Signature=***&Key-Pair-Id=***&token=***&page=2",
    ),
]
CLEAN = [
    "sqlite:///runs/mlruns.db",
    "/data/videos/a@b.mp4",
    "s3://bucket/shards",
    "http://127.0.0.1:5000",
    "https://example.com/v.mp4?designer=x&keyframes=2",
    "plain text, no URL: user:pw@host",
]


@pytest.mark.parametrize("url,expected", CREDENTIALED)
def test_credentials_are_masked_and_the_resource_kept(url, expected):
    assert redact(url) == expected
    assert redact(expected) == expected  # idempotent


@pytest.mark.parametrize("text", CLEAN)
def test_text_without_credentials_is_unchanged(text):
    assert redact(text) == text


def test_urls_inside_messages_and_serialised_trees():
    message = (
        "API request to http://u:pw1@10.0.0.1:5000/api failed ('https://h/v.mp4?sig=pw2'); "
        "retry via s3://K:pw3@b/x"
    )
    assert redact(message) == (
        "API request to http://***@10.0.0.1:5000/api failed ('https://h/v.mp4?sig=***'); "
        "retry via s3://***@b/x"
    )
    tree = {
        "tracking": {"uri": "http://u:pw@h:5000", "port": 5000},
        "inputs": ["https://h/l.csv?token=pw", ("s3://K:pw@b/x", None)],
        "ok": True,
    }
    clean = redact_tree(tree)
    assert clean == {
        "tracking": {"uri": "http://***@h:5000", "port": 5000},
        "inputs": ["https://h/l.csv?token=***", ("s3://***@b/x", None)],
        "ok": True,
    }
    assert (
        "pw" not in json.dumps(clean) and tree["tracking"]["uri"] == "http://u:pw@h:5000"
    )  # input kept


def test_the_one_error_line_of_every_command_masks_credentials():
    line = error_line(
        AvfusionError("input https://u:pw@h/l.csv?token=t: cannot be read (404)\nmore")
    )
    assert line == "error: input https://***@h/l.csv?token=***: cannot be read (404)"
    assert "pw" not in error_line(RuntimeError("POST http://u:pw@h/api failed"))


PLANTED = "Planted-s3cret-7781"


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args) -> None:
        pass


@pytest.mark.slow
@pytest.mark.multiproc
def test_a_build_from_credentialed_urls_keeps_them_out_of_the_shard_set_and_console(tmp_path):
    server = http.server.ThreadingHTTPServer(
        ("127.0.0.1", 0), functools.partial(_QuietHandler, directory=str(MEDIA))
    )
    threading.Thread(target=server.serve_forever, daemon=True).start()
    host = f"127.0.0.1:{server.server_address[1]}"
    good = f"/typical/lhotse_big_buck_bunny_small.mp4?X-Amz-Credential=AKIA%2F{PLANTED}&X-Amz-Signature={PLANTED}.1"
    listing = tmp_path / "inputs.txt"
    listing.write_text(
        f"http://avf:{PLANTED}@{host}{good}\n"
        f"http://avf:{PLANTED}@{host}/typical/missing.mp4?sig={PLANTED}\n"
        f"https://{host}/broken/audio_only.m4a?token={PLANTED}\n"
    )
    out = tmp_path / "shards"
    try:
        proc = avfusion("shards", "build", listing, "--out", out, "--workers", "1", check=False)
    finally:
        server.shutdown()
    manifest, errors, samples = load_set(out)
    assert (
        manifest["num_samples"] == len(samples) > 0 and len(errors) == manifest["num_failed"] == 2
    )
    assert {meta(s)["source"] for s in samples.values()} == {
        f"http://***@{host}/typical/lhotse_big_buck_bunny_small.mp4?X-Amz-Credential=***&X-Amz-Signature=***"
    }
    assert all(
        re.fullmatch(r"lhotse-big-buck-bunny-small-[0-9a-f]{10}_\d+", k) for k in samples
    )  # no query
    assert sorted(e["source"] for e in errors) == [
        f"http://***@{host}/typical/missing.mp4?sig=***",
        f"https://{host}/broken/audio_only.m4a?token=***",
    ]
    leaked = [str(p) for p in out.rglob("*") if p.is_file() and PLANTED.encode() in p.read_bytes()]
    assert leaked == [] and PLANTED not in proc.stdout + proc.stderr
