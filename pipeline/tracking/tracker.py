"""MLflow tracking on the main rank that never blocks training and loses nothing.

The training thread only appends records to an in-memory backlog (bounded: past ``BACKLOG_MAX``
records it spills them to the journal itself, a local file append). One background thread does
all MLflow I/O: it moves the backlog to the journal (``output_dir/tracking_pending.jsonl``, see
pipeline/tracking/pending.py), sends the journal and drops what the server confirmed. While the
server is unreachable or hung it retries with backoff; training goes on, and one warning line says
so. ``close()`` waits for the sender only while the server keeps answering (``CLOSE_WAIT_S``);
what is left stays in the journal with a one-line warning, and is sent by the next process on
this ``output_dir`` (resume) or by ``avfusion runs sync OUTPUT_DIR`` — into the same MLflow run,
which is created then if no process ever reached the server.

NOTE: MLflow's own asynchronous logging (``log_batch(..., synchronous=False)``) is not used: it
drops what it fails to send, and it offers no journal to resume from.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit, urlunsplit

from avbase.urls import redact, redact_tree
from pipeline.tracking.pending import PENDING_FILE, Pending, create_run, deliver, first_line

log = logging.getLogger("avfusion.tracking")

DEFAULT_URI = "sqlite:///mlruns.db"
BACKLOG_MAX = 10_000  # records held in memory before the training thread spills them to the journal
RETRY_MIN_S, RETRY_MAX_S = 1.0, 30.0
CLOSE_WAIT_S = 10.0  # close() gives up once the server has not answered for this long
CLIENT_ENV = {
    "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "0",
    "MLFLOW_HTTP_REQUEST_TIMEOUT": "10",
    "MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT": "true",
}


def client_env() -> None:
    """MLflow client settings (unless set): one request try of at most 10 s, not mlflow's
    multi-minute retry loop; no run URLs printed on stdout."""
    for k, v in CLIENT_ENV.items():
        os.environ.setdefault(k, v)


def tracking_uri(configured: str | None) -> str:
    return configured or os.environ.get("MLFLOW_TRACKING_URI") or DEFAULT_URI


def split_credentials(uri: str) -> tuple[str, dict[str, str]]:
    """``http://user:pw@host`` → (``http://host``, MLflow's basic-auth variables): MLflow then
    authenticates from the environment, and the links it prints and stores carry no password."""
    parts = urlsplit(uri)
    if parts.scheme not in ("http", "https") or "@" not in parts.netloc:
        return uri, {}
    auth = {
        "MLFLOW_TRACKING_USERNAME": unquote(parts.username or ""),
        "MLFLOW_TRACKING_PASSWORD": unquote(parts.password or ""),
    }
    return urlunsplit(parts._replace(netloc=parts.netloc.rsplit("@", 1)[1])), auth


def flatten(tree: dict, prefix: str = "") -> dict[str, str]:
    """``{"a": {"b": 1}}`` → ``{"a.b": "1"}`` (MLflow params are flat strings)."""
    out: dict[str, str] = {}
    for k, v in tree.items():
        if isinstance(v, dict):
            out.update(flatten(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = str(v)
    return out


def timed_out(e: BaseException | None) -> bool:
    """The server took the request and never answered (hung), as opposed to refusing it."""
    import requests

    while e is not None:
        if isinstance(e, requests.exceptions.Timeout | TimeoutError):
            return True
        e = e.__cause__ or e.__context__
    return False


class Tracker:
    """Non-blocking MLflow logger for one run. Disabled (all no-ops) on non-main ranks.

    ``run_id`` continues a run (from a checkpoint); otherwise a journal left in ``output_dir``
    names the run to continue, or a new run is created on first contact with the server.
    Without ``output_dir`` the journal lives in memory only.
    """

    def __init__(
        self,
        uri: str | None,
        experiment: str,
        run_name: str | None,
        enabled: bool = True,
        run_id: str | None = None,
        system_metrics: bool = True,
        output_dir: str | Path | None = None,
        tags: dict[str, str] | None = None,
    ):
        self.enabled, self.tags = enabled, tags or {}  # tags: set when the run is created
        self.uri, auth = split_credentials(tracking_uri(uri))
        self.experiment, self.run_name = experiment, run_name
        self.system_metrics = system_metrics
        self.run_id = run_id
        self.resumed = run_id is not None
        if not enabled:
            return
        client_env()  # the sender retries itself
        os.environ.update(
            auth
        )  # basic auth for MLflow from its environment, never in a URI we print
        self._pending = Pending(Path(output_dir) / PENDING_FILE if output_dir is not None else None)
        earlier = self._pending.summary() if self._pending else None
        self.run_id = run_id or self._pending.run.get("run_id")
        self.resumed = self.run_id is not None or earlier is not None
        self._pending.set_run(
            {"uri": self.uri, "experiment": experiment, "run_name": run_name, "run_id": self.run_id}
        )
        if earlier:
            log.warning(
                "%s from an earlier process pending in %s; sending them to MLflow at %s",
                earlier,
                self._pending.path,
                self.uri,
            )
        self._backlog: list[dict] = [{"status": "RUNNING"}] if self.resumed else []
        self._lock = threading.Lock()  # guards the backlog
        self._journal_lock = threading.Lock()  # guards the journal
        self._wake = threading.Event()
        self._closing = self._in_call = self._hung = False
        self._last_answer = time.monotonic()
        self._client = self._monitor = None
        if urlsplit(self.uri).scheme in ("sqlite", "file", ""):
            self._open_local_store()
        self._thread = threading.Thread(
            target=self._send_loop, name="avfusion-tracking", daemon=True
        )
        self._thread.start()

    @classmethod
    def from_config(
        cls,
        tcfg,
        is_main: bool,
        run_id: str | None = None,
        output_dir: str | Path | None = None,
        tags: dict[str, str] | None = None,
    ) -> Tracker:
        """The tracker of a job's ``tracking:`` section (``TrackingConfig``); off on other ranks."""
        return cls(
            tcfg.uri,
            tcfg.experiment,
            tcfg.run_name,
            enabled=is_main and tcfg.enabled,
            run_id=run_id,
            system_metrics=tcfg.system_metrics,
            output_dir=output_dir,
            tags=tags,
        )

    # -- public API (training thread; never blocks on the network) --------------------------
    def log_params(self, params: dict[str, Any]) -> None:
        if self.enabled and not self.resumed:  # a resumed run keeps its original params
            self._put({"params": flatten(redact_tree(params))})

    def log_metrics(self, metrics: dict[str, float], step: int) -> None:
        if self.enabled:
            now = int(time.time() * 1000)
            for k, v in metrics.items():
                self._put({"metric": [k, float(v), now, step]})

    def log_artifact(self, path: str | Path, artifact_path: str | None = None) -> None:
        if self.enabled:
            self._put({"artifact": [str(Path(path).resolve()), artifact_path]})

    def close(self, status: str = "FINISHED") -> None:
        """Mark the run ``status``; wait while the server answers, keep the rest in the journal."""
        if not self.enabled or self._closing:
            return
        self._put({"status": status})
        if (
            not self._in_call
        ):  # the clock starts now, or at the sender's last answer if it is waiting on one
            self._last_answer = time.monotonic()
        self._closing = True
        self._wake.set()
        while (
            self._thread.is_alive()
            and not self._hung
            and time.monotonic() - self._last_answer < CLOSE_WAIT_S
        ):
            self._thread.join(0.05)
        with self._journal_lock:
            self._pending.append(self._take())
            left = self._pending.summary() if self._pending else None
        if left and self._pending.path is not None:
            log.warning(
                "MLflow at %s did not take %s; kept in %s — sent on resume or by "
                "`avfusion runs sync %s`",
                self.uri,
                left,
                self._pending.path,
                self._pending.path.parent,
            )
        elif left:
            log.warning(
                "MLflow at %s did not take %s; lost (no output_dir to keep them in)", self.uri, left
            )

    # -- internals -----------------------------------------------------------------------
    def _put(self, record: dict) -> None:
        with self._lock:
            self._backlog.append(record)
            spill = len(self._backlog) >= BACKLOG_MAX
        if spill:
            with self._journal_lock:
                self._pending.append(self._take())
        self._wake.set()

    def _take(self) -> list[dict]:
        with self._lock:
            batch, self._backlog = self._backlog, []
        return batch

    def _send_loop(self) -> None:
        """Sender thread: journal the backlog, send the journal, back off while the server is away.

        Closing, it makes one last try, unless the server hung on the previous one (it would hang
        again; ``close()`` does not wait for it either).
        """
        retry_at, delay, outage = 0.0, RETRY_MIN_S, False
        while True:
            if not self._closing:  # closing: no waiting, send what is left and end
                self._wake.wait(max(retry_at - time.monotonic(), 0.0) if retry_at else None)
            self._wake.clear()
            with self._journal_lock:
                self._pending.append(self._take())
            if self._closing and (self._hung or not self._pending):
                return
            if not self._pending or (time.monotonic() < retry_at and not self._closing):
                continue
            try:
                self._in_call = True
                self._send_pending()
            except Exception as e:  # noqa: BLE001 — any tracking failure must not stop training
                self._last_answer = time.monotonic()
                if not outage:
                    log.warning(
                        "MLflow at %s unreachable (%s); training continues, logs are kept "
                        "in %s and retried",
                        self.uri,
                        redact(first_line(e)),
                        self._pending.path or "memory",
                    )
                outage, self._hung = True, timed_out(e)
                retry_at, delay = self._last_answer + delay, min(2 * delay, RETRY_MAX_S)
                if self._closing:
                    return
                continue
            finally:
                self._in_call = False
            if outage:
                log.warning("MLflow at %s reachable again; pending logs sent", self.uri)
            retry_at, delay, outage = 0.0, RETRY_MIN_S, False

    def _send_pending(self) -> None:
        records = self._pending.records()
        self._last_answer = time.monotonic()
        self._ensure_run()
        if self._closing and self._monitor is not None:
            self._monitor.finish()
            self._monitor = None
        deliver(self._client, self.run_id, records, answered=self._answered)
        with self._journal_lock:
            self._pending.drop(len(records))

    def _open_local_store(self) -> None:
        """Create or migrate a local store now, before training starts: a process killed while
        MLflow migrates a new sqlite file leaves it unusable (``_alembic_tmp_*`` tables), so
        that window must not overlap training. Local disk only, so this cannot hang on a
        network; a failure is left to the sender, which retries."""
        from mlflow.tracking import MlflowClient

        try:
            client = MlflowClient(self.uri)
            client.search_experiments(max_results=1)
            self._client = client
        except Exception as e:  # noqa: BLE001 - tracking never stops training
            log.warning(
                "MLflow store %s not ready yet (%s); retrying in the background",
                self.uri,
                first_line(e),
            )

    def _answered(self) -> None:
        self._last_answer = time.monotonic()

    def _ensure_run(self) -> None:
        if self._client is None:
            from mlflow.tracking import MlflowClient

            self._client = MlflowClient(self.uri)
        if self.run_id is None:
            self.run_id = create_run(
                self._client, self.uri, self.experiment, self.run_name, self.tags
            )
            with self._journal_lock:
                self._pending.set_run({**self._pending.run, "run_id": self.run_id})
            self._answered()
        if self.system_metrics and self._monitor is None and not self._closing:
            from mlflow.system_metrics.system_metrics_monitor import SystemMetricsMonitor

            self._monitor = SystemMetricsMonitor(
                self.run_id,
                sampling_interval=10,
                resume_logging=self.resumed,
                tracking_uri=self.uri,
            )
            self._monitor.start()
