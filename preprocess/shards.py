"""Shard-set writing: deterministic tars, the manifest and errors files (reading: shardformat).

Tars are byte-reproducible: members in a fixed order with zeroed owner, mode 0444 and
mtime 0. ``sha256`` and size are computed while writing (no second read, also on S3).
"""

from __future__ import annotations

import json
import tarfile
from datetime import UTC, datetime

from avbase import shardformat as fmt
from preprocess.storage import Store, write_failed


class ShardWriter:
    """Writes ``shard-NNNNNN.tar`` atomically; ``close()`` returns its manifest entry."""

    def __init__(self, store: Store, index: int):
        self.name = fmt.shard_name(index)
        self.url = f"{store.url.rstrip('/')}/{self.name}"
        self._ctx = store.open_atomic(self.name)
        self._out = fmt.HashingFile(self._ctx.__enter__())
        self._tar = tarfile.open(fileobj=self._out, mode="w", format=tarfile.PAX_FORMAT)
        self.num_samples = 0

    def add(self, sample: fmt.Sample) -> None:
        key, members = sample
        for ext, data in members:
            info = tarfile.TarInfo(f"{key}.{ext}")
            info.size, info.mtime, info.mode = len(data), 0, 0o444
            info.uid = info.gid = 0
            info.uname = info.gname = ""
            try:
                self._tar.addfile(info, _Reader(data))
            except OSError as e:  # the builder aborts the shard; committed shards are kept
                raise write_failed(self.url, e) from None
        self.num_samples += 1

    def close(self) -> dict:
        try:
            self._tar.close()
        except OSError as e:
            raise write_failed(self.url, e) from None
        self._ctx.__exit__(None, None, None)
        return {
            "name": self.name,
            "num_samples": self.num_samples,
            "bytes": self._out.bytes,
            "sha256": self._out.sha.hexdigest(),
        }

    def abort(self) -> None:
        """Drop the partial shard (temporary file removed, multipart upload aborted)."""
        error = RuntimeError(f"{self.name}: build interrupted")
        self._ctx.__exit__(RuntimeError, error, None)


class _Reader:
    def __init__(self, data: bytes):
        self.data, self.pos = data, 0

    def read(self, n: int = -1) -> bytes:
        end = len(self.data) if n < 0 else self.pos + n
        chunk, self.pos = self.data[self.pos : end], min(end, len(self.data))
        return chunk


def write_errors(store: Store, errors: list[dict]) -> None:
    store.write_bytes(fmt.ERRORS, "".join(json.dumps(e) + "\n" for e in errors).encode())


def read_errors(store: Store) -> list[dict]:
    if not store.exists(fmt.ERRORS):
        return []
    return [json.loads(line) for line in store.read_bytes(fmt.ERRORS).decode().splitlines() if line]


def make_manifest(
    preset: dict, shards: list[dict], num_failed: int, labels: list[str], config: dict
) -> dict:
    from importlib.metadata import version

    return {
        "format": fmt.FORMAT_NAME,
        "format_version": fmt.FORMAT_VERSION,
        "preset": preset,
        "num_samples": sum(s["num_samples"] for s in shards),
        "shards": shards,
        "num_failed": num_failed,
        "labels": labels,
        "created_by": {
            "version": version("avfusion"),
            "config": config,
            "created": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        },
    }


def write_manifest(store: Store, manifest: dict) -> None:
    """Written last: its presence marks a complete set."""
    store.write_bytes(fmt.MANIFEST, (json.dumps(manifest, indent=1) + "\n").encode())


def read_manifest(store: Store) -> dict:
    """The checked manifest of a complete set; :class:`FormatError` naming what is wrong."""
    try:
        data = store.read_bytes(fmt.MANIFEST)
    except FileNotFoundError:
        raise fmt.FormatError(
            f"{store.url}: no {fmt.MANIFEST} (not a shard set, "
            f"or an unfinished build: use --resume)"
        ) from None
    except OSError as e:
        raise fmt.FormatError(f"{store.url}/{fmt.MANIFEST}: unreadable ({e})") from None
    return fmt.parse_manifest(data, f"{store.url}/{fmt.MANIFEST}")
