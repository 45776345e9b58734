"""Finding each listed clip's media under ``--media ROOT`` (local or an fsspec URL).

ROOT is listed once (recursively, symlinked folders followed, as INPUT folders are). A clip
``(name, start, end)`` — ``name`` the YouTube id or the dataset's own name; ids may begin with
``-`` and contain ``_`` — is found in this order, by file *name* in any folder:

1. ``<name>_<start>_<end>.<ext>``: a pre-cut clip; times in seconds (integer, zero-padded or
   with decimals: ``_30_40``, ``_000030_000040``, ``_30.000_40.000``) or in milliseconds
   (``_30000_40000``, as the localization repositories name VGGSound clips);
2. ``<name>_<start>.<ext>``: a pre-cut clip named by its start second (VGGSound's own
   ``<ytid>_<start:06d>``);
3. ``<name>.<ext>``: a full-length video, cut ``[start, end)`` by stream time.

``--name-pattern`` replaces these conventions: a Python format string naming the file without
its extension, relative to ROOT when it holds a ``/`` (else matched in any folder), with the
fields ``{id}`` (the name), ``{start}`` / ``{end}`` (seconds; integers when whole),
``{start_ms}`` / ``{end_ms}``, ``{label}`` and ``{split}``; format specs work
(``{id}_{start:06d}``, ``clips/{id:.2}/{id}``). A pattern using a time field names pre-cut
clips; one without names full-length videos. Several matches: the first in path order.
"""

from __future__ import annotations

import os
import posixpath
import re
from collections import defaultdict
from dataclasses import dataclass

import fsspec

from avbase.errors import AvfusionError
from avbase.shardformat import is_url
from preprocess.datasets.index import Entry
from preprocess.inputs import scan_folder

VIDEO_SUFFIXES = (
    ".mp4",
    ".mkv",
    ".webm",
    ".mov",
    ".avi",
    ".m4v",
    ".flv",
    ".mpg",
    ".mpeg",
    ".ts",
    ".3gp",
)
TIME_FIELDS = ("start", "end", "start_ms", "end_ms")
_NUMBER = r"\d+(?:\.\d+)?"
_TWO_TIMES = re.compile(rf"(.+)_({_NUMBER})_({_NUMBER})")
_ONE_TIME = re.compile(r"(.+)_(\d+)")


@dataclass(frozen=True)
class Found:
    path: str  # local path or URL
    precut: bool  # the file holds the clip only (else: a full-length video to cut)


class MediaRoot:
    """The files under ``--media`` and the lookups of this module's docstring."""

    def __init__(self, root: str, pattern: str | None = None):
        self.root, self.pattern = root.rstrip("/") or root, pattern
        fs, path = fsspec.core.url_to_fs(self.root)
        try:
            if not fs.isdir(path):
                raise AvfusionError(f"--media {root}: no such folder")
            self.files = set(scan_folder(self.root))
        except OSError as e:
            raise AvfusionError(f"--media {root}: cannot be read ({e})") from None
        self.folders = {posixpath.dirname(rel) for rel in self.files}
        self.stems: dict[str, list[str]] = defaultdict(list)  # file name stem -> paths
        self.rel_stems: dict[str, list[str]] = defaultdict(list)  # relative path stem -> paths
        self.cuts: dict[tuple, list[str]] = defaultdict(list)  # (name, start ms, end ms)
        self.starts: dict[tuple, list[str]] = defaultdict(list)  # (name, start ms)
        for rel in sorted(self.files):
            if rel.lower().endswith(VIDEO_SUFFIXES):
                self._index(rel)

    def find(self, entry: Entry) -> Found | None:
        if self.pattern is not None:
            return self._find_pattern(entry)
        if entry.start is not None:
            ms = _ms(entry.start)
            if entry.end is not None and (hit := self.cuts.get((entry.name, ms, _ms(entry.end)))):
                return Found(self.full(hit[0]), True)
            if hit := self.starts.get((entry.name, ms)):
                return Found(self.full(hit[0]), True)
        hit = self.stems.get(entry.name)
        return Found(self.full(hit[0]), False) if hit else None

    def tried(self, entry: Entry) -> str:
        """The names looked for (for the error line of a missing clip)."""
        if self.pattern is not None:
            return f"{self.pattern}.* (--name-pattern)"
        if entry.start is None:
            return f"{entry.name}.*"
        n, s = entry.name, _number(entry.start)
        cut = [] if entry.end is None else [f"{n}_{s}_{_number(entry.end)}.*"]
        return ", ".join([*cut, f"{n}_{s}.*", f"{n}.*"]) + " (times in s or ms, any padding)"

    def has(self, rel: str) -> bool:
        return rel in self.files

    def has_folder(self, rel: str) -> bool:
        """``rel`` holds a file directly."""
        return rel in self.folders

    def full(self, rel: str) -> str:
        """The path or URL of ``rel`` (as INPUT paths are written: local ones normalised)."""
        if is_url(self.root):
            return f"{self.root}/{rel}"
        return os.path.normpath(os.path.join(self.root, rel))

    def _index(self, rel: str) -> None:
        stem = posixpath.basename(rel).rsplit(".", 1)[0]
        self.stems[stem].append(rel)
        self.rel_stems[rel.rsplit(".", 1)[0]].append(rel)
        if m := _TWO_TIMES.fullmatch(stem):
            self.cuts[(m[1], _ms(float(m[2])), _ms(float(m[3])))].append(rel)
            if m[2].isdigit() and m[3].isdigit():  # also read as milliseconds
                self.cuts[(m[1], int(m[2]), int(m[3]))].append(rel)
        if m := _ONE_TIME.fullmatch(stem):
            self.starts[(m[1], _ms(float(m[2])))].append(rel)

    def _find_pattern(self, entry: Entry) -> Found | None:
        name = format_pattern(self.pattern, entry)
        table = self.rel_stems if "/" in self.pattern else self.stems
        hit = table.get(name)
        return Found(self.full(hit[0]), uses_times(self.pattern)) if hit else None


def format_pattern(pattern: str, entry: Entry) -> str:
    """The file name (no extension) ``pattern`` gives for ``entry``; ``AvfusionError`` naming
    the pattern when it uses an unknown field or a spec the value does not take."""
    fields = {
        "id": entry.name,
        "label": entry.label or "",
        "split": entry.split or "",
        "start": _whole(entry.start),
        "end": _whole(entry.end),
        "start_ms": None if entry.start is None else _ms(entry.start),
        "end_ms": None if entry.end is None else _ms(entry.end),
    }
    try:
        return pattern.format_map(fields)
    except (KeyError, ValueError, TypeError, IndexError) as e:
        raise AvfusionError(
            f"--name-pattern {pattern!r}: cannot name clip {entry.id} ({type(e).__name__}: {e}; "
            f"fields: {', '.join('{' + k + '}' for k in fields)})"
        ) from None


def uses_times(pattern: str) -> bool:
    return any(re.search(r"\{" + f + r"[:!}]", pattern) for f in TIME_FIELDS)


def _ms(seconds: float) -> int:
    return round(seconds * 1000)


def _whole(value: float | None) -> float | int | None:
    return int(value) if value is not None and float(value).is_integer() else value


def _number(value: float) -> str:
    return str(_whole(value))
