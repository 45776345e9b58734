"""Epoch plan: coverage, equal steps, remainder counts, shuffling, shuffle-buffer bounds,
interleave, and resume at another layout over the canonical partitions."""

from __future__ import annotations

import random
from collections import Counter
from dataclasses import replace

import pytest

from pipeline.data.epochplan import EpochPlan, buffer_order, interleave, subtract

SIZES = (8, 8, 8, 8, 8, 8, 8, 5)  # 61 samples


def rank_entries(plan: EpochPlan, epoch: int, rank: int) -> list[tuple[int, int]]:
    return [p for m in range(plan.streams) for p in plan.stream_positions(epoch, rank, m)]


@pytest.mark.parametrize(
    "world,streams,batch,remainder",
    [
        (2, 2, 4, "pad"),
        (3, 2, 5, "pad"),
        (4, 3, 2, "pad"),
        (1, 1, 7, "pad"),
        (2, 2, 4, "drop"),
        (3, 2, 5, "drop"),
        (4, 3, 2, "drop"),
    ],
)
def test_epoch_covers_each_sample_once_with_counted_remainder(world, streams, batch, remainder):
    plan = EpochPlan(
        SIZES, seed=3, world_size=world, streams=streams, batch_size=batch, remainder=remainder
    )
    everything = {(s, i) for s, n in enumerate(SIZES) for i in range(n)}
    seen_by_rank = []
    for rank in range(world):
        entries = rank_entries(plan, epoch=1, rank=rank)
        assert len(entries) == plan.batches * batch  # same number of full batches
        counts = plan.remainder_counts(rank)
        repeats = sum(c - 1 for c in Counter(entries).values())
        assert repeats == counts["padded"]
        seen_by_rank.append(set(entries))
    for a in range(world):
        for b in range(a + 1, world):
            assert not seen_by_rank[a] & seen_by_rank[b]  # ranks are disjoint
    union = set().union(*seen_by_rank)
    dropped = sum(plan.remainder_counts(r)["dropped"] for r in range(world))
    assert union <= everything and len(everything - union) == dropped
    if remainder == "pad":
        assert union == everything


def test_streams_follow_the_dataloader_round_robin():
    plan = EpochPlan(SIZES, seed=0, world_size=2, streams=3, batch_size=4)
    assert sum(plan.stream_batches(m) for m in range(3)) == plan.batches == 8
    assert [plan.stream_batches(m) for m in range(3)] == [3, 3, 2]
    assert [plan.stream_batches(m, before=4) for m in range(3)] == [2, 1, 1]


def test_shards_are_shuffled_per_epoch_before_the_rank_split():
    plan = EpochPlan(tuple([4] * 16), seed=7, world_size=2, streams=2, batch_size=4)
    assert plan.shard_order(0) == plan.shard_order(0)
    assert plan.shard_order(0) != plan.shard_order(1)
    assert sorted(plan.shard_order(1)) == list(range(16))
    shards_of_rank0 = [{s for s, _ in rank_entries(plan, e, 0)} for e in range(3)]
    assert (
        len({frozenset(s) for s in shards_of_rank0}) == 3
    )  # three epochs, three different shard sets
    assert rank_entries(plan, 2, 1) == rank_entries(plan, 2, 1)
    # seed + epoch: (seed 7, epoch 1) and (seed 8, epoch 0) shuffle the shards identically
    other = EpochPlan(tuple([4] * 16), seed=8, world_size=2, streams=2, batch_size=4)
    assert other.shard_order(0) == plan.shard_order(1)


def test_evaluation_plan_keeps_manifest_order():
    plan = EpochPlan(SIZES, seed=0, world_size=1, streams=1, batch_size=61, shuffle=False)
    entries = plan.stream_positions(5, 0, 0)
    assert entries == [(s, i) for s, n in enumerate(SIZES) for i in range(n)]


@pytest.mark.parametrize("size", [1, 2, 16, 100])
def test_shuffle_buffer_is_a_bounded_permutation(size):
    order = buffer_order(200, size, random.Random(0))
    assert sorted(order) == list(range(200))
    # an item leaves the buffer at most size-1 reads after it entered: the reader never holds
    # more than `size` items
    assert all(item < t + size for t, item in enumerate(order))
    if size > 1:
        assert order != list(range(200))


def test_plan_rejects_impossible_setups():
    with pytest.raises(ValueError, match="fewer than one batch"):
        EpochPlan(SIZES, seed=0, world_size=4, streams=1, batch_size=16, remainder="drop")
    with pytest.raises(ValueError, match="fewer than the 70 ranks"):
        EpochPlan(SIZES, seed=0, world_size=70, streams=1, batch_size=1)


