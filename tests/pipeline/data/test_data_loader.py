"""The streaming loader with real worker processes: coverage, equal steps, resume, errors."""

from __future__ import annotations

import json
import multiprocessing
import shutil
import signal
import subprocess
import tarfile
import time
from collections import Counter

import pytest
import torch

from avbase.features import FRONTENDS, ImageSpec
from pipeline.config import DataConfig
from pipeline.data.loader import DataError, ShardReadError, build_loader
from pipeline.data.worker_signals import leave_stop_signals_to_the_rank
from tests.support.shardsets import LABELS, sample_key, write_shard_set

DAF = FRONTENDS["deepavfusion"]
ALL_KEYS = {sample_key(i) for i in range(61)}
BAD = {3: "meta", 10: "audio", 17: "image"}


def make_loader(
    root, *, rank=0, world=2, workers=2, batch=4, seed=0, train=True, labels=False, audio=DAF, **cfg
):
    cfg = DataConfig(shards=str(root), batch_size=batch, workers=workers, shuffle_buffer=8, **cfg)
    return build_loader(
        cfg,
        audio=audio,
        image=ImageSpec(size=32),
        rank=rank,
        world_size=world,
        seed=seed,
        train=train,
        labels=labels,
    )


def run_epoch(loader, epoch=0, limit=None) -> list[dict]:
    loader.set_epoch(epoch)
    out = []
    for batch in loader:
        out.append(batch)
        if limit is not None and len(out) == limit:
            break
    return out


def keys_of(batches) -> list[str]:
    return [k for b in batches for k in b["key"]]


def assert_same_batches(a: list[dict], b: list[dict]) -> None:
    assert len(a) == len(b)
    for x, y in zip(a, b, strict=True):
        assert x["key"] == y["key"]
        for name in ("image", "audio", "label"):
            assert torch.equal(x[name], y[name]), name


def _damage(i: int, sample: dict) -> dict:
    stage = BAD.get(i)
    if stage == "meta":
        sample["json"] = b"{broken"
    elif stage == "audio":
        sample["mel.npy"] = b"\x93NUMPY\x01\x00garbage"
    elif stage == "image":
        sample.update({k: b"\xff\xd8 broken" for k in sample if k.endswith(".jpg")})
    return sample


@pytest.fixture(scope="session")
def corrupt_set(tmp_path_factory):
    """The 61-sample set with a corrupt json (3), mel (10) and all-JPEG (17) sample."""
    dest = tmp_path_factory.mktemp("corrupt")
    write_shard_set(dest, 61, 8, damage=_damage)
    return dest


