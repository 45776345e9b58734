"""MLflow tracking on the main rank, resilient to an unreachable server.

Everything is buffered and sent in batches; when the server is down, training goes on with one
warning, and the buffer (metrics, params, artifacts) is sent once the server answers again.
A resumed run continues the same MLflow run (its id travels in every checkpoint).
"""
from __future__ import annotations

import logging
import os
import time
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit, urlunsplit

from preprocess.urls import redact, redact_tree

log = logging.getLogger("avfusion.tracking")

DEFAULT_URI = "sqlite:///mlruns.db"
RETRY_AFTER_S = 30.0
MAX_BUFFERED = 200_000


def tracking_uri(configured: str | None) -> str:
    return configured or os.environ.get("MLFLOW_TRACKING_URI") or DEFAULT_URI


def split_credentials(uri: str) -> tuple[str, dict[str, str]]:
    """``http://user:pw@host`` → (``http://host``, MLflow's basic-auth variables): MLflow then
    authenticates from the environment, and the links it prints and stores carry no password."""
    parts = urlsplit(uri)
    if parts.scheme not in ("http", "https") or "@" not in parts.netloc:
        return uri, {}
    auth = {"MLFLOW_TRACKING_USERNAME": unquote(parts.username or ""),
            "MLFLOW_TRACKING_PASSWORD": unquote(parts.password or "")}
    return urlunsplit(parts._replace(netloc=parts.netloc.rsplit("@", 1)[1])), auth


def artifact_location(uri: str) -> str | None:
    """New experiments of a sqlite store keep artifacts next to the database (``<db>-artifacts/``),
    not in ``./mlruns`` of the folder training started from; other stores keep their default."""
    if not uri.startswith("sqlite:///"):
        return None
    db = Path(uri.removeprefix("sqlite:///").split("?")[0]).resolve()
    return (db.parent / f"{db.stem}-artifacts").as_uri()


def flatten(tree: dict, prefix: str = "") -> dict[str, str]:
    """``{"a": {"b": 1}}`` → ``{"a.b": "1"}`` (MLflow params are flat strings)."""
    out: dict[str, str] = {}
    for k, v in tree.items():
        if isinstance(v, dict):
            out.update(flatten(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = str(v)
    return out


class Tracker:
    """Buffered MLflow client for one run. Disabled (all no-ops) on non-main ranks."""

    def __init__(self, uri: str | None, experiment: str, run_name: str | None,
                 enabled: bool = True, run_id: str | None = None, system_metrics: bool = True):
        self.enabled = enabled
        self.uri, auth = split_credentials(tracking_uri(uri))
        self.experiment, self.run_name = experiment, run_name
        self.run_id = run_id
        self.resumed = run_id is not None
        self.system_metrics = system_metrics
        self._metrics: list = []
        self._params: dict[str, str] = {}
        self._artifacts: list[tuple[str, str | None]] = []
        self._next_try = 0.0
        self._warned = False
        self._client = None
        self._monitor = None
        self._started = False
        if enabled:
            os.environ.update(auth)
            # Fail fast instead of mlflow's default multi-minute retry loop; we retry ourselves.
            os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "1")
            os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "10")
            os.environ.setdefault("MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR", "1")

    # -- public API ----------------------------------------------------------------------
    def log_params(self, params: dict[str, Any]) -> None:
        if self.enabled and not self.resumed:  # a resumed run keeps its original params
            self._params.update(flatten(redact_tree(params)))
            self.flush()

    def log_metrics(self, metrics: dict[str, float], step: int) -> None:
        if not self.enabled:
            return
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        self._metrics.extend(Metric(k, float(v), now, step) for k, v in metrics.items())
        del self._metrics[:-MAX_BUFFERED]
        self.flush()

    def log_artifact(self, path: str | Path, artifact_path: str | None = None) -> None:
        if self.enabled:
            self._artifacts.append((str(path), artifact_path))
            self.flush()

    def flush(self, force: bool = False) -> bool:
        """Send what is buffered; False (and keep it) while the server is unreachable."""
        if not self.enabled or (not force and time.monotonic() < self._next_try):
            return False
        try:
            self._ensure_run()
            self._send()
        except Exception as e:  # noqa: BLE001 — any tracking failure must not stop training
            self._next_try = time.monotonic() + RETRY_AFTER_S
            if not self._warned:
                log.warning("MLflow at %s unreachable (%s); training continues, logs are buffered",
                            redact(self.uri), redact(str(e).splitlines()[0][:200]))
                self._warned = True
            return False
        if self._warned:
            log.warning("MLflow at %s reachable again; buffered logs sent", redact(self.uri))
            self._warned = False
        return True

    def close(self, status: str = "FINISHED") -> None:
        if not self.enabled:
            return
        if self._monitor is not None:
            self._monitor.finish()
        if self.flush(force=True) and self.run_id:
            self._client.set_terminated(self.run_id, status=status)

    # -- internals -----------------------------------------------------------------------
    def _ensure_run(self) -> None:
        if self._started:
            return
        import mlflow
        from mlflow.tracking import MlflowClient

        mlflow.set_tracking_uri(self.uri)
        self._client = MlflowClient(self.uri)
        if self.run_id is None:
            exp = self._client.get_experiment_by_name(self.experiment)
            exp_id = exp.experiment_id if exp else self._client.create_experiment(
                self.experiment, artifact_location=artifact_location(self.uri))
            self.run_id = self._client.create_run(exp_id, run_name=self.run_name).info.run_id
        else:
            self._client.update_run(self.run_id, status="RUNNING")
        if self.system_metrics:
            from mlflow.system_metrics.system_metrics_monitor import SystemMetricsMonitor

            self._monitor = SystemMetricsMonitor(self.run_id, sampling_interval=10,
                                                 resume_logging=self.resumed, tracking_uri=self.uri)
            self._monitor.start()
        self._started = True

    def _send(self) -> None:
        from mlflow.entities import Param

        params = [Param(k, v[:6000]) for k, v in sorted(self._params.items())]
        for i in range(0, len(params), 100):
            self._client.log_batch(self.run_id, params=params[i:i + 100])
        self._params.clear()
        while self._metrics:
            self._client.log_batch(self.run_id, metrics=self._metrics[:1000])
            del self._metrics[:1000]
        while self._artifacts:
            path, artifact_path = self._artifacts[0]
            self._client.log_artifact(self.run_id, path, artifact_path)
            self._artifacts.pop(0)
