"""Fixtures of the pipeline tests (the shard-set writer is :mod:`tests.support.shardsets`)."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.support.shardsets import write_shard_set


@pytest.fixture(scope="session")
def shard_set(tmp_path_factory) -> Path:
    """61 labelled samples in 8 shards (7 × 8 + 5), 10-s clips."""
    dest = tmp_path_factory.mktemp("shards")
    write_shard_set(dest, 61, 8)
    return dest
