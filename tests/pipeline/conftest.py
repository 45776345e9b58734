"""Fixtures of the pipeline tests (the shard-set writer is :mod:`tests.support.shardsets`)."""

from __future__ import annotations

import weakref
from pathlib import Path

import pytest

from tests.support.shardsets import write_shard_set


@pytest.fixture(scope="session")
def shard_set(tmp_path_factory) -> Path:
    """61 labelled samples in 8 shards (7 × 8 + 5), 10-s clips."""
    dest = tmp_path_factory.mktemp("shards")
    write_shard_set(dest, 61, 8)
    return dest


@pytest.fixture(autouse=True)
def close_loaders(monkeypatch):
    """Closes, at the test's end, every :class:`ShardLoader` the test iterated.

    A loader holds its live iteration and the iteration holds the loader: one left mid-epoch
    and unclosed is freed only by a later garbage collection, after multiprocessing has
    finalised its workers' queues, so torch waits out its 5-s join timeout for each worker —
    in whichever later test triggers the collection (120 s in one test of the full suite).
    """
    from pipeline.data.loader import ShardLoader

    iterated = weakref.WeakSet()
    iterate = ShardLoader.__iter__

    def tracked(self):
        iterated.add(self)
        return iterate(self)

    monkeypatch.setattr(ShardLoader, "__iter__", tracked)
    yield
    for loader in list(iterated):
        loader.close()
