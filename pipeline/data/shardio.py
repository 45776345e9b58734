"""Shard-set I/O: the manifest, shards from a directory or ``s3://``, retries, node-local cache.

- Remote shards go through fsspec/s3fs; every :class:`ShardStore` is built inside the process
  that reads and owns its client (s3fs is not fork-safe: each loader worker has its own).
  Endpoint and credentials come from the standard AWS settings (``AWS_ENDPOINT_URL``, ...).
- Network time is bounded: every S3 call has a connect and a read timeout
  (``data.s3_connect_timeout``/``s3_read_timeout``) and is attempted once by botocore and s3fs;
  the retries are ours. Transient failures (network, 5xx, timeouts — anything but "not found",
  "permission denied" and a malformed tar) are retried with exponential backoff (0.5 s doubling,
  at most 8 s); a read that fails part-way re-opens the shard and skips the samples already
  delivered. The retry budget is ``data.s3_retries`` attempts within ``data.s3_retry_seconds``
  (60 s) of failing; then a :class:`ShardReadError` names the shard and the endpoint. A stalled
  endpoint costs up to about three timeouts per attempt (s3fs asks for the object's size first);
  reading the manifest, a warning line names the endpoint after a few seconds of waiting.
- The optional cache downloads whole remote shards to a node-local directory (temp name +
  rename, so concurrent workers never see partial files), named by the manifest's sha256, and
  evicts least-recently-used shards beyond the size limit. A download whose sha256 differs from
  the manifest is not cached; the shard is then streamed as it is (the tar reader counts what is
  corrupt), exactly as without a cache.
"""

from __future__ import annotations

import contextlib
import logging
import os
import time
from collections.abc import Collection, Iterator, Sequence
from pathlib import Path
from typing import BinaryIO

from avbase.endpoint import endpoint, waiting_for
from avbase.errors import AvfusionError
from avbase.shardformat import (
    MANIFEST,
    CorruptShard,
    FormatError,
    HashingFile,
    is_url,
    parse_manifest,
    tar_samples,
)
from avbase.urls import refuse_credentials

log = logging.getLogger(__name__)

PERMANENT = (FileNotFoundError, PermissionError, IsADirectoryError, NotADirectoryError)
BLOCK_SIZE = 8 << 20  # remote read-ahead per open shard
S3_TIMEOUTS = (5.0, 8.0)  # connect, read (s); DataConfig.s3_*_timeout
MAX_BACKOFF = 8.0  # s, between retries


class ShardReadError(AvfusionError):
    """A shard could not be read (permanent error, or transient errors beyond the retry budget)."""


def join(root: str, name: str) -> str:
    return f"{root.rstrip('/')}/{name}" if is_url(root) else os.path.join(root, name)


def filesystem(url: str, timeouts: tuple[float, float] | None = None):
    """A new fsspec client for ``url``'s protocol — never shared across processes or stores.
    S3: (connect, read) ``timeouts`` in seconds (default ``S3_TIMEOUTS``), one attempt per call
    (retries are ours)."""
    import fsspec

    timeouts = timeouts or S3_TIMEOUTS
    protocol = refuse_credentials(url).split("://", 1)[0]
    if protocol not in ("s3", "s3a"):
        return fsspec.filesystem(protocol, skip_instance_cache=True)
    fs = fsspec.filesystem(
        protocol,
        skip_instance_cache=True,
        config_kwargs={
            "connect_timeout": timeouts[0],
            "read_timeout": timeouts[1],
            "retries": {"max_attempts": 1},
        },
    )
    fs.retries = 1  # s3fs's own retry loop (5 by default) multiplies the time
    return fs


def open_url(url: str, fs=None) -> BinaryIO:
    if is_url(url):
        return (fs or filesystem(url)).open(url, "rb", block_size=BLOCK_SIZE)
    return open(url, "rb", buffering=1 << 20)


def read_manifest(root: str) -> dict:
    """Load and check ``root/manifest.json``; FormatError (a ValueError) with one clear line."""
    url = join(refuse_credentials(root), MANIFEST)
    waiting = f"one try, {S3_TIMEOUTS[0]:g} s to connect and {S3_TIMEOUTS[1]:g} s for each answer"
    try:
        with (
            waiting_for(url, waiting) if is_url(url) else contextlib.nullcontext(),
            open_url(url) as f,
        ):
            data = f.read()
    except FileNotFoundError:
        raise FormatError(
            f"{url}: not found (not a shard set, or still being built: "
            "manifest.json is written last)"
        ) from None
    except Exception as e:  # network: timeouts, refused, 5xx
        raise FormatError(f"{url}: cannot be read from {endpoint()}: {e}") from None
    manifest = parse_manifest(data, url)
    if not manifest["shards"]:
        raise FormatError(f"{url}: the shard set holds no samples")
    return manifest


