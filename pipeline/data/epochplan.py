"""Epoch plan: which samples every (rank, stream) reads in an epoch, and in which order.

A pure function of (shard sizes from the manifests, the sets' shares, seed, epoch, world size W,
streams per rank M, batch size B, remainder policy, partitions, interleave, buffer) — no I/O, so
every rank and worker derives the same plan and a resumed run can skip consumed samples by index.

The epoch's **canonical sequence** Q (positions 0 … N−1) does not depend on W, M or B:

0. **Pieces** (a mixture of shard sets, or ``repeat``): the shard indices run over all sets' shards
   end to end; set k contributes n_k samples per epoch (``sets``; :mod:`pipeline.data.mixture`
   says how n_k follows from weights and repeats). With S_k samples in the set, that is
   ⌊n_k / S_k⌋ whole passes (each of its shards once per pass, in manifest order) plus
   n_k mod S_k samples drawn afresh every epoch (as Mosaic Streaming's ``choose`` at shard
   granularity): the set's shards permuted with an RNG seeded by (seed, epoch, k), taken whole
   until the last one, which contributes its first samples. Each piece is (shard, samples from
   its start, visit: 0 for the shard's first pass this epoch, 1 for its second, ...). One set read
   once (the default) has exactly one piece per shard, in manifest order.
1. **Shard shuffle** (training): the piece list is permuted with ``random.Random(seed + epoch)``;
   evaluation keeps its order.
2. **Canonical partitions** (as Mosaic Streaming's ``num_canonical_nodes``): the shuffled
   pieces are laid end to end and cut into C = min(``partitions``, N) contiguous ranges of N//C or
   N//C + 1 samples. Partition p owns Q positions ``[p·N // C, (p+1)·N // C)``.
3. **Interleave** (training): a partition is *read* ``interleave`` pieces at a time, one sample
   from each in turn (a finished piece's turn passes to the partition's next piece).
4. **Shuffle buffer** (training): the read sequence of a partition goes through a shuffle buffer
   of ``buffer`` slots (webdataset semantics, simulated on indices with an RNG seeded by
   (seed, epoch, p)); its emission order is the partition's part of Q.

The epoch is then split over the ranks and streams — for a fresh epoch over all of Q; for an
epoch resumed at another layout over the **runs** of Q not yet consumed (``runs``), laid end to
end as the sequence R of n samples:

5. **Rank split**: rank r owns the contiguous range ``[r·n // W, (r+1)·n // W)`` of R.
6. **Remainder** (``pad`` | ``drop``), so that every rank runs exactly L batches of B:
   ``pad``: L = ceil(ceil(n/W) / B); a rank's sequence is extended to L·B by repeating its own
   samples backwards from its last one (keys stay disjoint across ranks; padded = L·B − n_r).
   ``drop``: L = floor(floor(n/W) / B); the last n_r − L·B positions of the rank are dropped.
7. **Stream split**: batch j of a rank is produced by stream ``j % M`` (torch DataLoader's
   in-order round robin); stream m owns the next contiguous slice of B·(its batch count)
   entries and emits it in order.

A stream therefore always consumes a *prefix* of its slice: from every rank's stream cursors
(:meth:`EpochPlan.remaining`) the Q positions not yet seen follow exactly, and a plan over them
at any W′, M′, B′ sees each of them once (exact resume at any world size). The visits of a
shard are distinct Q positions, so each is augmented with its own draws (the sample RNG is seeded
by the Q position, :mod:`pipeline.data.stream`).

Memory per stream: at most ``buffer`` raw samples held (read, not yet emitted — the entries a
real shuffle buffer would hold) and at most ``interleave`` pieces open at a time (each with its
read-ahead block, 8 MiB for remote sets): about buffer × sample size + interleave × 8 MiB.
"""

from __future__ import annotations

import bisect
import functools
import math
import random
from dataclasses import dataclass
from typing import NamedTuple

MASK64 = (1 << 64) - 1
CHOOSE = 0x43484F4F  # mix_seed domain of the per-set subset draws (step 0)
Runs = tuple[tuple[int, int], ...]  # sorted, disjoint half-open intervals of Q positions
Sets = tuple[tuple[int, int], ...]  # per set: (its shard count, samples it gives per epoch)


