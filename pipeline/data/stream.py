"""One loader stream (a rank's worker): raw samples in plan order → augmented batches.

The stream's entries and their emission order come from :class:`pipeline.data.epochplan.EpochPlan`.
Its position is a **cursor** counting emitted entries (skipped ones included); past the end of
the plan the cursor wraps into a refill pass that re-emits the stream's first entries — used
only when skipped samples left the stream short of its batch quota (counted as ``refilled``).
Every sample's random draws come from an RNG seeded by (seed, epoch, its canonical position,
its pad copy, refill pass) — not by rank or stream — so a stream restarted at a cursor reproduces
the uninterrupted one exactly, and a sample is augmented alike at any world size.
"""

from __future__ import annotations

import random
import resource
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field

import torch

from avbase.errors import AvfusionError
from avbase.shardformat import CorruptShard
from pipeline.data.augment import SampleError, Transform
from pipeline.data.epochplan import Entry, EpochPlan, mix_seed
from pipeline.data.shardio import ShardStore

STAGES = ("shard", "meta", "audio", "image")  # error counts: samples skipped per stage
MIN_RATE_SAMPLES = 100  # the error rate is judged on ≥ this many samples


class DataError(AvfusionError):
    """Too many samples failed (``data.max_error_rate``) or a stream has no usable sample."""


def check_error_rate(errors: Counter, good: int, max_rate: float, last_error: str) -> None:
    bad = sum(errors.values())
    if bad > max_rate * max(bad + good, MIN_RATE_SAMPLES):
        stages = ", ".join(f"{k} {v}" for k, v in errors.items() if v)
        raise DataError(
            f"data: {bad} of {bad + good} samples failed ({stages}), more than "
            f"data.max_error_rate={max_rate:g}; last error: {last_error}"
        )


Piece = tuple[int, int]  # (shard, visit): one pass over a shard in an epoch


class StreamReader:
    """Raw samples of one stream's entries, fetched lazily: ``take(i)`` reads entry i's piece
    forward until entry i is in.

    Each piece (a shard's visit: a repeated shard has one per pass) is read once, front to back;
    only wanted entries are kept, samples never wanted are skipped inside the tar without
    copying. ``frontier`` is the furthest canonical read position taken so far: a piece whose
    wanted entries all lie at or before it is read to its last wanted entry and closed at once,
    so the open pieces are those a real interleaved reader would have open (≤
    ``data.interleave``) and the held samples those a real shuffle buffer would hold (≤
    ``data.shuffle_buffer``).
    """

    def __init__(self, store: ShardStore, entries: list[Entry], needed: list[int]):
        self.store, self.entries = store, entries
        self.wanted: dict[Piece, dict[int, list[int]]] = {}
        self.last_read: dict[Piece, int] = {}
        for i in needed:
            e = entries[i]
            piece = (e.shard, e.visit)
            self.wanted.setdefault(piece, {}).setdefault(e.idx, []).append(i)
            self.last_read[piece] = max(self.last_read.get(piece, -1), e.read)
        self.open: dict[Piece, Iterator] = {}
        self.captured: dict[int, dict] = {}
        self.lost: set[int] = set()
        self.frontier = -1
        self.last_error = ""

    def take(self, i: int) -> dict | None:
        """Raw sample of entry ``i``, or None when its shard is corrupt or truncated."""
        piece = (self.entries[i].shard, self.entries[i].visit)
        while i not in self.captured and i not in self.lost:
            self._advance(piece)
        self.frontier = max(self.frontier, self.entries[i].read)
        for s in [s for s in self.open if self.last_read[s] <= self.frontier]:
            while s in self.wanted:  # a real reader has passed its end
                self._advance(s)
        if i in self.captured:
            return self.captured.pop(i)
        self.lost.discard(i)
        return None

    def _advance(self, piece: Piece) -> None:
        """Read the next wanted sample of ``piece``; on its end or damage, mark the rest lost."""
        pending = self.wanted[piece]
        if piece not in self.open:
            self.open[piece] = self.store.samples(piece[0], set(pending))
        try:
            idx, sample = next(self.open[piece])
            for i in pending.pop(idx):
                self.captured[i] = sample
            if pending:
                return
        except StopIteration:
            self.last_error = (
                f"{self.store.url(piece[0])}: ends before sample {min(pending)} "
                "(the manifest lists more)"
            )
        except CorruptShard as e:
            self.last_error = str(e)
        for entries in pending.values():  # the rest of this shard is unreadable
            self.lost.update(entries)
        self.open.pop(piece).close()
        del self.wanted[piece]


def stream_entries(
    store: ShardStore, entries: list[Entry], cursor: int, dead: set[tuple[int, int]]
) -> Iterator[tuple[int, int, dict | None, str | None]]:
    """(cursor, entry, raw sample, loss message) from ``cursor`` on, wrapping into refill passes.

    ``raw`` is None when the entry's shard is unreadable there (``loss`` says why) or when its
    (shard, sample) is in ``dead`` (failed earlier in this process — a pad copy or a refill of a
    failed sample; ``loss`` None: not read, not recounted).
    """
    n = len(entries)
    while True:
        todo = range(cursor % n, n)
        reader = StreamReader(store, entries, [i for i in todo if entries[i][:2] not in dead])
        try:
            for i in todo:
                gone = entries[i][:2] in dead
                raw = None if gone else reader.take(i)
                yield cursor, i, raw, (reader.last_error if raw is None and not gone else None)
                cursor += 1
        finally:
            for it in reader.open.values():
                it.close()


