"""Several shard sets in one run (#27.3): the epoch size rule, the plan's draws per set,
proportions within binomial tolerance, determinism, exact resume at the same and at another
world size, ``repeat``, samples per set, a preset mismatch named in one line, and each shard read
from its own set's root (local and s3://)."""

from __future__ import annotations

import json
import math
import shutil
from collections import Counter

import pytest

from avbase.features import FRONTENDS, ImageSpec
from pipeline.config import DataConfig, ShardSource
from pipeline.data.epochplan import EpochPlan
from pipeline.data.loader import build_loader
from pipeline.data.mixture import epoch_counts, set_names
from pipeline.data.shardio import ShardStore
from pipeline.data.stream import StreamReader
from tests.pipeline.data.test_data_loader import assert_same_batches, keys_of, run_epoch
from tests.support.shardsets import sample_key, write_shard_set

DAF = FRONTENDS["deepavfusion"]
PER_SHARD = 8
SETS = {"a": (48, 0), "b": (48, 1000), "c": (72, 2000)}  # samples, number of the first sample
WEIGHTS = {"a": 0.6, "b": 0.3, "c": 0.1}
# T = 48 + 48 + 72 = 168; quotas 100.8 / 50.4 / 16.8 → floors 100 / 50 / 16, the two samples
# left go to the largest fractional parts (a, c): a gives 2 passes + 5, b 1 pass + 2, c 17 of 72
COUNTS = {"a": 101, "b": 50, "c": 17}


@pytest.fixture(scope="module")
def sets(tmp_path_factory):
    root = tmp_path_factory.mktemp("mix")
    for name, (n, first) in SETS.items():
        write_shard_set(root / name, n, PER_SHARD, first=first)
    return {name: str(root / name) for name in SETS}


def weighted(sets) -> list[dict]:
    return [{"path": sets[k], "weight": w} for k, w in WEIGHTS.items()]


def make(shards, *, rank=0, world=2, workers=1, batch=4, seed=0, **cfg):
    return build_loader(
        DataConfig(shards=shards, batch_size=batch, workers=workers, shuffle_buffer=8, **cfg),
        audio=DAF,
        image=ImageSpec(size=32),
        rank=rank,
        world_size=world,
        seed=seed,
    )