def mix_seed(*parts: int) -> int:
    """Deterministic 63-bit seed from integers (splitmix64 over the parts)."""
    h = 0x9E3779B97F4A7C15
    for p in parts:
        h = (h ^ (p & MASK64)) & MASK64
        h = (h + 0x9E3779B97F4A7C15) & MASK64
        h = ((h ^ (h >> 30)) * 0xBF58476D1CE4E5B9) & MASK64
        h = ((h ^ (h >> 27)) * 0x94D049BB133111EB) & MASK64
        h ^= h >> 31
    return h >> 1


def buffer_order(n: int, size: int, rng: random.Random) -> list[int]:
    """Emission order of ``n`` items through a shuffle buffer of ``size`` slots.

    Semantics of webdataset's ``shuffle``: fill the buffer, then for every new item emit a
    random resident one; drain the rest in random order at the end.
    """
    buf: list[int] = []
    out: list[int] = []
    for i in range(n):
        buf.append(i)
        if len(buf) >= size:
            k = rng.randrange(len(buf))
            buf[k], buf[-1] = buf[-1], buf[k]
            out.append(buf.pop())
    rng.shuffle(buf)
    return out + buf


def interleave(pieces: list[tuple[int, int, int]], k: int) -> list[tuple[int, int]]:
    """(shard, sample) read order of shard pieces (shard, first, end) read ``k`` at a time, one
    sample from each in turn; a finished piece's turn passes to the next waiting piece."""
    waiting, active, out = list(reversed(pieces)), [], []
    while waiting or active:
        while len(active) < k and waiting:
            active.append(list(waiting.pop()))
        for piece in active:
            out.append((piece[0], piece[1]))
            piece[1] += 1
        active = [p for p in active if p[1] < p[2]]
    return out


def subtract(runs: Runs, cut: list[tuple[int, int]]) -> Runs:
    """``runs`` minus the union of the intervals in ``cut``."""
    out, cut = [], sorted(c for c in cut if c[0] < c[1])
    for a, b in runs:
        for c0, c1 in cut:
            if c1 <= a or c0 >= b:
                continue
            if c0 > a:
                out.append((a, c0))
            a = max(a, c1)
        if a < b:
            out.append((a, b))
    return tuple(out)


class Entry(NamedTuple):
    """One planned read of a stream."""

    shard: int  # manifest shard index
    idx: int  # sample index within the shard
    q: int  # position in the epoch's canonical sequence
    read: int  # position in the canonical read order (before the shuffle buffer)
    copy: int  # 0, or k for the k-th repeat of a padded sample
    visit: int = 0  # which pass over its shard this epoch (repeat, up-weighted set)


