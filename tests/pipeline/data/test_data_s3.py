"""The loader over a real S3-compatible server (``rclone serve s3`` on 127.0.0.1)."""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import signal
import subprocess
import threading
import time

import pytest

import tests.support.s3server
from avbase.endpoint import WARN_AFTER_S
from pipeline.data import shardio
from pipeline.data.loader import ShardReadError
from pipeline.data.shardio import ShardStore
from tests.pipeline.data.test_data_loader import (
    ALL_KEYS,
    assert_same_batches,
    keys_of,
    make_loader,
    run_epoch,
)
from tests.support.procs import AVFUSION, REPO
from tests.support.s3server import S3Server

pytestmark = [pytest.mark.slow, pytest.mark.multiproc]


@pytest.fixture
def s3_env(s3_server, monkeypatch):
    for k, v in s3_server.env.items():
        monkeypatch.setenv(k, v)
    monkeypatch.setenv("AWS_MAX_ATTEMPTS", "1")  # our retries, not botocore's
    return s3_server


@pytest.fixture(scope="session")
def s3_set(s3_server, shard_set) -> str:
    shutil.copytree(shard_set, s3_server.root / "loader" / "set")
    return "s3://loader/set"


@pytest.fixture
def own_server(tmp_path, shard_set, monkeypatch):
    """A server of this test's own (it gets stopped and restarted), serving s3://own/set."""
    shutil.copytree(shard_set, tmp_path / "s3" / "own" / "set")
    with S3Server(tmp_path / "s3") as server:
        for k, v in server.env.items():
            monkeypatch.setenv(k, v)
        monkeypatch.setenv("AWS_MAX_ATTEMPTS", "1")
        yield server


def restart_later(server: S3Server, monkeypatch, delay: float) -> threading.Thread:
    """Stop ``server`` now and start it again on the same port after ``delay`` seconds."""
    port = int(server.endpoint.rsplit(":", 1)[1])
    server.stop()
    monkeypatch.setattr(tests.support.s3server, "free_port", lambda: port)
    thread = threading.Thread(target=lambda: (time.sleep(delay), server.start()))
    thread.start()
    return thread


def test_s3_epoch_and_resume_equal_the_local_ones(shard_set, s3_set, s3_env):
    for rank in range(2):
        local = run_epoch(make_loader(shard_set, rank=rank), epoch=1)
        remote = make_loader(s3_set, rank=rank)
        assert_same_batches(run_epoch(remote, epoch=1, limit=3), local[:3])
        state = remote.state_dict()
        remote.close()
        resumed = make_loader(s3_set, rank=rank)
        resumed.load_state_dict(state)
        assert_same_batches(list(resumed), local[3:])


def test_node_local_cache_holds_verified_shards_within_its_limit(
    shard_set, s3_set, s3_env, tmp_path
):
    manifest = json.loads((shard_set / "manifest.json").read_text())
    limit = sum(s["bytes"] for s in manifest["shards"][:3])  # room for 3 of 8 shards
    cache = tmp_path / "cache"
    loader = make_loader(s3_set, world=1, cache_dir=str(cache), cache_limit_gb=limit / 2**30)
    uncached = run_epoch(make_loader(s3_set, world=1), epoch=0)
    assert_same_batches(run_epoch(loader, epoch=0), uncached)
    files = sorted(cache.iterdir())
    assert 0 < len(files) <= 3 and sum(f.stat().st_size for f in files) <= limit
    by_sha = {s["sha256"]: s["name"] for s in manifest["shards"]}
    for f in files:
        digest = hashlib.sha256(f.read_bytes()).hexdigest()
        assert f.name == f"{digest[:32]}-{by_sha[digest]}"
    assert_same_batches(run_epoch(loader, epoch=0), uncached)  # now partly from cache


def test_outage_beyond_the_retry_budget_names_the_shard(own_server):
    loader = make_loader("s3://own/set", world=1, workers=1, s3_retries=1)
    own_server.stop()
    with pytest.raises(
        ShardReadError,
        match=r"s3://own/set/shard-\d{6}\.tar: still failing after 2 attempts in \d+ s \(data.s3_retries=1, ",
    ):
        run_epoch(loader)