def test_interleave_reads_shards_in_turn():
    assert interleave([(0, 0, 3), (1, 5, 7), (2, 0, 2)], 2) == [
        (0, 0),
        (1, 5),
        (0, 1),
        (1, 6),
        (0, 2),
        (2, 0),
        (2, 1),
    ]
    assert interleave([(0, 0, 2), (1, 0, 2)], 1) == [(0, 0), (0, 1), (1, 0), (1, 1)]


def test_subtract_runs():
    assert subtract(((0, 10), (20, 30)), [(5, 22), (25, 26), (40, 50)]) == (
        (0, 5),
        (22, 25),
        (26, 30),
    )


def test_a_batch_mixes_as_many_shards_as_interleaved():
    sizes = tuple([100] * 16)

    def median_shards(k):
        plan = EpochPlan(
            sizes,
            seed=1,
            world_size=2,
            streams=2,
            batch_size=16,
            partitions=2,
            interleave=k,
            buffer=16,
        )
        entries = plan.stream_positions(0, 0, 0)
        per_batch = sorted(
            len({s for s, _ in entries[i : i + 16]}) for i in range(0, len(entries), 16)
        )
        return per_batch[len(per_batch) // 2]

    assert median_shards(1) <= 2
    assert median_shards(4) >= 4
    assert median_shards(8) >= 8


def consumed(plan: EpochPlan, epoch: int, done: int) -> tuple[Counter, list[list[int]]]:
    """(shard, sample) counts of the first ``done`` batches of every rank, and the cursors."""
    cursors = [
        [plan.batch_size * plan.stream_batches(m, before=done) for m in range(plan.streams)]
        for _ in range(plan.world_size)
    ]
    seen = Counter(
        p
        for r in range(plan.world_size)
        for m in range(plan.streams)
        for p in plan.stream_positions(epoch, r, m)[: cursors[r][m]]
    )
    return seen, cursors


@pytest.mark.parametrize(
    "layouts",
    [
        [(2, 2, 4, 3), (1, 1, 4, None)],  # (world, streams, batch, batches consumed)
        [(1, 2, 4, 5), (3, 2, 4, None)],
        [(2, 1, 3, 2), (3, 2, 2, 2), (1, 3, 5, None)],
        [(3, 2, 2, 4), (2, 2, 2, None)],
    ],
)
def test_resume_at_another_layout_sees_the_unseen_samples_once(layouts):
    everything = Counter({(s, i): 1 for s, n in enumerate(SIZES) for i in range(n)})
    plan, seen, runs = None, Counter(), None
    for world, streams, batch, done in layouts:
        plan = EpochPlan(
            SIZES,
            seed=5,
            world_size=world,
            streams=streams,
            batch_size=batch,
            partitions=3,
            interleave=2,
            buffer=4,
            runs=runs,
        )
        if done is None:
            break
        got, cursors = consumed(plan, 1, done)
        seen += got
        runs = plan.remaining(cursors)
        assert sum(b - a for a, b in runs) == sum(SIZES) - sum(seen.values())
    last = Counter(
        p
        for r in range(plan.world_size)
        for m in range(plan.streams)
        for p in plan.stream_positions(1, r, m)
    )
    padded = sum(plan.remainder_counts(r)["padded"] for r in range(plan.world_size))
    assert set(seen + last) == set(everything)
    assert sum((seen + last).values()) - len(everything) == padded  # only the pad repeats
    assert not set(seen) & set(last)


def test_canonical_order_does_not_depend_on_the_layout():
    plans = [
        EpochPlan(
            SIZES,
            seed=2,
            world_size=w,
            streams=m,
            batch_size=b,
            partitions=4,
            interleave=2,
            buffer=4,
        )
        for w, m, b in [(1, 1, 1), (3, 2, 2), (2, 3, 5)]
    ]
    orders = []
    for plan in plans:
        entries = sorted(
            e
            for r in range(plan.world_size)
            for m in range(plan.streams)
            for e in plan.stream_entries(0, r, m)
            if e.copy == 0
        )
        orders.append([(e.q, e.shard, e.idx) for e in sorted(entries, key=lambda e: e.q)])
    assert orders[0] == orders[1] == orders[2]
    assert [q for q, _, _ in orders[0]] == list(range(sum(SIZES)))
    other = replace(plans[0], partitions=5)
    assert [(e.shard, e.idx) for e in other.stream_entries(0, 0, 0)] != [o[1:] for o in orders[0]]