@dataclass(frozen=True)
class EpochPlan:
    """Sample plan for one shard set or a mixture; see the module docstring for the steps."""

    shard_sizes: tuple[int, ...]  # every set's shards, end to end
    seed: int
    world_size: int
    streams: int
    batch_size: int
    remainder: str = "pad"
    shuffle: bool = True
    buffer: int = 256
    partitions: int = 8
    interleave: int = 8
    runs: Runs | None = None  # Q positions still to read this epoch (None: all of them)
    sets: Sets = ()  # () : one set, read once per epoch

    def __post_init__(self) -> None:
        st = self.set_starts
        if st[-1] != len(self.shard_sizes) or any(
            n and not sum(self.shard_sizes[st[k] : st[k + 1]])
            for k, (_, n) in enumerate(self.set_list)
        ):
            raise ValueError(f"epoch plan: sets {self.sets} do not match the shards' sizes")
        if self.remainder not in ("pad", "drop"):
            raise ValueError(f"data.remainder: {self.remainder!r} is not one of pad, drop")
        if min(self.partitions, self.interleave, self.buffer) < 1:
            raise ValueError("data.partitions, data.interleave and data.shuffle_buffer must be ≥ 1")
        if self.span < self.world_size:
            raise ValueError(
                f"shard set has {self.span} samples to read, fewer than the {self.world_size} ranks"
            )
        if self.batches == 0:
            raise ValueError(
                f"data.batch_size {self.batch_size}: a rank gets only "
                f"{self.span // self.world_size} samples per epoch, fewer than "
                "one batch with remainder=drop (use remainder=pad or a smaller batch)"
            )

    @property
    def set_list(self) -> Sets:
        return self.sets or ((len(self.shard_sizes), sum(self.shard_sizes)),)

    @property
    def num_samples(self) -> int:
        """N: samples per epoch (Σ n_k over the sets)."""
        return sum(n for _, n in self.set_list)

    @functools.cached_property
    def set_starts(self) -> list[int]:
        """First shard index of each set, and the shard count."""
        starts = [0]
        for count, _ in self.set_list:
            starts.append(starts[-1] + count)
        return starts

    def set_of(self, shard: int) -> int:
        """The set a shard index belongs to."""
        return bisect.bisect_right(self.set_starts, shard) - 1

    @property
    def all_runs(self) -> Runs:
        return ((0, self.num_samples),) if self.runs is None else self.runs

    @property
    def span(self) -> int:
        """n: samples this plan splits over the ranks (the whole epoch unless resumed)."""
        return sum(b - a for a, b in self.all_runs)

    @property
    def batches(self) -> int:
        """L: batches (of the planned runs) on every rank."""
        n, w, b = self.span, self.world_size, self.batch_size
        if self.remainder == "pad":
            return math.ceil(math.ceil(n / w) / b)
        return (n // w) // b

    def rank_range(self, rank: int) -> tuple[int, int]:
        n, w = self.span, self.world_size
        return rank * n // w, (rank + 1) * n // w

    def remainder_counts(self, rank: int) -> dict[str, int]:
        """Samples repeated (``padded``) or left out (``dropped``) by ``rank`` per epoch."""
        lo, hi = self.rank_range(rank)
        extra = self.batches * self.batch_size - (hi - lo)
        return {"padded": max(extra, 0), "dropped": max(-extra, 0)}

    def stream_batches(self, stream: int, before: int | None = None) -> int:
        """Number of batches j < ``before`` (default: L) with j % M == stream."""
        end = self.batches if before is None else before
        return max(0, (end - stream + self.streams - 1) // self.streams)

    def stream_slice(self, stream: int) -> tuple[int, int]:
        """(first, count): the stream's entries within its rank's sequence."""
        first = self.batch_size * sum(self.stream_batches(m) for m in range(stream))
        return first, self.batch_size * self.stream_batches(stream)

    @functools.lru_cache(maxsize=2)  # noqa: B019 — frozen, hashable plan
    def pieces(self, epoch: int) -> list[tuple[int, int, int]]:
        """(shard, samples from its start, visit) of the epoch, laid end to end (steps 0-1)."""
        out = []
        for k, (count, n) in enumerate(self.set_list):
            shards = range(self.set_starts[k], self.set_starts[k] + count)
            whole, rest = divmod(n, sum(self.shard_sizes[s] for s in shards))
            out += [(s, self.shard_sizes[s], v) for v in range(whole) for s in shards]
            if rest:  # a subset drawn afresh each epoch: whole shards, the last one in part
                order = list(shards)
                random.Random(mix_seed(self.seed, epoch, CHOOSE, k)).shuffle(order)
                for s in order:
                    out.append((s, min(rest, self.shard_sizes[s]), whole))
                    rest -= out[-1][1]
                    if rest == 0:
                        break
        if self.shuffle:
            random.Random(self.seed + epoch).shuffle(out)
        return [p for p in out if p[1] > 0]

    def shard_order(self, epoch: int) -> list[int]:
        """The epoch's shards in read order (one entry per piece)."""
        return [shard for shard, _, _ in self.pieces(epoch)]

    def partition_starts(self) -> list[int]:
        n = self.num_samples
        c = min(self.partitions, n)
        return [p * n // c for p in range(c + 1)]

    @functools.lru_cache(maxsize=2)  # noqa: B019 — frozen, hashable plan; a stream reuses it
    def partition(self, epoch: int, p: int) -> list[tuple[int, int, int, int]]:
        """(shard, sample, visit, read position) of partition ``p``'s Q positions, in Q order."""
        pieces = self.pieces(epoch)
        starts = self.partition_starts()
        lo, hi, pos, parts = starts[p], starts[p + 1], 0, []
        for i, (_, size, _) in enumerate(pieces):  # the pieces' parts inside [lo, hi)
            a, b = max(lo, pos), min(hi, pos + size)
            if a < b:
                parts.append((i, a - pos, b - pos))
            pos += size
        reads = interleave(parts, self.interleave if self.shuffle else 1)
        emit = (
            buffer_order(len(reads), self.buffer, random.Random(mix_seed(self.seed, epoch, p)))
            if self.shuffle
            else range(len(reads))
        )
        return [(pieces[reads[t][0]][0], reads[t][1], pieces[reads[t][0]][2], lo + t) for t in emit]

    def stream_entries(self, epoch: int, rank: int, stream: int) -> list[Entry]:
        """The entries of a stream, in emission order."""
        run_starts = [0]
        for a, b in self.all_runs:
            run_starts.append(run_starts[-1] + b - a)
        part_starts = self.partition_starts()
        lo, hi = self.rank_range(rank)
        first, count = self.stream_slice(stream)
        out = []
        for j in range(first, first + count):
            back = j - (hi - lo)  # pad: walk back over the rank's own
            g = lo + j if back < 0 else hi - 1 - back % (hi - lo)
            k = bisect.bisect_right(run_starts, g) - 1
            q = self.all_runs[k][0] + g - run_starts[k]
            p = bisect.bisect_right(part_starts, q) - 1
            shard, idx, visit, read = self.partition(epoch, p)[q - part_starts[p]]
            copy = 0 if back < 0 else 1 + back // (hi - lo)
            out.append(Entry(shard, idx, q, read, copy, visit))
        return out

    def stream_positions(self, epoch: int, rank: int, stream: int) -> list[tuple[int, int]]:
        """(manifest shard index, sample index in shard) of each entry of a stream, in order."""
        return [(e.shard, e.idx) for e in self.stream_entries(epoch, rank, stream)]

    def remaining(self, cursors: list[list[int]]) -> Runs:
        """The planned Q positions not consumed when rank r's stream m stands at
        ``cursors[r][m]`` (entries emitted, refills included)."""
        run_starts = [0]
        for a, b in self.all_runs:
            run_starts.append(run_starts[-1] + b - a)
        seen = []
        for rank, rank_cursors in enumerate(cursors):
            lo, hi = self.rank_range(rank)
            for stream, cursor in enumerate(rank_cursors):
                first, count = self.stream_slice(stream)
                g0, g1 = lo + first, lo + min(first + min(cursor, count), hi - lo)
                for k, (a, _) in enumerate(self.all_runs):  # R interval → Q intervals
                    r0, r1 = max(g0, run_starts[k]), min(g1, run_starts[k + 1])
                    if r0 < r1:
                        seen.append((a + r0 - run_starts[k], a + r1 - run_starts[k]))
        return subtract(self.all_runs, seen)

    def canonical(self) -> dict:
        """What fixes the canonical sequence Q (must match to resume mid-epoch at all); one set
        read once has no ``sets`` entry (as before mixtures existed)."""
        mixture = self.set_list != ((len(self.shard_sizes), sum(self.shard_sizes)),)
        return {
            "shard_sizes_hash": mix_seed(*self.shard_sizes),
            "num_samples": self.num_samples,
            "seed": self.seed,
            "shuffle": self.shuffle,
            "buffer": self.buffer,
            "partitions": self.partitions,
            "interleave": self.interleave,
            **({"sets": [list(s) for s in self.set_list]} if mixture else {}),
        }

    def signature(self) -> dict:
        """What must match for an exact (cursor-level) resume."""
        return {
            **self.canonical(),
            "world_size": self.world_size,
            "streams": self.streams,
            "batch_size": self.batch_size,
            "remainder": self.remainder,
            "runs": None if self.runs is None else [list(r) for r in self.runs],
        }
