"""A job's output folder and MLflow run: what every task writes besides its checkpoints.

``OUTPUT_DIR/config.yaml`` (the resolved config, credentials redacted), ``metrics.jsonl`` (one
line per logged step, main rank) and the MLflow run (:class:`pipeline.tracking.tracker.Tracker`,
whose journal keeps what the server has not taken). The tracker starts once the first engine of
the job knows, from its checkpoint, which run to continue.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import yaml

from pipeline.engine.distributed import DistInfo
from pipeline.tracking.tracker import Tracker

log = logging.getLogger("avfusion.run")


class RunFolder:
    """``OUTPUT_DIR`` of one job (pretraining or an evaluation); rank 0 writes, others no-op."""

    def __init__(self, out: str | Path, config: dict, tracking, info: DistInfo, tags: dict):
        self.out, self.config, self.tracking = Path(out), config, tracking
        self.info, self.tags = info, tags
        self.tracker: Tracker | None = None

    @property
    def run_id(self) -> str | None:
        return self.tracker.run_id if self.tracker else None

    def start(self, run_id: str | None, derived: dict, prefix: str = "derived") -> None:
        """Create the tracker (continuing ``run_id``) on first call; log ``derived`` values."""
        if self.tracker is None:
            self.tracker = Tracker.from_config(
                self.tracking, self.info.is_main, run_id, self.out, self.tags
            )
            if self.info.is_main:
                self.out.mkdir(parents=True, exist_ok=True)
                (self.out / "config.yaml").write_text(yaml.safe_dump(self.config, sort_keys=False))
                self.tracker.log_params(self.config)
                self.tracker.log_artifact(self.out / "config.yaml")
        self.tracker.log_params({prefix: derived})

    def log(self, metrics: dict, step: int, line: str | None = None) -> None:
        """Metrics at ``step`` to MLflow and ``metrics.jsonl`` (main rank); ``line`` to the log."""
        if not self.info.is_main:
            return
        flat = {k: v for k, v in metrics.items() if isinstance(v, int | float)}
        if flat:
            self.tracker.log_metrics(flat, step=step)
        with open(self.out / "metrics.jsonl", "a") as f:
            f.write(json.dumps({"step": step, **metrics}) + "\n")
        if line:
            log.info("%s", line)

    def artifact(self, path: Path, artifact_path: str | None = None) -> None:
        if self.tracker is not None:
            self.tracker.log_artifact(path, artifact_path)

    def close(self, status: str = "FINISHED") -> None:
        if self.tracker is not None:
            self.tracker.close(status)
