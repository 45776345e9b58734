"""A loader stream's reader on real shards: plan order, and the per-stream memory bound
(held samples ≤ shuffle buffer, open shards ≤ interleave)."""

from __future__ import annotations

import json

import pytest

from pipeline.data.epochplan import EpochPlan
from pipeline.data.shardio import ShardStore
from pipeline.data.stream import StreamReader
from tests.support.shardsets import sample_key, write_shard_set


@pytest.fixture(scope="module")
def many_shards(tmp_path_factory):
    dest = tmp_path_factory.mktemp("many")
    return dest, write_shard_set(
        dest, 240, 20, n_frames=1, frame_size=16, clip_seconds=lambda i: 0.5
    )  # 12 shards


@pytest.mark.parametrize("interleave,buffer", [(1, 1), (4, 16), (3, 40)])
def test_reader_follows_the_plan_within_the_memory_bound(many_shards, interleave, buffer):
    root, manifest = many_shards
    plan = EpochPlan(
        tuple(s["num_samples"] for s in manifest["shards"]),
        seed=4,
        world_size=2,
        streams=2,
        batch_size=5,
        partitions=2,
        interleave=interleave,
        buffer=buffer,
    )
    for rank in range(2):
        for stream in range(2):
            entries = plan.stream_entries(3, rank, stream)
            reader = StreamReader(
                ShardStore(str(root), manifest["shards"]), entries, list(range(len(entries)))
            )
            held = opened = 0
            for i, e in enumerate(entries):
                raw = reader.take(i)
                assert raw["__key__"] == sample_key(20 * e.shard + e.idx)
                assert json.loads(raw["json"])["source_id"] == raw["__key__"].rsplit("_", 1)[0]
                held, opened = max(held, len(reader.captured)), max(opened, len(reader.open))
            assert held <= buffer and opened <= interleave
            assert not reader.open and not reader.captured
            if buffer > 1:
                assert held > 1  # the bound is not trivially met
            if interleave > 1:
                assert opened > 1
