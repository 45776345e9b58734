"""Shard-set I/O: deterministic tar writing, sample reading, manifest and errors files.

Tars are byte-reproducible: members in a fixed order with zeroed owner, mode 0444 and
mtime 0. ``sha256`` and size are computed while writing (no second read, also on S3).
"""
from __future__ import annotations

import hashlib
import json
import tarfile
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import IO

from preprocess import format as fmt
from preprocess.options import Sample
from preprocess.storage import Store


class _Hashing:
    """Write-only file wrapper that counts and hashes what passes through."""

    def __init__(self, f: IO[bytes]):
        self.f, self.sha, self.bytes = f, hashlib.sha256(), 0

    def write(self, data: bytes) -> int:
        self.sha.update(data)
        self.bytes += len(data)
        return self.f.write(data)

    def tell(self) -> int:
        return self.bytes


class ShardWriter:
    """Writes ``shard-NNNNNN.tar`` atomically; ``close()`` returns its manifest entry."""

    def __init__(self, store: Store, index: int):
        self.name = fmt.shard_name(index)
        self._ctx = store.open_atomic(self.name)
        self._out = _Hashing(self._ctx.__enter__())
        self._tar = tarfile.open(fileobj=self._out, mode="w", format=tarfile.PAX_FORMAT)
        self.num_samples = 0

    def add(self, sample: Sample) -> None:
        key, members = sample
        for ext, data in members:
            info = tarfile.TarInfo(f"{key}.{ext}")
            info.size, info.mtime, info.mode = len(data), 0, 0o444
            info.uid = info.gid = 0
            info.uname = info.gname = ""
            self._tar.addfile(info, _Reader(data))
        self.num_samples += 1

    def close(self) -> dict:
        self._tar.close()
        self._ctx.__exit__(None, None, None)
        return {"name": self.name, "num_samples": self.num_samples, "bytes": self._out.bytes,
                "sha256": self._out.sha.hexdigest()}

    def abort(self) -> None:
        """Drop the partial shard (temporary file removed, multipart upload aborted)."""
        error = RuntimeError(f"{self.name}: build interrupted")
        self._ctx.__exit__(RuntimeError, error, None)


class _Reader:
    def __init__(self, data: bytes):
        self.data, self.pos = data, 0

    def read(self, n: int = -1) -> bytes:
        end = len(self.data) if n < 0 else self.pos + n
        chunk, self.pos = self.data[self.pos:end], min(end, len(self.data))
        return chunk


def read_samples(f: IO[bytes]) -> Iterator[Sample]:
    """Samples of one tar in order (members grouped by key, the part before the first dot)."""
    key, members = None, []
    with tarfile.open(fileobj=f, mode="r|") as tar:
        for info in tar:
            if not info.isfile():
                continue
            k, _, ext = info.name.partition(".")
            if k != key and key is not None:
                yield key, members
                members = []
            key = k
            members.append((ext, tar.extractfile(info).read()))
    if key is not None:
        yield key, members


def write_errors(store: Store, errors: list[dict]) -> None:
    store.write_bytes(fmt.ERRORS, "".join(json.dumps(e) + "\n" for e in errors).encode())


def read_errors(store: Store) -> list[dict]:
    if not store.exists(fmt.ERRORS):
        return []
    return [json.loads(line) for line in store.read_bytes(fmt.ERRORS).decode().splitlines() if line]


def make_manifest(preset: dict, shards: list[dict], num_failed: int, labels: list[str],
                  config: dict) -> dict:
    from importlib.metadata import version
    return {"format": fmt.FORMAT_NAME, "format_version": fmt.FORMAT_VERSION, "preset": preset,
            "num_samples": sum(s["num_samples"] for s in shards), "shards": shards,
            "num_failed": num_failed, "labels": labels,
            "created_by": {"version": version("avfusion"), "config": config,
                           "created": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")}}


def write_manifest(store: Store, manifest: dict) -> None:
    """Written last: its presence marks a complete set."""
    store.write_bytes(fmt.MANIFEST, (json.dumps(manifest, indent=1) + "\n").encode())


def read_manifest(store: Store) -> dict:
    """The manifest of a complete set; ``SystemExit`` naming what is wrong otherwise."""
    try:
        manifest = json.loads(store.read_bytes(fmt.MANIFEST))
    except FileNotFoundError:
        raise SystemExit(f"error: {store.url}: no {fmt.MANIFEST} (not a shard set, "
                         f"or an unfinished build: use --resume)") from None
    except (OSError, ValueError) as e:
        raise SystemExit(f"error: {store.url}/{fmt.MANIFEST}: unreadable ({e})") from None
    if manifest.get("format") != fmt.FORMAT_NAME or manifest.get("format_version") != fmt.FORMAT_VERSION:
        raise SystemExit(f"error: {store.url}/{fmt.MANIFEST}: expected format {fmt.FORMAT_NAME!r} "
                         f"version {fmt.FORMAT_VERSION}, got {manifest.get('format')!r} "
                         f"version {manifest.get('format_version')!r}")
    return manifest
