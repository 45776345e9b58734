"""Process helpers of the tests: the environment and command lines of the CPU DeepSpeed jobs they
start (the corpus, MLflow server and free-port helpers are re-exported from their modules)."""

from __future__ import annotations

import os
import sys
from pathlib import Path

from tests.support.corpus import AVFUSION, synth_shards  # noqa: F401 — re-exported for the pipeline tests
from tests.support.mlflowserver import start_mlflow_server, stop  # noqa: F401 — re-exported for the pipeline tests
from tests.support.s3server import free_port  # noqa: F401 — re-exported for the pipeline tests

REPO = Path(__file__).resolve().parents[2]


def cpu_env() -> dict:
    """The environment of a CPU DeepSpeed/torchrun job started by a test."""
    return {**os.environ, "DS_ACCELERATOR": "cpu", "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}


def deepspeed_module(module: str, *args: str, launcher: tuple[str, ...] = ()) -> list[str]:
    """``deepspeed [launcher args] --module MODULE ARGS`` (default: 2 local ranks, a free port)."""
    launcher = launcher or ("--num_gpus", "2", "--master_port", str(free_port()))
    return [str(Path(sys.executable).with_name("deepspeed")), *launcher, "--module", module, *args]
