"""Fixtures of the pipeline tests (the shard-set writer is :mod:`tests.support.shardsets`)."""

from __future__ import annotations

import subprocess
from pathlib import Path
from typing import NamedTuple

import pytest

from tests.support.procs import free_port, start_mlflow_server, stop
from tests.support.shardsets import write_shard_set


@pytest.fixture(scope="session")
def shard_set(tmp_path_factory) -> Path:
    """61 labelled samples in 8 shards (7 × 8 + 5), 10-s clips."""
    dest = tmp_path_factory.mktemp("shards")
    write_shard_set(dest, 61, 8)
    return dest


class MlflowServer(NamedTuple):
    uri: str  # http://127.0.0.1:PORT
    proc: subprocess.Popen  # the server, in a process group of its own (its workers too)
    root: Path  # its sqlite store and artifacts


@pytest.fixture(scope="session")
def mlflow_server(tmp_path_factory) -> MlflowServer:
    """One real `mlflow server` for the session (a start costs ≈ 10 s). Tests that stop it
    (SIGSTOP) resume it before they end; tests that kill or restart a server start their own;
    each test tracks to an experiment or run name of its own."""
    root = tmp_path_factory.mktemp("mlflow")
    port = free_port()
    proc = start_mlflow_server(root, port)
    yield MlflowServer(f"http://127.0.0.1:{port}", proc, root)
    stop(proc)


@pytest.fixture(autouse=True)
def close_loaders(monkeypatch):
    """Holds every :class:`ShardLoader` the test iterates and closes it at the test's end.

    A loader holds its live iteration and the iteration holds the loader: one left mid-epoch
    and unclosed is freed only by a garbage collection, after multiprocessing has finalised its
    workers' queues, so torch waits out its 5-s join timeout for each worker — at whichever
    later point a collection runs (120 s in one test of the full suite). Held here, none is
    garbage before the test ends.
    """
    from pipeline.data.loader import ShardLoader

    iterated: dict[int, ShardLoader] = {}
    iterate = ShardLoader.__iter__

    def tracked(self):
        iterated[id(self)] = self
        return iterate(self)

    monkeypatch.setattr(ShardLoader, "__iter__", tracked)
    yield
    for loader in iterated.values():
        loader.close()