@dataclass
class StreamSpec:
    """Everything a worker needs to produce its batches (picklable)."""

    roots: list[str]  # the set root of each shard
    shards: list[dict]  # every set's manifest shards, end to end
    plan: EpochPlan
    transform: Transform  # raw sample → item (training / evaluation views, dense items)
    rank: int
    labels: bool
    max_error_rate: float
    retries: int
    retry_seconds: float
    timeouts: tuple[float, float]
    cache_dir: str | None
    cache_limit_gb: float
    classes: int = 0  # multi-label set: labels become multi-hot [B, classes]

    def store(self) -> ShardStore:
        return ShardStore(
            self.roots,
            self.shards,
            retries=self.retries,
            budget=self.retry_seconds,
            timeouts=self.timeouts,
            cache_dir=self.cache_dir,
            cache_limit_gb=self.cache_limit_gb,
        )


@dataclass
class Tally:
    """Skipped samples per stage: ``total`` for this worker, ``batch`` since the last batch."""

    total: Counter = field(default_factory=Counter)
    batch: Counter = field(default_factory=Counter)
    last_error: str = ""

    def add(self, stage: str, message: str) -> None:
        self.total[stage] += 1
        self.batch[stage] += 1
        self.last_error = message


def usable_samples(
    spec: StreamSpec, epoch: int, stream: int, cursor: int, tally: Tally
) -> Iterator[tuple[int, str, tuple, bool, bool, int]]:
    """(cursor after it, key, transformed item, is a refill, is a repeat, its set) for each usable
    sample of a stream (a repeat: a pad copy or a refill, a sample this rank already yielded this
    epoch; its set: the index of the sample's shard set); failures are skipped and tallied, never
    replaced."""
    plan = spec.plan
    entries = plan.stream_entries(epoch, spec.rank, stream)
    n = len(entries)
    dead: set[tuple[int, int]] = set()
    good = since_good = 0
    for position, i, raw, loss in stream_entries(spec.store(), entries, cursor, dead):
        since_good += 1
        if since_good > n:
            raise DataError(
                f"data: no usable sample in a whole pass of stream {stream} of rank "
                f"{spec.rank}; last error: {tally.last_error}"
            )
        if raw is None and loss is None:
            continue  # failed in an earlier pass
        try:
            if raw is None:
                raise SampleError("shard", loss)
            e = entries[i]  # draws depend on the sample, not the layout
            rng = (
                random.Random(mix_seed(plan.seed, epoch, e.q, e.copy, position // n))
                if plan.shuffle
                else None
            )
            item = spec.transform(raw, rng)
        except SampleError as err:
            dead.add(entries[i][:2])
            tally.add(err.stage, f"{raw['__key__']}: {err}" if raw else str(err))
            check_error_rate(tally.total, good, spec.max_error_rate, tally.last_error)
            continue
        good, since_good = good + 1, 0
        refill, k = position >= n, plan.set_of(entries[i].shard)
        yield position + 1, raw["__key__"], item, refill, refill or entries[i].copy > 0, k


def collate_labels(labels: list, wanted: bool, classes: int) -> torch.Tensor:
    """int64 ``[B]`` (−1 when not ``wanted``) or, with ``classes`` > 0, multi-hot float32 ``[B, classes]``."""
    if not (wanted and classes):
        return torch.tensor([lab if wanted else -1 for lab in labels], dtype=torch.int64)
    hot = torch.zeros(len(labels), classes)
    for i, lab in enumerate(labels):
        hot[i, list(lab) if isinstance(lab, tuple) else ([lab] if lab >= 0 else [])] = 1.0
    return hot


def rss_mb() -> float:
    """Current resident set size of this process (MiB). NOTE: not ``ru_maxrss``, which a forked
    worker inherits from its parent's history."""
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * resource.getpagesize() / 2**20


def stream_batches(
    spec: StreamSpec, epoch: int, stream: int, cursor: int, batch_ids: list[int], shared: bool
) -> Iterator[dict]:
    """Yield the batches ``batch_ids`` (this stream's, in order) starting at ``cursor``.

    Images are uint8 (the loader normalises them). Each batch carries ``_meta``: {batch, stream,
    cursor after it, errors / refilled during it, last_error, the worker's RSS and its growth since
    the stream started (MiB), worker CPU seconds, samples per set index} for the loader's
    bookkeeping.
    """
    tally, start_rss = Tally(), rss_mb()
    samples = usable_samples(spec, epoch, stream, cursor, tally)
    for j in batch_ids:
        chunk = [next(samples) for _ in range(spec.plan.batch_size)]
        _, keys, items, refills, repeats, sets = zip(*chunk, strict=True)
        labels = collate_labels([item[-1] for item in items], spec.labels, spec.classes)
        usage = resource.getrusage(resource.RUSAGE_SELF)
        yield {
            **spec.transform.batch(list(items), shared),
            "key": list(keys),
            "label": labels,
            "padded": torch.tensor(repeats),
            "_meta": {
                "batch": j,
                "stream": stream,
                "cursor": chunk[-1][0],
                "errors": dict(tally.batch),
                "refilled": sum(refills),
                "last_error": tally.last_error,
                "rss_mb": rss_mb(),
                "rss_growth_mb": rss_mb() - start_rss,
                "cpu_s": usage.ru_utime + usage.ru_stime,
                "sets": dict(Counter(sets)),
            },
        }
        tally.batch.clear()
