"""What every index reader returns, and the small parsing helpers they share.

An index reader turns the published index files of one dataset into :class:`Entry` records
(one per listed clip) and :class:`Problem` records (one per unusable line: a bad time, an
unknown label id, a box outside the frame, a clip listed twice). A problem never stops a
build: it becomes one ``errors.jsonl`` line naming the file and line. Only an unusable index
as a whole (missing file, wrong header, no entries) raises :class:`AvfusionError`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import fsspec

from avbase.errors import AvfusionError
from avbase.urls import redact
from preprocess.datasets.records import Regions


@dataclass(frozen=True)
class Entry:
    """One clip as the index lists it."""

    id: str  # the dataset's clip id (unique in the index)
    where: str  # "<file>:<line>"
    name: str  # what media files are named after (YouTube id, AVSBench name, Flickr id)
    label: str | None = None  # class name(s), ";"-separated when several
    split: str | None = None
    start: float | None = None  # seconds in the source video
    end: float | None = None
    regions: Regions | None = None
    category: str | None = None  # AVSBench: the folder level between split and name


@dataclass(frozen=True)
class Problem:
    where: str
    id: str | None
    message: str
    split: str | None = None  # when the line says it


@dataclass
class DatasetIndex:
    entries: list[Entry] = field(default_factory=list)
    problems: list[Problem] = field(default_factory=list)
    classes: list[str] | None = None  # the class order; None: an unlabelled dataset
    multi_label: bool = False
    record: dict = field(default_factory=dict)  # extra manifest facts (AudioSet: class_ids)
    first_line: dict[str, str] = field(default_factory=dict, repr=False)  # clip id -> where

    def add(self, entry: Entry) -> None:
        """Keep ``entry`` unless its id was listed before (then a problem for this line)."""
        first = self.first_line.setdefault(entry.id, entry.where)
        if first == entry.where:
            self.entries.append(entry)
        else:
            message = f"clip {entry.id} is listed twice (first at {first})"
            self.reject(entry.where, entry.id, message, entry.split)

    def reject(
        self, where: str, clip_id: str | None, message: str, split: str | None = None
    ) -> None:
        self.problems.append(Problem(where, clip_id, message, split))


def read_text(path: str) -> str:
    """An index file's text (local or URL; a UTF-8 byte-order mark is dropped)."""
    try:
        with fsspec.open(path, "rt", encoding="utf-8-sig", newline="") as f:
            return f.read()
    except FileNotFoundError:
        raise AvfusionError(f"--index {path}: no such file") from None
    except (OSError, UnicodeDecodeError) as e:
        raise AvfusionError(f"--index {path}: cannot be read ({e})") from None


def seconds(text: str) -> float | None:
    """A time in seconds (``"30"``, ``"30.000"``), or ``None`` when it is not a finite number
    >= 0."""
    try:
        value = float(text)
    except ValueError:
        return None
    return value if math.isfinite(value) and value >= 0 else None


def where(path: str, line: int) -> str:
    """``<index file>:<line>`` as errors name an entry (credentials in URLs masked)."""
    return f"{redact(path)}:{line}"


def check_box(values, scale: float, tolerance: float = 1e-6) -> tuple[tuple, str | None]:
    """(box clipped to [0, scale] within ``tolerance``, None), or ((), why it is unusable):
    not four numbers, a coordinate outside the frame, or a max below its min."""
    numbers = isinstance(values, list | tuple) and len(values) == 4
    if not numbers or any(not isinstance(v, int | float) or isinstance(v, bool) for v in values):
        return (), f"{list(values) if isinstance(values, tuple) else values!r}: expected 4 numbers"
    if any(not -tolerance <= v <= scale + tolerance for v in values):
        return (), f"{list(values)}: outside the frame (coordinates in [0, {scale:g}])"
    box = tuple(min(max(float(v), 0.0), scale) for v in values)
    if box[2] < box[0] or box[3] < box[1]:
        return (), f"{list(values)}: max below min"
    return box, None


def box_problems(problems: list[str], kept: int) -> str:
    """One message for an entry's unusable boxes (they are dropped; the others kept)."""
    fate = f"dropped, {kept} box(es) kept" if kept else "no box left: the clip is not built"
    return "; ".join(problems) + f" ({fate})"
