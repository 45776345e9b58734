"""Shard-set format v1 — the one contract between the builder, its tools and the loader.

Everything that reads or writes a shard set goes through here (docs/FORMAT.md): the names and
constants, the manifest check, the sha256 pass-through wrapper and the tar reader (the feature
presets are in :mod:`avbase.features`, the members' codecs in :mod:`avbase.members`). ``shards build/verify/merge/inspect`` and the training
loader therefore group a tar identically, so a set that verifies is a set the loader reads.
Pure Python and stdlib: building shards never imports the model, torch or webdataset.

Tar reading is webdataset's: members are grouped by ``base_plus_ext`` (the key is the path up to
the first dot of the file *name*; consecutive members with one key form a sample), extensions
are lower-cased, header checksums are checked, ustar/GNU/pax names and GNU base-256 sizes are
handled; anything else malformed raises :class:`CorruptShard`. Samples are numbered in tar
order and unwanted ones are skipped with ``seek`` (no bytes copied).
NOTE: webdataset's ``tar_file_iterator`` (stdlib ``tarfile`` in stream mode) costs ≈ 0.9 ms per
12-member sample — more than decoding the sample — and ``tarfile`` silently ends a stream at a
damaged header; so the headers are parsed here.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Callable, Iterator
from typing import IO, BinaryIO

from avbase.errors import AvfusionError

FORMAT_NAME = "avfusion-shards"
FORMAT_VERSION = 1

MANIFEST = "manifest.json"  # written last: its presence marks a complete set
ERRORS = "errors.jsonl"  # one line per failed input {source, stage, error}
SHARD_NAME = "shard-{index:06d}.tar"
PROGRESS_DIR = ".progress"  # resume records of an unfinished build; removed when complete

Sample = tuple[str, list[tuple[str, bytes]]]  # key, [(extension, bytes)] in tar order


class FormatError(AvfusionError, ValueError):
    """A manifest or shard set that does not follow this format (message names the file)."""


class CorruptShard(AvfusionError):
    """The tar stream is malformed or ends early (message says where)."""


def shard_name(index: int) -> str:
    return SHARD_NAME.format(index=index)


def progress_record(index: int) -> str:
    """Completion record of shard ``index``: written right after its tar, before the next one."""
    return f"{PROGRESS_DIR}/{shard_name(index)}.json"


def is_url(path: str) -> bool:
    """A URL (``s3://…``, ``file://…``) rather than a local path."""
    return "://" in path


# --------------------------------------------------------------------------------------------
# Manifest and checksums
# --------------------------------------------------------------------------------------------


def parse_manifest(data: bytes, where: str) -> dict:
    """``manifest.json`` bytes → the checked manifest; :class:`FormatError` naming ``where``."""
    try:
        manifest = json.loads(data)
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise FormatError(f"{where}: not valid JSON ({e})") from None
    if not isinstance(manifest, dict) or (
        manifest.get("format"),
        manifest.get("format_version"),
    ) != (FORMAT_NAME, FORMAT_VERSION):
        got = (
            manifest
            if not isinstance(manifest, dict)
            else (f"{manifest.get('format')!r} version {manifest.get('format_version')!r}")
        )
        raise FormatError(
            f"{where}: expected format {FORMAT_NAME!r} version {FORMAT_VERSION}, got {got}"
        )
    shards = manifest.get("shards")
    if not isinstance(shards, list) or not all(
        isinstance(s, dict)
        and isinstance(s.get("name"), str)
        and isinstance(s.get("num_samples"), int)
        and s["num_samples"] >= 0
        for s in shards
    ):
        raise FormatError(f"{where}: 'shards' must be a list of {{name, num_samples, ...}}")
    if sum(s["num_samples"] for s in shards) != manifest.get("num_samples"):
        raise FormatError(
            f"{where}: num_samples {manifest.get('num_samples')} differs from the "
            "sum over its shards"
        )
    return manifest


class HashingFile:
    """Pass-through file wrapper that counts and sha256-hashes every byte written or read.

    Not seekable, so the tar reader reads (and hashes) what it skips.
    """

    def __init__(self, f: IO[bytes]):
        self.f, self.sha, self.bytes = f, hashlib.sha256(), 0

    def _count(self, data) -> None:
        self.sha.update(data)
        self.bytes += len(data)

    def write(self, data: bytes) -> int:
        self._count(data)
        return self.f.write(data)

    def read(self, n: int = -1) -> bytes:
        data = self.f.read(n)
        self._count(data)
        return data

    def readinto(self, buf: bytearray) -> int:
        got = self.f.readinto(buf) or 0
        self._count(memoryview(buf)[:got])
        return got

    def tell(self) -> int:
        return self.bytes

    def seekable(self) -> bool:
        return False

    def drain(self) -> None:
        """Read (and hash) the rest of the stream."""
        while self.read(1 << 20):
            pass


# --------------------------------------------------------------------------------------------
# Tar reader
# --------------------------------------------------------------------------------------------

BLOCK = 512


# webdataset's grouping rule: key = path up to the first dot after the last "/" (greedily).
_KEY_EXT = re.compile(r"^((?:.*/|)[^.]+)[.]([^/]*)$")


def base_plus_ext(path: str) -> tuple[str | None, str | None]:
    """``dir/key.ext.more`` → (``dir/key``, ``ext.more``); (None, None) when it has no such split."""
    match = _KEY_EXT.match(path)
    return (match.group(1), match.group(2)) if match else (None, None)


def _read_exact(f: BinaryIO, n: int) -> bytearray:
    buf = bytearray(n)
    got = f.readinto(buf)
    if got != n:
        raise CorruptShard(f"truncated: expected {n} bytes, got {got or 0}")
    return buf


def _skip(f: BinaryIO, n: int) -> None:
    if n and f.seekable():
        f.seek(n, 1)
    elif n:
        _read_exact(f, n)


def _octal(field: bytes | bytearray) -> int:
    if field[0] & 0x80:  # GNU base-256 (sizes ≥ 8 GiB)
        return int.from_bytes(bytes([field[0] & 0x7F]) + bytes(field[1:]), "big")
    text = bytes(field).split(b"\0", 1)[0].strip()
    try:
        return int(text, 8) if text else 0
    except ValueError:
        raise CorruptShard(f"bad header number {text[:20]!r}") from None


def _pax_path(data: bytearray) -> str | None:
    """The ``path`` record of a pax extended header, if any (records: "LEN key=value\\n")."""
    pos = 0
    while pos < len(data):
        space = data.index(b" ", pos)
        length = int(data[pos:space])
        key, _, value = bytes(data[space + 1 : pos + length - 1]).partition(b"=")
        if key == b"path":
            return value.decode("utf-8")
        pos += length
    return None


def tar_members(f: BinaryIO) -> Iterator[tuple[str, int]]:
    """Yield (name, size) of each regular file; the caller reads or skips ``size`` bytes (+pad)."""
    long_name = None
    while True:
        hdr = _read_exact(f, BLOCK)  # EOF before the end marker: truncated
        if not any(hdr):
            return  # end-of-archive marker
        if _octal(hdr[148:156]) != sum(hdr[:148]) + 256 + sum(hdr[156:]):
            raise CorruptShard("header checksum mismatch")
        size, kind = _octal(hdr[124:136]), hdr[156:157]
        padded = -size % BLOCK
        if kind in (b"L", b"x"):  # GNU long name / pax header
            data = _read_exact(f, size + padded)[:size]
            long_name = data.rstrip(b"\0").decode("utf-8") if kind == b"L" else _pax_path(data)
            continue
        name = long_name or bytes(hdr[:100]).split(b"\0", 1)[0].decode("utf-8")
        if hdr[257:263] == b"ustar\x00" and hdr[345] and not long_name:  # POSIX prefix field
            name = bytes(hdr[345:500]).split(b"\0", 1)[0].decode("utf-8") + "/" + name
        long_name = None
        if kind in (b"0", b"\0"):
            yield name, size
            _skip(f, padded)
        else:
            _skip(f, size + padded)


def tar_samples(
    f: BinaryIO, wanted: Callable[[int], bool], last: int | None = None
) -> Iterator[tuple[int, dict]]:
    """Yield (index, sample) for samples with ``wanted(index)``; stop after sample ``last``.

    A sample is ``{"__key__": key, ext: bytearray, ...}`` (extensions lower-cased, tar order).
    """
    index, key, sample = -1, None, None
    for name, size in tar_members(f):
        base, ext = base_plus_ext(name)
        if base is None:
            _skip(f, size)
            continue
        if base != key:
            if sample is not None:
                yield index, sample
            if index == last:
                return
            index, key = index + 1, base
            sample = {"__key__": base} if wanted(index) else None
        if sample is None:
            _skip(f, size)
        else:
            sample[ext.lower()] = _read_exact(f, size)
    if sample is not None:
        yield index, sample


def read_samples(f: BinaryIO) -> Iterator[Sample]:
    """Every sample of one tar in order, as the loader groups them: ``(key, [(ext, bytes)])``."""
    for _, sample in tar_samples(f, lambda _: True):
        key = sample.pop("__key__")
        yield key, [(ext, bytes(data)) for ext, data in sample.items()]
