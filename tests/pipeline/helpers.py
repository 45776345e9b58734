"""Process helpers shared by the pipeline tests (free ports, small corpora and a real `mlflow server`
come from benchmarks/, which uses them too)."""

from __future__ import annotations

from pathlib import Path

from benchmarks.corpus import AVFUSION, synth_shards  # noqa: F401 — re-exported for the pipeline tests
from benchmarks.mlflowserver import start_mlflow_server, stop  # noqa: F401 — re-exported for the pipeline tests
from benchmarks.s3server import free_port  # noqa: F401 — re-exported for the pipeline tests

REPO = Path(__file__).resolve().parents[2]
