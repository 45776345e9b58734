"""Epoch plan: which samples every (rank, stream) reads in an epoch, and in which order.

A pure function of (shard sizes from the manifest, seed, epoch, world size W, streams per rank
M, batch size B, remainder policy) — no I/O, so every rank and worker derives the same plan and a
resumed run can skip consumed samples by index. Steps:

1. **Shard shuffle** (training): the manifest's shard list is permuted with
   ``random.Random(seed + epoch)`` *before* any split; evaluation keeps the manifest order.
2. **Rank split**: the shuffled shards are laid end to end as one sequence of N sample positions;
   rank r owns the contiguous range ``[r·N // W, (r+1)·N // W)`` (N//W or N//W + 1 samples, so at
   most two ranks share a shard and each reads only its part of it).
3. **Remainder** (``pad`` | ``drop``), so that every rank runs exactly L batches of B:
   ``pad``: L = ceil(ceil(N/W) / B); a rank's sequence is extended to L·B by repeating its own
   samples backwards from its last one (keys stay disjoint across ranks; padded = L·B − n_r).
   ``drop``: L = floor(floor(N/W) / B); the last n_r − L·B positions of the rank are dropped.
4. **Stream split**: batch j of a rank is produced by stream ``j % M`` (torch DataLoader's
   in-order round robin); stream m owns the next contiguous slice of B·(its batch count) entries.
5. **Sample shuffle buffer** (training): a stream emits its entries through a shuffle buffer of
   ``buffer`` slots, simulated on indices with a seeded RNG (so the order is known up front and
   the reader only keeps the raw bytes of entries read but not yet emitted).
"""
from __future__ import annotations

import bisect
import math
import random
from dataclasses import dataclass

MASK64 = (1 << 64) - 1


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


@dataclass(frozen=True)
class EpochPlan:
    """Sample plan for one shard set; see the module docstring for the steps."""

    shard_sizes: tuple[int, ...]
    seed: int
    world_size: int
    streams: int
    batch_size: int
    remainder: str = "pad"
    shuffle: bool = True
    buffer: int = 256

    def __post_init__(self) -> None:
        if self.remainder not in ("pad", "drop"):
            raise ValueError(f"data.remainder: {self.remainder!r} is not one of pad, drop")
        if self.num_samples < self.world_size:
            raise ValueError(f"shard set has {self.num_samples} samples, fewer than the "
                             f"{self.world_size} ranks")
        if self.batches == 0:
            raise ValueError(f"data.batch_size {self.batch_size}: a rank gets only "
                             f"{self.num_samples // self.world_size} samples per epoch, fewer than "
                             "one batch with remainder=drop (use remainder=pad or a smaller batch)")

    @property
    def num_samples(self) -> int:
        return sum(self.shard_sizes)

    @property
    def batches(self) -> int:
        """L: batches per epoch on every rank."""
        n, w, b = self.num_samples, self.world_size, self.batch_size
        if self.remainder == "pad":
            return math.ceil(math.ceil(n / w) / b)
        return (n // w) // b

    def rank_range(self, rank: int) -> tuple[int, int]:
        n, w = self.num_samples, self.world_size
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

    def shard_order(self, epoch: int) -> list[int]:
        order = list(range(len(self.shard_sizes)))
        if self.shuffle:
            random.Random(self.seed + epoch).shuffle(order)
        return order

    def stream_positions(self, epoch: int, rank: int, stream: int) -> list[tuple[int, int]]:
        """(manifest shard index, sample index in shard) of each entry of a stream, in read order."""
        order = self.shard_order(epoch)
        starts = [0]
        for s in order:
            starts.append(starts[-1] + self.shard_sizes[s])
        lo, hi = self.rank_range(rank)
        first = self.batch_size * sum(self.stream_batches(m) for m in range(stream))
        count = self.batch_size * self.stream_batches(stream)
        out = []
        for j in range(first, first + count):
            g = lo + j if j < hi - lo else hi - 1 - (j - (hi - lo)) % (hi - lo)  # pad: walk back
            s = bisect.bisect_right(starts, g) - 1
            out.append((order[s], g - starts[s]))
        return out

    def stream_order(self, epoch: int, rank: int, stream: int) -> list[int]:
        """Emission order (indices into ``stream_positions``) after the shuffle buffer."""
        n = self.batch_size * self.stream_batches(stream)
        if not self.shuffle:
            return list(range(n))
        return buffer_order(n, self.buffer, random.Random(mix_seed(self.seed, epoch, rank, stream)))

    def signature(self) -> dict:
        """What must match for an exact (cursor-level) resume."""
        return {"shard_sizes_hash": mix_seed(*self.shard_sizes), "num_samples": self.num_samples,
                "seed": self.seed, "world_size": self.world_size, "streams": self.streams,
                "batch_size": self.batch_size, "remainder": self.remainder,
                "shuffle": self.shuffle, "buffer": self.buffer}