def set_of(key: str) -> str:
    return "abc"[int(key[3:8]) // 1000]


def planned_keys(plan: EpochPlan, epoch: int) -> Counter:
    """Keys of every Q position of the epoch (a key once per visit), from the plan alone."""
    starts, firsts = plan.set_starts, [first for _, first in SETS.values()]
    keys = Counter()
    for r in range(plan.world_size):
        for m in range(plan.streams):
            for e in plan.stream_entries(epoch, r, m):
                k = plan.set_of(e.shard)
                number = firsts[k] + PER_SHARD * (e.shard - starts[k]) + e.idx
                keys[sample_key(number)] += e.copy == 0
    return +keys


def test_epoch_size_rule():
    s = [ShardSource(k, weight=w) for k, w in WEIGHTS.items()]
    assert epoch_counts([48, 48, 72], s) == list(COUNTS.values())
    assert epoch_counts([10, 5], [ShardSource("x", 1.0), ShardSource("y", 1.0)], 0.5) == [4, 4]
    assert epoch_counts([10, 7], [ShardSource("x", repeat=2.5), ShardSource("y")]) == [25, 7]
    assert epoch_counts([61], [ShardSource("x")], repeat=2.0) == [122]
    assert set_names(["s3://b/x/train", "/d/train/", "s3://bucket", "/d/w e"]) == [
        "train_0",
        "train_1",
        "bucket",
        "w_e",
    ]


def test_plan_draws_whole_passes_plus_a_fresh_subset_per_set():
    # set 0: 3 shards of 8 giving 60 (2 passes + 12); set 1: 5 shards of 8 giving 13 (1 + 5)
    plan = EpochPlan(
        (8,) * 8, seed=1, world_size=2, streams=2, batch_size=4, sets=((3, 60), (5, 13))
    )
    subsets = []
    for epoch in range(6):
        entries = [
            e
            for r in range(2)
            for m in range(2)
            for e in plan.stream_entries(epoch, r, m)
            if e.copy == 0
        ]
        assert sorted(e.q for e in entries) == list(range(73))
        assert len({(e.shard, e.idx, e.visit) for e in entries}) == 73
        per_sample = Counter((e.shard, e.idx) for e in entries)
        assert Counter(plan.set_of(s) for s, _ in per_sample.elements()) == {0: 60, 1: 13}
        assert sorted(Counter(n for (s, _), n in per_sample.items() if s < 3).items()) == [
            (2, 12),
            (3, 12),
        ]
        chosen = {(s, i) for s, i in per_sample if s >= 3}
        shards = Counter(s for s, _ in chosen)
        assert sorted(shards.values()) == [5, 8]  # one whole shard, the first 5 of another
        partial = min(shards, key=shards.get)
        assert {i for s, i in chosen if s == partial} == set(range(5))
        subsets.append(frozenset(chosen))
    assert len(set(subsets)) > 1  # drawn afresh each epoch
    assert len(frozenset().union(*subsets)) > 13


@pytest.mark.parametrize(
    "layouts",
    [
        [(2, 2, 4, 3), (3, 1, 5, None)],  # (world, streams, batch, batches consumed)
        [(1, 2, 3, 4), (2, 2, 2, 3), (4, 1, 2, None)],
    ],
)
def test_plan_resume_at_another_layout_sees_each_planned_read_once(layouts):
    sizes, sets = (8,) * 9, ((3, 60), (2, 16), (4, 7))
    expected, seen, runs, plan = None, Counter(), None, None
    for world, streams, batch, done in layouts:
        plan = EpochPlan(
            sizes,
            5,
            world,
            streams,
            batch,
            partitions=3,
            interleave=2,
            buffer=4,
            sets=sets,
            runs=runs,
        )
        if expected is None:
            expected = Counter(
                (e.shard, e.idx, e.visit)
                for r in range(world)
                for m in range(streams)
                for e in plan.stream_entries(1, r, m)
                if e.copy == 0
            )
            assert sum(expected.values()) == len(expected) == 83
        if done is None:
            break
        cursors = [[batch * plan.stream_batches(m, before=done) for m in range(streams)]] * world
        seen.update(
            (e.shard, e.idx, e.visit)
            for r in range(world)
            for m in range(streams)
            for e in plan.stream_entries(1, r, m)[: cursors[r][m]]
        )
        runs = plan.remaining(cursors)
    last = Counter(
        (e.shard, e.idx, e.visit)
        for r in range(plan.world_size)
        for m in range(plan.streams)
        for e in plan.stream_entries(1, r, m)
    )
    padded = sum(plan.remainder_counts(r)["padded"] for r in range(plan.world_size))
    assert set(seen + last) == set(expected) and not set(seen) & set(last)
    assert sum((seen + last).values()) - len(expected) == padded


def test_one_set_read_once_keeps_the_plan_and_the_resume_signature():
    sizes = (8, 8, 8, 5)
    plain = EpochPlan(sizes, seed=2, world_size=2, streams=2, batch_size=3)
    spelled = EpochPlan(sizes, seed=2, world_size=2, streams=2, batch_size=3, sets=((4, 29),))
    assert "sets" not in plain.canonical() and plain.canonical() == spelled.canonical()
    assert plain.stream_entries(3, 1, 0) == spelled.stream_entries(3, 1, 0)
    twice = EpochPlan(sizes, seed=2, world_size=2, streams=2, batch_size=3, sets=((4, 58),))
    assert twice.canonical()["sets"] == [[4, 58]]  # a checkpoint of another epoch is refused


def test_reader_keeps_the_memory_bound_when_shards_repeat(sets):
    manifest = json.loads(open(f"{sets['c']}/manifest.json").read())
    sizes = tuple(s["num_samples"] for s in manifest["shards"])
    plan = EpochPlan(
        sizes, 4, 2, 2, 5, partitions=2, interleave=3, buffer=16, sets=((9, 216),)
    )  # every shard 3 times
    for rank in range(2):
        for stream in range(2):
            entries = plan.stream_entries(0, rank, stream)
            assert len({e.shard for e in entries}) < len({(e.shard, e.visit) for e in entries})
            store = ShardStore(sets["c"], manifest["shards"])
            reader = StreamReader(store, entries, list(range(len(entries))))
            held = opened = 0
            for i, e in enumerate(entries):
                assert reader.take(i)["__key__"] == sample_key(2000 + PER_SHARD * e.shard + e.idx)
                held, opened = max(held, len(reader.captured)), max(opened, len(reader.open))
            assert 1 < held <= 16 and 1 < opened <= 3


@pytest.mark.multiproc
def test_mixture_epoch_realises_the_weights(sets):
    loaders = [make(weighted(sets), rank=r) for r in range(2)]
    keys = [k for loader in loaders for k in keys_of(run_epoch(loader, epoch=1))]
    assert [loader.remainder["padded"] for loader in loaders] == [0, 0]  # 168 = 2 × 21 × 4
    per_set = Counter(set_of(k) for k in keys)
    for name, w in WEIGHTS.items():  # within 3 binomial standard deviations of the weight
        assert abs(per_set[name] / len(keys) - w) <= 3 * math.sqrt(w * (1 - w) / len(keys))
    assert per_set == COUNTS  # in fact exactly the rule's counts
    assert max(Counter(k for k in keys if set_of(k) == "c").values()) == 1  # c: a subset
    assert set(Counter(k for k in keys if set_of(k) == "a").values()) == {2, 3}  # a: 2.1 passes
    counted = Counter()
    for loader in loaders:
        counted.update(loader.samples_per_set())
    assert counted == COUNTS


@pytest.mark.multiproc
def test_mixture_order_is_fixed_by_the_seed(sets):
    first = run_epoch(make(weighted(sets), rank=1), epoch=2)
    assert_same_batches(run_epoch(make(weighted(sets), rank=1), epoch=2), first)
    assert keys_of(run_epoch(make(weighted(sets), rank=1, seed=3), epoch=2)) != keys_of(first)


@pytest.mark.multiproc
def test_mixture_resumes_exactly_at_the_same_world_size(sets):
    uninterrupted = make(weighted(sets), rank=1, workers=2)
    full = run_epoch(uninterrupted, epoch=2)
    interrupted = make(weighted(sets), rank=1, workers=2)
    run_epoch(interrupted, epoch=2, limit=5)
    state = json.loads(json.dumps(interrupted.state_dict()))  # as stored in a checkpoint
    interrupted.close()  # kill -9: nothing else survives
    resumed = make(weighted(sets), rank=1, workers=2)
    resumed.load_state_dict(state)
    resumed.set_epoch(2)
    assert_same_batches(list(resumed), full[5:])
    assert resumed.samples_per_set() == uninterrupted.samples_per_set()
    assert sum(resumed.samples_per_set().values()) == len(full) * 4
    other = [{**item, "weight": 1.0} for item in weighted(sets)]
    with pytest.raises(ValueError, match="sets differ from this run's .* other weights"):
        make(other, rank=1).load_state_dict(state)  # another epoch order: refused


@pytest.mark.multiproc
@pytest.mark.parametrize("old,new", [(2, 3), (2, 1)])
def test_mixture_resume_at_another_world_size_sees_each_sample_once(sets, old, new):
    first = [make(weighted(sets), rank=r, world=old, workers=2) for r in range(old)]
    expected = planned_keys(first[0].plan, 1)
    assert sum(expected.values()) == 168
    before = Counter(k for loader in first for k in keys_of(run_epoch(loader, 1, limit=5)))
    states = json.loads(json.dumps([loader.state_dict() for loader in first]))
    after, counted, padded = Counter(), Counter(), 0
    for rank in range(new):
        loader = make(weighted(sets), rank=rank, world=new)
        loader.load_state_dict(states)
        after.update(keys_of(run_epoch(loader, epoch=1)))
        assert loader.state_dict()["batches"] == len(loader)  # the epoch is done
        counted.update(loader.samples_per_set())
        padded += loader.remainder["padded"]
    seen = before + after
    assert not expected - seen  # every planned read happened ...
    assert sum((seen - expected).values()) == padded  # ... once, but for the new ranks' pad
    assert counted == Counter(set_of(k) for k in seen.elements())  # the sum stays exact


@pytest.mark.multiproc
def test_repeat_gives_every_sample_k_times_with_fresh_draws(sets):
    loader = make(sets["a"], world=1, workers=1, batch=8, repeat=3)
    batches = run_epoch(loader)
    assert len(loader) == 18 and loader.num_samples == 144
    copies: dict[str, list] = {}
    for b in batches:
        for key, image, audio in zip(b["key"], b["image"], b["audio"], strict=True):
            copies.setdefault(key, []).append((image, audio))
    assert len(copies) == 48 and {len(c) for c in copies.values()} == {3}
    for c in copies.values():  # each copy augmented with its own draws
        for i in range(3):
            for j in range(i):
                assert not (c[i][0].equal(c[j][0]) and c[i][1].equal(c[j][1]))
    assert loader.samples_per_set() == {"a": 144}


def test_sets_with_another_preset_are_named_in_one_line(sets, tmp_path):
    write_shard_set(tmp_path / "fbank", 8, 8, preset="audiomae")
    with pytest.raises(ValueError) as caught:
        make([sets["a"], str(tmp_path / "fbank")])
    message = str(caught.value)
    assert "\n" not in message
    assert message.startswith(f"data.shards[1] ({tmp_path}/fbank/manifest.json): preset.audio.kind")
    assert f"data.shards[0]'s ({sets['a']}/manifest.json)" in message


@pytest.mark.slow
@pytest.mark.multiproc
def test_each_shard_is_read_from_its_own_sets_root(sets, s3_server, monkeypatch):
    for k, v in s3_server.env.items():
        monkeypatch.setenv(k, v)
    shutil.copytree(sets["b"], s3_server.root / "mix" / "b", dirs_exist_ok=True)
    shards = [sets["a"], "s3://mix/b", sets["c"]]  # the same shard names in every set
    loader = make(shards, world=1, workers=1, cache_dir=None)
    keys = keys_of(run_epoch(loader))
    assert Counter(map(set_of, keys)) == {"a": 48, "b": 48, "c": 72}
    assert len(set(keys)) == 168
    assert loader.samples_per_set() == {"a": 48, "b": 48, "c": 72}
