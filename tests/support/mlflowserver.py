"""A real `mlflow server` on 127.0.0.1 (for benchmarks and tests)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path


def start_mlflow_server(root: Path, port: int) -> subprocess.Popen:
    """`mlflow server` on 127.0.0.1:port with a sqlite store under ``root``; waits until its API answers
    (/health answers earlier, while the first API requests can still be dropped)."""
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "mlflow",
            "server",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--backend-store-uri",
            f"sqlite:///{root}/mlflow.db",
            "--default-artifact-root",
            str(root / "artifacts"),
            "--workers",
            "1",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    deadline = time.time() + 300  # start-up alone takes minutes on a loaded 2-core machine
    while time.time() < deadline:
        try:
            urllib.request.urlopen(
                f"http://127.0.0.1:{port}/api/2.0/mlflow/experiments/search?max_results=1",
                timeout=5,
            )
            return proc
        except OSError:
            if proc.poll() is not None:
                raise RuntimeError("mlflow server exited during start-up") from None
            time.sleep(0.5)
    stop(proc)
    raise RuntimeError("mlflow server did not answer within 300 s")


def stop(proc: subprocess.Popen) -> None:
    """Kill a server started in its own session, workers included."""
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    proc.wait()