@pytest.fixture(scope="session")
def broken_shards(tmp_path_factory, shard_set):
    """The 61-sample set with shard 2 (samples 16-23) cut in half and the header of sample 41
    (shard 5: samples 40-47) garbled."""
    dest = tmp_path_factory.mktemp("broken") / "set"
    shutil.copytree(shard_set, dest)
    tar2 = dest / "shard-000002.tar"
    tar2.write_bytes(tar2.read_bytes()[: tar2.stat().st_size // 2])
    tar5 = dest / "shard-000005.tar"
    with tarfile.open(tar5) as tf:
        offset = next(m.offset for m in tf.getmembers() if m.name.startswith(sample_key(41)))
    data = bytearray(tar5.read_bytes())
    data[offset : offset + 100] = b"x" * 100
    tar5.write_bytes(bytes(data))
    return dest


@pytest.mark.multiproc
@pytest.mark.parametrize("remainder", ["pad", "drop"])
def test_two_ranks_two_workers_cover_the_epoch_once(shard_set, remainder):
    per_rank = []
    for rank in range(2):
        loader = make_loader(shard_set, rank=rank, remainder=remainder)
        batches = run_epoch(loader)
        assert len(batches) == len(loader) == (8 if remainder == "pad" else 7)
        assert all(
            b["image"].shape == (4, 3, 32, 32) and b["audio"].shape == (4, 1, 128, 192)
            for b in batches
        )
        keys = Counter(keys_of(batches))
        assert sum(c - 1 for c in keys.values()) == loader.remainder["padded"]
        assert loader.error_counts() == {"shard": 0, "meta": 0, "audio": 0, "image": 0}
        per_rank.append((set(keys), loader.remainder))
    (k0, r0), (k1, r1) = per_rank
    assert not k0 & k1
    assert len(ALL_KEYS - (k0 | k1)) == r0["dropped"] + r1["dropped"]
    assert (k0 | k1 == ALL_KEYS) if remainder == "pad" else (k0 | k1 < ALL_KEYS)


@pytest.mark.multiproc
def test_epochs_differ_and_replay_identically(shard_set):
    first = run_epoch(make_loader(shard_set, rank=1), epoch=0)
    second = run_epoch(make_loader(shard_set, rank=1), epoch=1)
    assert keys_of(first) != keys_of(second)
    assert_same_batches(run_epoch(make_loader(shard_set, rank=1), epoch=1), second)
    assert not torch.equal(
        run_epoch(make_loader(shard_set, rank=1, seed=5), epoch=1)[0]["image"], second[0]["image"]
    )


@pytest.mark.multiproc
def test_workers_leave_stop_signals_to_the_rank_and_end_on_its_own(shard_set):
    """A SIGTERM / SIGINT from anyone but the rank (torchrun's ``killpg``, Slurm, Ctrl-C) leaves
    the workers running, so the rank can reach its checkpoint: the epoch goes on with the
    uninterrupted run's keys (was: "DataLoader worker ... is killed by signal"). The rank's own
    ``terminate()`` (DataLoader shutdown, multiprocessing's exit) still ends a worker at once."""
    expected = keys_of(run_epoch(make_loader(shard_set)))
    loader = make_loader(shard_set)
    loader.set_epoch(0)
    batches = iter(loader)
    got = [next(batches)]
    workers = multiprocessing.active_children()
    assert len(workers) == 2
    for worker, sig in zip(workers, ("-TERM", "-INT"), strict=True):
        subprocess.run(["kill", sig, str(worker.pid)], check=True)  # sent by another process
    time.sleep(0.5)  # delivered and, were it fatal, acted on
    got += list(batches)
    assert keys_of(got) == expected

    worker = multiprocessing.get_context("fork").Process(target=_a_worker, daemon=True)
    worker.start()
    time.sleep(0.5)  # its init has run
    subprocess.run(["kill", "-TERM", str(worker.pid)], check=True)
    worker.join(timeout=1)
    assert worker.is_alive()
    worker.terminate()  # the rank's SIGTERM (as DataLoader's shutdown and multiprocessing send it)
    worker.join(timeout=5)
    assert worker.exitcode == -signal.SIGTERM


def _a_worker() -> None:
    leave_stop_signals_to_the_rank(0)
    time.sleep(60)


@pytest.mark.multiproc
@pytest.mark.parametrize("which,consumed", [("clean", 3), ("corrupt", 5)])
def test_mid_epoch_resume_yields_exactly_the_remaining_batches(
    shard_set, corrupt_set, which, consumed
):
    root = shard_set if which == "clean" else corrupt_set
    full = run_epoch(make_loader(root, rank=1), epoch=2)
    interrupted = make_loader(root, rank=1)
    assert_same_batches(run_epoch(interrupted, epoch=2, limit=consumed), full[:consumed])
    state = json.loads(json.dumps(interrupted.state_dict()))  # as stored in a checkpoint
    interrupted.close()
    resumed = make_loader(root, rank=1)
    resumed.load_state_dict(state)
    resumed.set_epoch(2)  # same epoch: keeps the position
    assert_same_batches(list(resumed), full[consumed:])
    assert resumed.state_dict()["batches"] == len(resumed)


def interrupted_epoch(root, world: int, consumed: int, states=None, workers=2, **cfg):
    """Each of ``world`` simulated ranks (resumed from ``states`` if given) reads ``consumed``
    batches of epoch 1 (None: the rest of it); returns (keys read, all ranks' states, loaders)."""
    keys, loaders = Counter(), []
    for rank in range(world):
        loader = make_loader(root, rank=rank, world=world, workers=workers, **cfg)
        if states is not None:
            loader.load_state_dict(json.loads(json.dumps(states)))  # as stored in a checkpoint
        keys.update(keys_of(run_epoch(loader, epoch=1, limit=consumed)))
        loaders.append(loader)
    return keys, [loader.state_dict() for loader in loaders], loaders


@pytest.mark.multiproc
@pytest.mark.parametrize("old,new", [(2, 1), (1, 3)])
def test_resume_at_another_world_size_reads_exactly_the_unseen_samples(
    shard_set, corrupt_set, old, new
):
    for root, bad in ((shard_set, set()), (corrupt_set, {sample_key(i) for i in BAD})):
        before, states, first = interrupted_epoch(root, old, 3)
        after, _, loaders = interrupted_epoch(root, new, None, states, workers=1)
        assert set(before + after) == ALL_KEYS - bad
        assert not set(before) & set(after)
        errors = sum(sum(loader.error_counts().values()) for loader in first + loaders)
        assert errors == len(bad)  # each bad sample met (and counted) once
        if not bad:  # repeats: only the pad of the new ranks
            padded = sum(loader.remainder["padded"] for loader in loaders)
            assert sum((before + after).values()) - len(ALL_KEYS) == padded
        for loader in loaders:  # the trainer's count: the epoch is done
            assert loader.state_dict()["batches"] == len(loader) and loader.epoch == 1
        if not bad:
            loaders[0].set_epoch(2)
            assert len(list(loaders[0])) == len(loaders[0])  # the next epoch is a full one


@pytest.mark.multiproc
def test_resume_from_rank_zero_alone_derives_the_other_ranks(shard_set):
    before, states, _ = interrupted_epoch(shard_set, 2, 2)
    after, _, _ = interrupted_epoch(shard_set, 3, None, states[0], workers=1)
    assert set(before + after) == ALL_KEYS and not set(before) & set(after)
    with pytest.raises(ValueError, match="seed differ"):
        make_loader(shard_set, seed=9).load_state_dict(states)


@pytest.mark.multiproc
def test_frames_decoded_by_the_receiving_process_equal_the_workers(corrupt_set):
    here = run_epoch(make_loader(corrupt_set, rank=0, decode="device"), epoch=1)
    assert_same_batches(here, run_epoch(make_loader(corrupt_set, rank=0, decode="worker"), epoch=1))
    assert len(keys_of(here)) == 32 and not set(keys_of(here)) & {sample_key(i) for i in BAD}


@pytest.mark.multiproc
def test_corrupt_samples_are_skipped_counted_and_made_up(corrupt_set):
    errors, refilled, seen = Counter(), 0, Counter()
    for rank in range(2):
        loader = make_loader(corrupt_set, rank=rank)
        batches = run_epoch(loader)
        assert len(batches) == len(loader) and all(len(b["key"]) == 4 for b in batches)
        assert all(b["image"].flatten(1).std(1).min() > 0 for b in batches)  # never blanks
        errors.update(loader.error_counts())
        refilled += loader.stats()["refilled"]
        seen.update(keys_of(batches))
    assert dict(errors) == {"shard": 0, "meta": 1, "audio": 1, "image": 1}
    assert set(seen) == ALL_KEYS - {sample_key(i) for i in BAD}
    assert refilled == len(BAD)


@pytest.mark.multiproc
def test_truncated_and_corrupt_shards_are_skipped_and_counted(broken_shards):
    seen, lost, entries = Counter(), 0, []
    for rank in range(2):
        loader = make_loader(broken_shards, rank=rank, max_error_rate=0.5)
        batches = run_epoch(loader)
        assert len(batches) == len(loader)
        counts = loader.error_counts()
        assert counts["meta"] == counts["audio"] == counts["image"] == 0
        lost += counts["shard"]
        seen.update(keys_of(batches))
        entries += [
            {sample_key(8 * s + i) for s, i in loader.plan.stream_positions(0, rank, m)}
            for m in range(2)
        ]
    missing = ALL_KEYS - set(seen)
    # a sample counts as read once the next one starts (webdataset grouping), so the one before
    # the garbled header is lost too
    assert missing == {sample_key(i) for i in [*range(20, 24), *range(40, 48)]}
    # each planned sample counted once per stream (its pad copies are not recounted)
    assert lost == sum(len(stream & missing) for stream in entries)


@pytest.mark.multiproc
def test_error_rate_threshold_aborts_with_a_clear_message(broken_shards):
    loader = make_loader(broken_shards, rank=0, max_error_rate=0.01)
    with pytest.raises(
        DataError, match=r"more than data.max_error_rate=0.01; last error: .*shard-00000[25].tar"
    ):
        run_epoch(loader)


def test_labels_and_evaluation_order(shard_set):
    loader = make_loader(shard_set, world=1, workers=0, batch=61, train=False, labels=True)
    (batch,) = run_epoch(loader)
    assert batch["key"] == [sample_key(i) for i in range(61)]  # manifest order
    assert batch["label"].tolist() == [i % len(LABELS) for i in range(61)]
    (again,) = run_epoch(
        make_loader(shard_set, world=1, workers=0, batch=61, train=False, labels=True), epoch=3
    )
    assert_same_batches([batch], [again])  # no randomness in evaluation
    unlabelled = run_epoch(make_loader(shard_set, world=1, workers=0, batch=61))[0]["label"]
    assert (unlabelled == -1).all()


def test_unusable_shard_sets_are_named(shard_set, tmp_path):
    with pytest.raises(ValueError, match=r"empty/manifest.json: not found"):
        make_loader(tmp_path / "empty")
    with pytest.raises(ValueError, match=r"preset.audio.kind is 'melspec' .*--preset audiomae"):
        make_loader(shard_set, audio=FRONTENDS["audiomae"])
    write_shard_set(tmp_path / "nolabels", 4, 4, labelled=False)
    with pytest.raises(ValueError, match="unlabelled"):
        make_loader(tmp_path / "nolabels", labels=True)


class _FailingStream(torch.utils.data.IterableDataset):
    def __iter__(self):
        raise ShardReadError("s3://b/set/shard-000001.tar: still failing after 2 attempts in 5 s")


def test_a_worker_error_keeps_its_own_message():
    """DataLoader re-raises a worker's exception with the worker's traceback as the message;
    the user's one line must still be the one naming the shard."""
    from pipeline.data.loader import worker_error

    with pytest.raises(ShardReadError) as caught:
        next(iter(torch.utils.data.DataLoader(_FailingStream(), batch_size=None, num_workers=1)))
    raised = caught.value.with_traceback(None)
    del caught  # and its traceback, which holds the iterator: the worker stops now, not at a
    # later garbage collection (which would wait out torch's 5-s join in another test)
    assert str(raised).startswith("Caught ShardReadError in DataLoader worker process 0")
    error = worker_error(raised)
    assert type(error) is ShardReadError
    assert str(error) == "s3://b/set/shard-000001.tar: still failing after 2 attempts in 5 s"