def test_outage_within_the_retry_budget_recovers(own_server, shard_set, monkeypatch):
    expected = run_epoch(make_loader(shard_set, world=1, workers=0), epoch=0)
    loader = make_loader("s3://own/set", world=1, workers=0, s3_retries=5)
    loader.set_epoch(0)
    batches = iter(loader)
    got = [next(batches) for _ in range(3)]
    thread = restart_later(own_server, monkeypatch, delay=1.0)  # killed mid-epoch
    got += list(batches)
    thread.join()
    assert_same_batches(got, expected)  # every key of the epoch, once, in order
    assert set(keys_of(got)) == ALL_KEYS
    assert len(keys_of(got)) == len(ALL_KEYS) + loader.remainder["padded"]


def test_stalled_endpoint_fails_within_the_budget_naming_it(own_server):
    loader = make_loader(
        "s3://own/set",
        world=1,
        workers=0,
        s3_retries=1,
        s3_connect_timeout=1.0,
        s3_read_timeout=1.0,
    )
    patient = make_loader(
        "s3://own/set",
        world=1,
        workers=0,
        s3_retries=100,
        s3_retry_seconds=3,
        s3_connect_timeout=1.0,
        s3_read_timeout=1.0,
    )
    os.kill(own_server.proc.pid, signal.SIGSTOP)  # accepts connections, never answers
    # the command with the default timeouts waits meanwhile; its stderr lines as they come
    bench = subprocess.Popen(
        [*AVFUSION, "data", "bench", "s3://own/set", "--workers", "0"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        cwd=REPO,
    )
    try:
        said: list[tuple[float, str]] = []
        reader = threading.Thread(
            target=lambda: said.extend((time.monotonic(), line) for line in bench.stderr)
        )
        reader.start()
        start = time.monotonic()
        with pytest.raises(ShardReadError, match=r"data.s3_retries=100, data.s3_retry_seconds=3\)"):
            run_epoch(patient)  # the time budget ends it, not the count
        assert time.monotonic() - start < 30
        start = time.monotonic()
        with pytest.raises(
            ShardReadError,
            match=r"s3://own/set/shard-\d{6}\.tar: still failing after "
            r"2 attempts in \d+ s \(data.s3_retries=1, data.s3_retry_seconds=60\) at "
            + re.escape(own_server.endpoint),
        ):
            run_epoch(loader)
        assert time.monotonic() - start < 30  # 2 × (≤ 3 calls × 1 s) + 0.5 s, and slack
        code = bench.wait(timeout=300)
        reader.join()
        assert code == 2, said
        (warned, waiting), (ended, error) = said  # said while waiting, then the end
        assert waiting.startswith(
            f"s3://own/set/manifest.json: no answer from the S3 endpoint {own_server.endpoint} "
        )
        assert error.startswith(
            f"error: s3://own/set/manifest.json: cannot be read from {own_server.endpoint}"
        )
        # a few calls under the default 8-s read timeout, no retries (was ~7 minutes); the
        # warning comes WARN_AFTER_S into the read, so the imports before it do not count
        assert ended - warned + WARN_AFTER_S < 45
    finally:
        bench.kill()  # (no-op when it ended)
        bench.wait()
        os.kill(own_server.proc.pid, signal.SIGCONT)


def test_a_read_failing_mid_shard_reopens_and_skips_what_was_delivered(own_server, monkeypatch):
    monkeypatch.setattr(shardio, "BLOCK_SIZE", 4096)  # one range request per 4 KiB
    manifest = shardio.read_manifest("s3://own/set")
    store = ShardStore("s3://own/set", manifest["shards"], retries=5, backoff=0.5)
    samples = store.samples(0, set(range(8)))
    first = [next(samples) for _ in range(3)]
    thread = restart_later(own_server, monkeypatch, delay=1.0)
    rest = list(samples)
    thread.join()
    assert [i for i, _ in first + rest] == list(range(8))
    local = ShardStore(str(own_server.root / "own" / "set"), manifest["shards"]).samples(
        0, set(range(8))
    )
    assert [s for _, s in first + rest] == [s for _, s in local]
