"""Batch diversity of the training loader: distinct source videos per batch ÷ the expectation for
a uniformly random batch (1.0 = as diverse as the official map-style sampler).

Computed over the loader's epoch plan (:mod:`pipeline.data.epochplan` — the exact sample order the
loader reads when no sample fails; tests/pipeline/data/test_data_stream.py checks the reader follows
it) for a simulated corpus: ``videos`` sources sorted by class, each cut into ``clips`` clips
that are consecutive in the input list, packed ``per_shard`` to a shard either in input order
(``shards build --no-shuffle``) or in the order ``shards build`` writes them by default — the
builder's own functions (:mod:`preprocess.shuffle`: seeded input order, clips permuted within
windows of ``BuildConfig.window`` inputs) applied to the simulated keys. NOTE: a simulation of
the layout, not a build of 100,000 clips.
"""

from __future__ import annotations

import math
import statistics

from pipeline.config import DataConfig
from pipeline.data.epochplan import EpochPlan
from preprocess.build import BuildConfig
from preprocess.shuffle import rank, shuffled, windows


def uniform_distinct(videos: int, clips: int, batch: int) -> float:
    """E[distinct videos] in a batch drawn uniformly without replacement from videos × clips."""
    n = videos * clips
    absent = math.exp(sum(math.log((n - clips - i) / (n - i)) for i in range(batch)))
    return videos * (1.0 - absent)


def built_order(videos: int, clips: int, seed: int = 0) -> list[int]:
    """Clip ids (video · clips + clip) in the order the default build writes them."""
    order = shuffled(range(videos), seed, name=lambda v: f"v{v:06d}")
    out = []
    for window in windows(videos, BuildConfig.window):
        keys = [(order[i], c) for i in window for c in range(clips)]
        keys.sort(key=lambda vc: rank(seed, f"v{vc[0]:06d}_{vc[1]}"))
        out += [v * clips + c for v, c in keys]
    return out


def batch_stats(
    layout: list[int],
    clips: int,
    per_shard: int,
    *,
    interleave: int,
    world: int = 8,
    streams: int = 4,
    batch: int = 64,
    buffer: int = DataConfig.shuffle_buffer,
    ranks: int = 2,
) -> tuple[float, float]:
    """(mean distinct videos, median distinct shards) per batch over the first ``ranks`` ranks;
    ``layout[position]`` is the clip stored at that position of the shard set."""
    plan = EpochPlan(
        tuple([per_shard] * (len(layout) // per_shard)),
        seed=0,
        world_size=world,
        streams=streams,
        batch_size=batch,
        buffer=buffer,
        partitions=DataConfig.partitions,
        interleave=interleave,
    )
    videos, shards = [], []
    for r in range(ranks):
        for stream in range(streams):
            entries = plan.stream_positions(0, r, stream)
            for j in range(0, len(entries), batch):
                chunk = entries[j : j + batch]
                videos.append(len({layout[s * per_shard + i] // clips for s, i in chunk}))
                shards.append(len({s for s, _ in chunk}))
    return statistics.mean(videos), statistics.median(shards)


def measure(videos: int = 20000, clips: int = 5, per_shard: int = 1000, batch: int = 64) -> dict:
    n = videos * clips
    in_order = list(range(n))  # sorted by class, a video's clips adjacent
    built = built_order(videos, clips)
    expected = uniform_distinct(videos, clips, batch)
    cases = {
        "sorted_default": (built, DataConfig.interleave),
        "sorted_no_shuffle": (in_order, DataConfig.interleave),
        "unshuffled_interleave": (in_order, DataConfig.interleave),
        "unshuffled_no_interleave": (in_order, 1),
    }
    diversity, shards = {}, {}
    for name, (layout, k) in cases.items():
        distinct, per_batch = batch_stats(layout, clips, per_shard, interleave=k, batch=batch)
        diversity[name], shards[name] = round(distinct / expected, 3), per_batch
    return {
        "benchmark": "loader_diversity",
        "method": "epoch plan over a simulated corpus",
        "corpus": {
            "videos": videos,
            "clips_per_video": clips,
            "samples_per_shard": per_shard,
            "shards": n // per_shard,
            "sorted_by": "class",
            "build_shuffle_window": BuildConfig.window,
        },
        "loader": {
            "world_size": 8,
            "streams": 4,
            "batch_size": batch,
            "shuffle_buffer": DataConfig.shuffle_buffer,
            "interleave": DataConfig.interleave,
            "partitions": DataConfig.partitions,
        },
        "batch_diversity": diversity,
        "uniform_distinct_videos": round(expected, 2),
        "median_shards_per_batch": shards,
        "uniform_shards_per_batch": round(uniform_distinct(n // per_shard, per_shard, batch), 1),
    }
