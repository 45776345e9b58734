"""Batch diversity of the training loader: distinct source videos per batch ÷ the expectation for
a uniformly random batch (1.0 = as diverse as the official map-style sampler).

Computed over the loader's epoch plan (:mod:`pipeline.epochplan` — the exact sample order the
loader reads when no sample fails; tests/pipeline/test_data_stream.py checks the reader follows
it) for a simulated corpus: ``videos`` sources sorted by class, each cut into ``clips`` clips
that are consecutive in the input list, packed ``per_shard`` to a shard either in input order
(``shards build --no-shuffle``) or in a seeded random order over the whole list (the build-time
shuffle). NOTE: simulated — the build-time shuffle is the format helper's change to
``shards build``; the permutation here stands in for it.
"""
from __future__ import annotations

import math
import random
import statistics

from pipeline.config import DataConfig
from pipeline.epochplan import EpochPlan


def uniform_distinct(videos: int, clips: int, batch: int) -> float:
    """E[distinct videos] in a batch drawn uniformly without replacement from videos × clips."""
    n = videos * clips
    absent = math.exp(sum(math.log((n - clips - i) / (n - i)) for i in range(batch)))
    return videos * (1.0 - absent)


def batch_stats(layout: list[int], clips: int, per_shard: int, *, interleave: int, world: int = 8,
                streams: int = 4, batch: int = 64, buffer: int = DataConfig.shuffle_buffer,
                ranks: int = 2) -> tuple[float, float]:
    """(mean distinct videos, median distinct shards) per batch over the first ``ranks`` ranks;
    ``layout[position]`` is the clip stored at that position of the shard set."""
    plan = EpochPlan(tuple([per_shard] * (len(layout) // per_shard)), seed=0, world_size=world,
                     streams=streams, batch_size=batch, buffer=buffer,
                     partitions=DataConfig.partitions, interleave=interleave)
    videos, shards = [], []
    for rank in range(ranks):
        for stream in range(streams):
            entries = plan.stream_positions(0, rank, stream)
            for j in range(0, len(entries), batch):
                chunk = entries[j:j + batch]
                videos.append(len({layout[s * per_shard + i] // clips for s, i in chunk}))
                shards.append(len({s for s, _ in chunk}))
    return statistics.mean(videos), statistics.median(shards)


def measure(videos: int = 20000, clips: int = 5, per_shard: int = 1000, batch: int = 64) -> dict:
    n = videos * clips
    in_order = list(range(n))                            # sorted by class, a video's clips adjacent
    shuffled = in_order[:]
    random.Random(0).shuffle(shuffled)
    expected = uniform_distinct(videos, clips, batch)
    cases = {"sorted_default": (shuffled, DataConfig.interleave),
             "sorted_no_shuffle": (in_order, DataConfig.interleave),
             "unshuffled_interleave": (in_order, DataConfig.interleave),
             "unshuffled_no_interleave": (in_order, 1)}
    diversity, shards = {}, {}
    for name, (layout, k) in cases.items():
        distinct, per_batch = batch_stats(layout, clips, per_shard, interleave=k, batch=batch)
        diversity[name], shards[name] = round(distinct / expected, 3), per_batch
    return {"benchmark": "loader_diversity", "method": "epoch plan over a simulated corpus",
            "corpus": {"videos": videos, "clips_per_video": clips, "samples_per_shard": per_shard,
                       "shards": n // per_shard, "sorted_by": "class"},
            "loader": {"world_size": 8, "streams": 4, "batch_size": batch,
                       "shuffle_buffer": DataConfig.shuffle_buffer,
                       "interleave": DataConfig.interleave, "partitions": DataConfig.partitions},
            "batch_diversity": diversity, "uniform_distinct_videos": round(expected, 2),
            "median_shards_per_batch": shards,
            "uniform_shards_per_batch": round(uniform_distinct(n // per_shard, per_shard, batch), 1)}
