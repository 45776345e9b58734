"""Fixtures shared by all test packages."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

from tests.support.s3server import S3Server

# Every process the tests start finds the environment's tools first (deepspeed, rclone, and
# ninja, which JIT-builds DeepSpeed's CPU comm op: a system ninja of another version disagrees
# with the venv's about the build log, and each switch between them rebuilds the op, ≈ 60 s).
os.environ["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"


@pytest.fixture(scope="session")
def s3_server(tmp_path_factory):
    """A real ``rclone serve s3`` process on 127.0.0.1 for the whole session.

    ``s3_server.env`` are the AWS variables clients need; ``s3_server.make_bucket(name)``
    returns ``s3://name``. Set the variables with ``monkeypatch.setenv`` for in-process use.
    """
    with S3Server(tmp_path_factory.mktemp("s3")) as server:
        yield server