class ShardCache:
    """Node-local copies of remote shards, LRU-evicted beyond ``limit_bytes``."""

    def __init__(self, directory: str, limit_bytes: int):
        self.dir = Path(directory)
        self.limit = limit_bytes
        self.dir.mkdir(parents=True, exist_ok=True)

    def open(self, url: str, shard: dict, fs) -> BinaryIO | None:
        """The local copy of ``shard`` opened for reading (downloaded on a miss), or None when it
        cannot be cached. An open copy stays readable even if another worker evicts it."""
        digest = shard.get("sha256")
        if not digest or shard.get("bytes", 0) > self.limit:
            return None
        path = self.dir / f"{digest[:32]}-{shard['name']}"
        try:
            f = open(path, "rb", buffering=1 << 20)
            os.utime(path)  # LRU: mark as recently used
            return f
        except FileNotFoundError:  # a miss, or evicted just now
            pass
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        try:
            with open_url(url, fs) as f, open(tmp, "wb") as dst:
                src = HashingFile(f)
                while chunk := src.read(BLOCK_SIZE):
                    dst.write(chunk)
            if src.sha.hexdigest() != digest:
                log.warning("%s: sha256 differs from the manifest; streaming it uncached", url)
                return None
            f = open(tmp, "rb", buffering=1 << 20)
            os.replace(tmp, path)
        finally:
            tmp.unlink(missing_ok=True)
        self._evict(keep=path)
        return f

    def _evict(self, keep: Path) -> None:
        files = []
        for p in self.dir.glob("*.tar"):
            try:
                st = p.stat()
            except FileNotFoundError:  # evicted by another worker
                continue
            files.append((st.st_mtime, st.st_size, p))
        total = sum(size for _, size, _ in files)
        for _, size, p in sorted(files):
            if total <= self.limit:
                break
            if p != keep:
                p.unlink(missing_ok=True)  # open readers keep their file
                total -= size


class ShardStore:
    """Reads samples of the shards of one set or of several (a mixture: each shard from its own
    set's root, local or remote), with retries and the optional cache.

    Create it in the process that reads (each loader worker builds its own): a remote store
    holds its own fsspec/s3fs client per protocol.
    """

    def __init__(
        self,
        root: str | Sequence[str],  # the set's root, or the root of each shard
        shards: list[dict],
        *,
        retries: int = 5,
        backoff: float = 0.5,
        cache_dir: str | None = None,
        cache_limit_gb: float = 50.0,
        timeouts: tuple[float, float] = S3_TIMEOUTS,
        budget: float = 60.0,
    ):
        self.roots = [root] * len(shards) if isinstance(root, str) else list(root)
        self.shards, self.retries, self.backoff, self.budget = shards, retries, backoff, budget
        self.clients = {  # protocol → client
            r.split("://", 1)[0]: filesystem(r, timeouts) for r in set(self.roots) if is_url(r)
        }
        self.cache = (
            ShardCache(cache_dir, int(cache_limit_gb * 2**30))
            if cache_dir and self.clients
            else None
        )

    def url(self, index: int) -> str:
        return join(self.roots[index], self.shards[index]["name"])

    def _fs(self, index: int):
        """The client of shard ``index``'s set (None: a local set)."""
        return self.clients.get(self.roots[index].split("://", 1)[0])

    def _open(self, index: int) -> BinaryIO:
        url, fs = self.url(index), self._fs(index)
        cached = self.cache.open(url, self.shards[index], fs) if self.cache and fs else None
        return cached if cached is not None else open_url(url, fs)

    def samples(self, index: int, wanted: Collection[int]) -> Iterator[tuple[int, dict]]:
        """Yield (sample index, raw sample) for the ``wanted`` samples of shard ``index``, in tar
        order. Raises CorruptShard (prefixed with the URL) or ShardReadError."""
        url, attempt, last = self.url(index), 0, max(wanted)
        remaining = set(wanted)  # a retry skips what was delivered
        since = time.monotonic()  # start of the current failing stretch
        while True:
            try:
                with self._open(index) as f:
                    for i, sample in tar_samples(f, remaining.__contains__, last):
                        yield i, sample
                        remaining.discard(i)
                        attempt, since = 0, time.monotonic()  # progress: a fresh budget
                return
            except CorruptShard as e:
                raise CorruptShard(f"{url}: {e}") from None
            except PERMANENT as e:
                raise ShardReadError(f"{url}: {e.strerror or e}") from e
            except Exception as e:  # transient: retry with backoff
                attempt += 1
                delay, spent = (
                    min(self.backoff * 2 ** (attempt - 1), MAX_BACKOFF),
                    time.monotonic() - since,
                )
                if attempt > self.retries or spent + delay > self.budget:
                    where = f" at {endpoint()}" if self._fs(index) is not None else ""
                    raise ShardReadError(
                        f"{url}: still failing after {attempt} attempts in {spent:.0f} s "
                        f"(data.s3_retries={self.retries}, data.s3_retry_seconds={self.budget:g})"
                        f"{where}: {e!r}"
                    ) from e
                log.warning("%s: %r; retry %d/%d in %.1fs", url, e, attempt, self.retries, delay)
                time.sleep(delay)
