"""Build-time shuffle: the seeded global input order and the per-window clip permutation.

A clip's place is fixed before its video is decoded only up to its *window*: the inputs are put
in a seeded pseudo-random order (each path's rank is ``sha256(seed, path)``), cut into windows
of ``window`` inputs, and the clips of one window are written in a seeded permutation (each
clip's rank is ``sha256(seed, key)``). So every shard is a random sample of the corpus, the clips
of one video spread over its window (``window × clips per video`` positions, several shards for
long videos), and the order depends only on the seed, the inputs and the options — not on
worker timing. A window's decoded samples wait in a local temporary file (memory stays flat;
disk holds one window: ``window × clips per input × sample size``).
"""

from __future__ import annotations

import hashlib
import tempfile
from collections.abc import Iterator, Sequence
from typing import TypeVar

from avbase.errors import AvfusionError
from avbase.shardformat import Sample

T = TypeVar("T")


def rank(seed: int, name: str) -> bytes:
    """The seeded pseudo-random sort key of ``name`` (stable across runs, platforms, versions)."""
    return hashlib.sha256(f"{seed}\0{name}".encode()).digest()


def shuffled(items: Sequence[T], seed: int, name=str) -> list[T]:
    """``items`` in the seeded order of ``name(item)``."""
    return sorted(items, key=lambda item: rank(seed, name(item)))


def windows(n: int, size: int) -> list[range]:
    """Positions ``0..n-1`` cut into consecutive windows of ``size`` (the last may be short)."""
    return [range(lo, min(lo + size, n)) for lo in range(0, n, size)]


class WindowBuffer:
    """One window's samples spilled to a local temporary file, read back in seeded order."""

    def __init__(self):
        self._file = tempfile.TemporaryFile(prefix="avfusion-window-")
        self._index: list[tuple[str, list[tuple[str, int, int]]]] = []  # key, [(ext, offset, size)]

    def __enter__(self) -> WindowBuffer:
        return self

    def __exit__(self, *exc) -> None:
        self._file.close()

    def __len__(self) -> int:
        return len(self._index)

    def add(self, sample: Sample) -> None:
        key, members = sample
        self._file.seek(0, 2)
        entries = []
        try:
            for ext, data in members:
                entries.append((ext, self._file.tell(), len(data)))
                self._file.write(data)
        except OSError as e:
            raise AvfusionError(
                f"{tempfile.gettempdir()}: cannot hold the shuffle window's decoded samples "
                f"({e.strerror or e}); point TMPDIR at a larger disk or lower --shuffle-window"
            ) from None
        self._index.append((key, entries))

    def samples(self, seed: int | None, skip: int = 0) -> Iterator[Sample]:
        """The samples in the seeded order (added order when ``seed`` is None), first ``skip`` left out."""
        order = list(range(len(self._index)))
        if seed is not None:
            order.sort(key=lambda i: rank(seed, self._index[i][0]))
        for i in order[skip:]:
            key, entries = self._index[i]
            members = []
            for ext, offset, size in entries:
                self._file.seek(offset)
                members.append((ext, self._file.read(size)))
            yield key, members
