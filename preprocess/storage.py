"""A shard-set location — local directory or any fsspec URL (``s3://bucket/prefix``).

Writes are atomic: locally a temporary name in the same directory, fsync, then rename; on
object stores the object appears only when its upload completes (multipart uploads are aborted
on error). S3 endpoint and credentials come from the standard AWS environment variables
(``AWS_ENDPOINT_URL``, ``AWS_ACCESS_KEY_ID``, ...), read by botocore. Network time is bounded:
connect/read timeouts ``AVFUSION_S3_CONNECT_TIMEOUT``/``AVFUSION_S3_READ_TIMEOUT`` (5 s / 10 s)
and botocore's ``standard`` retries with backoff, ``AWS_MAX_ATTEMPTS`` retries (4): a stalled
or refused endpoint fails a call within about a minute; a warning line names the endpoint after
a few seconds of waiting, and a refused one is one error line (:mod:`avbase.endpoint`).
"""

from __future__ import annotations

import functools
import os
import posixpath
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import IO

import fsspec
from fsspec.implementations.local import LocalFileSystem

from avbase.endpoint import s3_call
from avbase.errors import AvfusionError
from avbase.urls import refuse_credentials

TMP_MARK = ".tmp-"


def _remote(method: Callable) -> Callable:
    """A Store method that talks to S3: a stall is reported while it waits, a refused endpoint
    is one error line (local stores: the method as is)."""

    @functools.wraps(method)
    def call(self, *args, **kwargs):
        if self.local:
            return method(self, *args, **kwargs)
        with s3_call(self.url, retry_policy(self.url)):
            return method(self, *args, **kwargs)

    return call


class Store:
    """Files of one shard set, addressed by names relative to its root (``a/b.json``)."""

    def __init__(self, url: str):
        self.url = refuse_credentials(url.rstrip("/") or url)
        self.fs, self.root = url_to_fs(self.url)
        self.local = isinstance(self.fs, LocalFileSystem)

    def path(self, name: str) -> str:
        return posixpath.join(self.root, name) if not self.local else os.path.join(self.root, name)

    @_remote
    def exists(self, name: str) -> bool:
        return self.fs.exists(self.path(name))

    @_remote
    def size(self, name: str) -> int:
        return int(self.fs.size(self.path(name)))

    @_remote
    def read_bytes(self, name: str) -> bytes:
        return self.fs.cat_file(self.path(name))

    def open_read(self, name: str) -> IO[bytes]:
        return self.fs.open(self.path(name), "rb")

    @_remote
    def list(self, prefix: str = "") -> list[str]:
        """Names (relative to the root) of all files under ``prefix``, sorted."""
        base = self.path(prefix) if prefix else self.root
        if not self.fs.exists(base):
            return []
        root = self.root.rstrip("/")
        return sorted(p[len(root) + 1 :] for p in self.fs.find(base))

    @_remote
    def remove(self, name: str) -> None:
        """Delete a file, or a folder with everything under it."""
        if self.exists(name):
            self.fs.rm(self.path(name), recursive=True)

    @contextmanager
    def open_atomic(self, name: str) -> Iterator[IO[bytes]]:
        """Write ``name`` so that readers see either nothing (or the old file) or all of it."""
        final = self.path(name)
        if self.local:
            os.makedirs(os.path.dirname(final) or ".", exist_ok=True)
            tmp = f"{final}{TMP_MARK}{os.getpid()}"
            try:
                with open(tmp, "wb") as f:
                    yield f
                    f.flush()
                    os.fsync(f.fileno())
                os.replace(tmp, final)
            except OSError as e:  # a full disk, a write limit (ulimit -f), a read-only mount
                raise write_failed(final, e) from None
            finally:
                if os.path.exists(tmp):
                    os.remove(tmp)
            return
        f = self.fs.open(final, "wb")
        try:
            yield f
        except BaseException:
            discard = getattr(f, "discard", None)
            if discard is not None:
                discard()
            raise
        f.close()

    def write_bytes(self, name: str, data: bytes) -> None:
        with self.open_atomic(name) as f:
            f.write(data)

    def check_empty(self, hint: str) -> None:
        """``AvfusionError`` (ending with ``hint``) when the root holds any file but leftovers
        of interrupted writes."""
        content = [n for n in self.list() if TMP_MARK not in posixpath.basename(n)]
        if content:
            raise AvfusionError(
                f"{self.url}: not empty ({len(content)} files, e.g. {content[0]}); {hint}"
            )

    def remove_temporaries(self) -> None:
        """Delete leftovers of writes interrupted by a crash (local sets only have them)."""
        for name in self.list():
            if TMP_MARK in posixpath.basename(name):
                self.remove(name)

    @_remote
    def check_writable(self) -> None:
        """Create the root if needed and prove it accepts writes; ``AvfusionError`` otherwise."""
        probe = f".write-test{TMP_MARK}{os.getpid()}"
        try:
            if self.local:
                os.makedirs(self.root, exist_ok=True)
            self.write_bytes(probe, b"")
            self.remove(probe)
        except (OSError, ValueError) as e:
            raise AvfusionError(f"{self.url}: destination is not writable ({_reason(e)})") from None


def url_to_fs(url: str) -> tuple[fsspec.AbstractFileSystem, str]:
    """(filesystem, path) for ``url``; S3 with the timeouts and retries of :func:`s3_options`."""
    fs, root = fsspec.core.url_to_fs(url, **s3_options(url))
    if not isinstance(fs, LocalFileSystem):
        fs.retries = 1  # s3fs's own retry loop (5 tries) would multiply botocore's
    return fs, root


def s3_options(url: str) -> dict:
    """fsspec options for ``url``: for S3 the timeouts and retries of the module docstring."""
    if not url.startswith(("s3://", "s3a://")):
        return {}
    env = os.environ.get
    return {
        "skip_instance_cache": True,  # a client per store: the environment at the time it is made
        "config_kwargs": {
            "connect_timeout": float(env("AVFUSION_S3_CONNECT_TIMEOUT", "5")),
            "read_timeout": float(env("AVFUSION_S3_READ_TIMEOUT", "10")),
            "retries": {"max_attempts": int(env("AWS_MAX_ATTEMPTS", "4")), "mode": "standard"},
        },
    }


def retry_policy(url: str) -> str:
    """:func:`s3_options` in words, for the line that reports a stalled endpoint."""
    c = s3_options(url)["config_kwargs"]
    return (
        f"each try waits {c['connect_timeout']:g} s to connect and {c['read_timeout']:g} s "
        f"for an answer, {c['retries']['max_attempts']} retries"
    )


def write_failed(url: str, e: OSError) -> AvfusionError:
    """The one-line error for a failed write of ``url`` (the old file, if any, is unchanged)."""
    return AvfusionError(f"{url}: write failed ({_reason(e)}); nothing was replaced")


def _reason(e: BaseException) -> str:
    return getattr(e, "strerror", None) or str(e) or type(e).__name__
