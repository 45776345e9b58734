"""A real S3-compatible server for tests and benchmarks: ``rclone serve s3`` on 127.0.0.1.

Buckets are the sub-directories of ``root``. Clients find it through the standard AWS
environment variables (``env``), exactly as users point avfusion at an S3 endpoint.
Used through the session-scoped ``s3_server`` fixture in tests/conftest.py.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

ACCESS_KEY, SECRET_KEY = "avfusion-test-key", "avfusion-test-secret"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def rclone_binary() -> str:
    local = Path(sys.executable).with_name("rclone")
    found = str(local) if local.exists() else shutil.which("rclone")
    if not found:
        raise RuntimeError("rclone not found (make install puts it into .venv/bin)")
    return found


class S3Server:
    """Start with ``with S3Server(root) as s3:``; ``s3.env`` holds the client environment."""

    def __init__(self, root: Path, start_timeout: float = 30.0, dir_cache_time: str = "100ms"):
        self.root, self.start_timeout, self.dir_cache_time = (
            Path(root),
            start_timeout,
            dir_cache_time,
        )
        self.proc: subprocess.Popen | None = None
        self.endpoint = ""

    @property
    def env(self) -> dict[str, str]:
        return {
            "AWS_ENDPOINT_URL": self.endpoint,
            "AWS_ACCESS_KEY_ID": ACCESS_KEY,
            "AWS_SECRET_ACCESS_KEY": SECRET_KEY,
            "AWS_DEFAULT_REGION": "us-east-1",
        }

    def make_bucket(self, name: str) -> str:
        (self.root / name).mkdir(parents=True, exist_ok=True)
        return f"s3://{name}"

    def start(self) -> None:
        for _ in range(3):  # a port taken between probe and bind: retry
            port = free_port()
            self.endpoint = f"http://127.0.0.1:{port}"
            self.proc = subprocess.Popen(
                [
                    rclone_binary(),
                    "serve",
                    "s3",
                    "--addr",
                    f"127.0.0.1:{port}",
                    "--auth-key",
                    f"{ACCESS_KEY},{SECRET_KEY}",
                    "--log-level",
                    "ERROR",
                    # Tests write buckets straight into root, so listings must not be served
                    # from the VFS directory cache (5 min by default: a file made after a first
                    # listing stays invisible). NOTE: not 0s, with which rclone 1.75 busy-loops
                    # at ~75 % of a core once anything was listed. Benchmarks whose data is in
                    # place before the start pass rclone's default (5m): re-listing costs time.
                    "--dir-cache-time",
                    self.dir_cache_time,
                    "--config",
                    os.devnull,
                    str(self.root),
                ],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.PIPE,
            )
            if self._wait_ready():
                return
            self.stop()
        raise RuntimeError(
            f"rclone serve s3 did not start on 127.0.0.1 within {self.start_timeout} s"
        )

    def _wait_ready(self) -> bool:
        deadline = time.monotonic() + self.start_timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                return False
            try:
                urllib.request.urlopen(self.endpoint + "/", timeout=1)
                return True
            except urllib.error.HTTPError:  # answering (403 without credentials) is ready
                return True
            except OSError:
                time.sleep(0.2)
        return False

    def stop(self) -> None:
        if self.proc is None:
            return
        self.proc.terminate()
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        if self.proc.stderr:
            self.proc.stderr.close()
        self.proc = None

    def __enter__(self) -> S3Server:
        self.root.mkdir(parents=True, exist_ok=True)
        self.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop()
