"""INPUT arguments → a sorted, de-duplicated list of sources (and labels).

An INPUT is a media file, a directory (scanned recursively), or a ``.txt`` / ``.csv`` list;
each may be local or an fsspec URL (``s3://bucket/key``). Lists hold one path or URL per line
(``.txt``; blank lines and ``#`` comments skipped) or a CSV with a header naming a ``path``
(or ``url``) column and an optional ``label`` column; relative entries are resolved against the
list's own location.
"""

from __future__ import annotations

import csv
import hashlib
import io
import logging
import os
import posixpath
import re
from dataclasses import dataclass

import fsspec

from avbase.endpoint import s3_call
from avbase.errors import AvfusionError
from avbase.shardformat import is_url
from avbase.urls import refuse_credentials
from preprocess.datasets.records import ClipInfo
from preprocess.storage import retry_policy, s3_options, url_to_fs

LIST_SUFFIXES = (".txt", ".csv")
# Side files skipped when scanning directories (lists, metadata, docs next to the videos).
SKIP_SUFFIXES = LIST_SUFFIXES + (".json", ".jsonl", ".md")
log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Source:
    path: str  # as given / discovered: local path or URL
    label: str | None = None
    masks: str | None = None  # folder of per-second mask PNGs (CSV ``masks`` column)
    clip: ClipInfo | None = None  # a clip of a dataset index (preprocess/datasets)

    @property
    def name(self) -> str:
        """Unique in a build: the dataset clip's id, else the path."""
        return self.clip.id if self.clip else self.path


def collect_sources(inputs: list[str]) -> list[Source]:
    """Expand INPUT arguments; sorted by path, duplicates merged. ``AvfusionError`` if unusable."""
    found: dict[str, Source] = {}
    for arg in inputs:
        for src in _expand(arg):
            old = found.setdefault(src.path, src)
            if old.label != src.label and src.label is not None:
                if old.label is not None:
                    raise AvfusionError(
                        f"{src.path}: listed with two labels ({old.label!r} and {src.label!r})"
                    )
                found[src.path] = src
    if not found:
        raise AvfusionError(f"no inputs found in {' '.join(inputs)}")
    return [found[p] for p in sorted(found)]


def label_names(sources: list[Source]) -> list[str]:
    """Sorted label names; ``label_index`` indexes this list."""
    return sorted({s.label for s in sources if s.label is not None})


def select_part(sources: list[Source], index: int, num_parts: int) -> list[Source]:
    """Contiguous block ``index`` of ``num_parts`` of the ordered sources (Indexed Job slice)."""
    n = len(sources)
    return sources[index * n // num_parts : (index + 1) * n // num_parts]


def source_id(path: str) -> str:
    """``<readable stem>-<hash of the path>``: unique per path, no dots (WebDataset keys)."""
    stem = posixpath.basename(path.split("?", 1)[0].rstrip("/")).rsplit(".", 1)[
        0
    ]  # no query: no signatures
    stem = re.sub(r"[^A-Za-z0-9-]+", "-", stem).strip("-")[:48] or "src"
    return f"{stem}-{hashlib.sha1(path.encode()).hexdigest()[:10]}"


def _expand(arg: str) -> list[Source]:
    if not s3_options(arg):
        return _expand_in(arg)
    with s3_call(f"input {arg}", retry_policy(arg)):  # S3: a stall reported, refusal one line
        return _expand_in(arg)


def _expand_in(arg: str) -> list[Source]:
    fs, root = url_to_fs(refuse_credentials(arg))
    try:
        exists, isdir = fs.exists(root), fs.isdir(root)
    except OSError as e:
        raise AvfusionError(f"input {arg}: cannot be read ({e})") from None
    if not exists:
        raise AvfusionError(f"input {arg}: no such file or directory")
    if isdir:
        return [Source(p) for p in _scan(fs, arg, root)]
    if arg.lower().endswith(LIST_SUFFIXES):
        return _read_list(arg, fs.cat_file(root).decode("utf-8-sig"))
    return [Source(_normalise(arg))]


def _scan(fs, arg: str, root: str) -> list[str]:
    if is_url(arg):
        paths = [fs.unstrip_protocol(p) for p in fs.find(root)]
    else:
        paths = _walk(arg)
    return [_normalise(p) for p in paths if _kept(p)]


def scan_folder(root: str) -> list[str]:
    """The files under the folder ``root`` (local or URL) that a scan of an INPUT folder would
    take, as sorted ``/``-separated paths relative to ``root``."""
    if is_url(root):
        fs, path = fsspec.core.url_to_fs(root)
        path = path.rstrip("/")
        found = [p[len(path) :].lstrip("/") for p in fs.find(path)]
    else:
        found = [os.path.relpath(p, root).replace(os.sep, "/") for p in _walk(root)]
    return sorted(p for p in found if _kept(p))


def _kept(path: str) -> bool:
    """Not a hidden file, not a side file (lists, metadata, docs next to the videos)."""
    return not posixpath.basename(path).startswith(".") and not path.lower().endswith(SKIP_SUFFIXES)


def _walk(root: str) -> list[str]:
    """Files under the local folder ``root``, following symlinked folders. A folder already
    scanned (a symlink loop, or a second link to one folder) is skipped, as is an unreadable
    one; each skip is logged once as a warning."""
    seen = {os.path.realpath(root)}
    paths = []
    for folder, subfolders, files in os.walk(root, followlinks=True, onerror=_report_unreadable):
        paths += [os.path.join(folder, f) for f in files]
        kept = []
        for name in sorted(subfolders, key=lambda n: (os.path.islink(os.path.join(folder, n)), n)):
            path = os.path.join(folder, name)
            real = os.path.realpath(path)
            if real in seen:
                log.warning(
                    "%s: symlinked folder skipped: %s is scanned already (a symlink loop "
                    "or a second link to it)",
                    path,
                    real,
                )
            else:
                seen.add(real)
                kept.append(name)
        subfolders[:] = kept  # os.walk descends only into these
    return paths


def _report_unreadable(e: OSError) -> None:
    log.warning("%s: folder skipped: %s", e.filename, e.strerror)


def _read_list(arg: str, text: str) -> list[Source]:
    if arg.lower().endswith(".txt"):
        rows = [(line.strip(), None, None) for line in text.splitlines()]
        rows = [r for r in rows if r[0] and not r[0].startswith("#")]
    else:
        reader = csv.DictReader(io.StringIO(text))
        fields = [f.strip() for f in reader.fieldnames or []]
        col = next((c for c in ("path", "url") if c in fields), None)
        if col is None:
            raise AvfusionError(
                f"{arg}: expected a CSV header with a 'path' column "
                f"(got: {', '.join(fields) or 'nothing'})"
            )
        rows = [
            (
                (r.get(col) or "").strip(),
                (r.get("label") or "").strip() or None,
                (r.get("masks") or "").strip() or None,
            )
            for r in ({k.strip(): v for k, v in r.items() if k} for r in reader)
        ]
        rows = [r for r in rows if r[0]]
    base = posixpath.dirname(arg) if is_url(arg) else os.path.dirname(arg)
    return [
        Source(_resolve(base, r[0]), *r[1:2], *[_resolve(base, m) for m in r[2:] if m])
        for r in rows
    ]


def _resolve(base: str, entry: str) -> str:
    if is_url(entry) or os.path.isabs(entry):
        return _normalise(entry)
    return _normalise(posixpath.join(base, entry) if is_url(base) else os.path.join(base, entry))


def _normalise(path: str) -> str:
    return refuse_credentials(path) if is_url(path) else os.path.normpath(path)
