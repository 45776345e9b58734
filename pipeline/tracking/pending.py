"""The tracking journal: what the MLflow server has not confirmed yet, kept next to the run.

``output_dir/tracking_pending.jsonl`` holds one JSON record per line::

    {"run": {"uri": ..., "experiment": ..., "run_name": ..., "run_id": ... or null}}   (the last one wins)
    {"params": {"model.preset": "debug", ...}}
    {"metric": [key, value, timestamp_ms, step]}
    {"artifact": [local_path, artifact_subdir or null]}
    {"status": "RUNNING" | "FINISHED" | "FAILED"}                                      (the last one wins)

Sending a record twice is harmless: MLflow stores a metric with the same key, value, step and
timestamp once, accepts an equal param again, and an artifact overwrites itself. So records
leave the journal only after the server confirmed them, and a crash at any point loses nothing
that reached the journal. ``sync`` sends a journal into its run (creating the run when the
training process never reached the server) — the ``avfusion runs sync OUTPUT_DIR`` command.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Callable
from pathlib import Path

log = logging.getLogger("avfusion.tracking")

PENDING_FILE = "tracking_pending.jsonl"
METRICS_PER_BATCH = 1000
PARAMS_PER_BATCH = 100
MAX_PARAM_CHARS = 6000


class Pending:
    """Append-only journal of undelivered records: the file ``path``, or a list when ``path`` is None."""

    def __init__(self, path: Path | None):
        self.path = path
        self.run: dict = {}
        self._memory: list[dict] = []
        self._warned = False
        if path is not None and path.exists():
            for rec in self._read():
                if "run" in rec:
                    self.run = rec["run"]

    def __bool__(self) -> bool:
        return bool(self.records())

    def records(self) -> list[dict]:
        """The undelivered records in logging order (run headers left out)."""
        return (
            [r for r in self._read() if "run" not in r]
            if self.path is not None
            else list(self._memory)
        )

    def set_run(self, run: dict) -> None:
        """The run the records belong to; recorded in the file once it exists."""
        changed, self.run = run != self.run, dict(run)
        if changed and self.path is not None and self.path.exists():
            self._append([{"run": self.run}])

    def append(self, records: list[dict]) -> None:
        if not records:
            return
        if self.path is None:
            self._memory.extend(records)
        else:
            self._append(records if self.path.exists() else [{"run": self.run}, *records])

    def drop(self, n: int) -> None:
        """Forget the first ``n`` records (delivered); later ones stay."""
        if self.path is None:
            del self._memory[:n]
            return
        rest = self.records()[n:]
        if not rest:
            self.path.unlink(missing_ok=True)
            return
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text("".join(json.dumps(r) + "\n" for r in [{"run": self.run}, *rest]))
        os.replace(tmp, self.path)

    def summary(self) -> str:
        """E.g. ``40 metric values, 1 param set, 2 artifacts``."""
        recs = self.records()
        counts = [(sum(k in r for r in recs), k) for k in ("metric", "params", "artifact")]
        names = {"metric": "metric values", "params": "param sets", "artifact": "artifacts"}
        return ", ".join(f"{n} {names[k]}" for n, k in counts if n) or "a run status"

    def _append(self, records: list[dict]) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.path, "a+b") as f:
            cut = f.tell() > 0 and f.seek(-1, os.SEEK_END) is not None and f.read(1) != b"\n"
            f.write(
                ("\n" if cut else "").encode()
                + "".join(json.dumps(r) + "\n" for r in records).encode()
            )

    def _read(self) -> list[dict]:
        if self.path is None or not self.path.exists():
            return []
        out = []
        for line in self.path.read_text().splitlines():
            try:
                out.append(json.loads(line))
            except json.JSONDecodeError:  # a line cut by a crash mid-write: the rest is intact
                if not self._warned:
                    log.warning("%s: skipping a line cut by a crash", self.path)
                self._warned = True
        return out


def is_permanent(e: Exception) -> bool:
    """The server answered and refused (4xx: e.g. a changed param, a deleted run), or the file is gone."""
    from mlflow.exceptions import MlflowException

    if isinstance(e, MlflowException):
        return 400 <= e.get_http_status_code() < 500
    return isinstance(e, FileNotFoundError)


def artifact_location(uri: str) -> str | None:
    """New experiments of a sqlite store keep artifacts next to the database (``<db>-artifacts/``),
    not in ``./mlruns`` of the folder training started from; other stores keep their default."""
    if not uri.startswith("sqlite:///"):
        return None
    db = Path(uri.removeprefix("sqlite:///").split("?")[0]).resolve()
    return (db.parent / f"{db.stem}-artifacts").as_uri()


def create_run(
    client, uri: str, experiment: str, run_name: str | None, tags: dict[str, str] | None = None
) -> str:
    exp = client.get_experiment_by_name(experiment)
    exp_id = (
        exp.experiment_id
        if exp
        else client.create_experiment(experiment, artifact_location=artifact_location(uri))
    )
    return client.create_run(exp_id, run_name=run_name, tags=tags).info.run_id


def deliver(
    client, run_id: str, records: list[dict], answered: Callable[[], None] = lambda: None
) -> None:
    """Send ``records`` to run ``run_id``: params, metrics, artifacts, then the last status.

    ``answered()`` is called after every request the server answered. A refused request is
    dropped with a warning; any other failure (unreachable, timeout, 5xx) propagates.
    """
    from mlflow.entities import Metric, Param

    params = {k: v for r in records for k, v in r.get("params", {}).items()}
    metrics = [Metric(*r["metric"]) for r in records if "metric" in r]
    statuses = [r["status"] for r in records if "status" in r]
    steps = [
        (f"params {i}..", lambda c=chunk: client.log_batch(run_id, params=c))
        for i, chunk in _chunks(
            [Param(k, v[:MAX_PARAM_CHARS]) for k, v in sorted(params.items())], PARAMS_PER_BATCH
        )
    ]
    steps += [
        (f"metrics {i}..", lambda c=chunk: client.log_batch(run_id, metrics=c))
        for i, chunk in _chunks(metrics, METRICS_PER_BATCH)
    ]
    steps += [
        (f"artifact {path}", lambda p=path, d=subdir: client.log_artifact(run_id, p, d))
        for path, subdir in (r["artifact"] for r in records if "artifact" in r)
    ]
    if statuses and statuses[-1] == "RUNNING":
        steps.append(("status", lambda: client.update_run(run_id, status="RUNNING")))
    elif statuses:
        steps.append(("status", lambda: client.set_terminated(run_id, status=statuses[-1])))
    for what, send in steps:
        try:
            send()
        except Exception as e:
            if not is_permanent(e):
                raise
            log.warning("MLflow refused %s of run %s (%s); dropped", what, run_id, first_line(e))
        answered()


def sync(output_dir: str | Path, uri: str | None = None) -> str | None:
    """Send ``output_dir``'s journal into its MLflow run; a one-line summary, or None if nothing is pending.

    The run is created (and the records back-filled) when the training process never reached
    the server. Raises (the journal kept) when the server cannot be reached.
    """
    from mlflow.tracking import MlflowClient

    pending = Pending(Path(output_dir) / PENDING_FILE)
    records = pending.records()
    if not records:
        return None
    run = dict(pending.run)
    uri = uri or run["uri"]
    client = MlflowClient(uri)
    if run.get("run_id") is None:
        run["run_id"] = create_run(client, uri, run["experiment"], run.get("run_name"))
        pending.set_run(run)
    summary = pending.summary()
    deliver(client, run["run_id"], records)
    pending.drop(len(records))
    return f"sent {summary} to run {run['run_id']} at {uri}"


def first_line(e: BaseException) -> str:
    """The exception's first line, its middle elided past 200 characters (the cause is at the end)."""
    line = (str(e).splitlines() or [type(e).__name__])[0]
    return line if len(line) <= 200 else f"{line[:110]} … {line[-80:]}"


def _chunks(items: list, size: int):
    return [(i, items[i : i + size]) for i in range(0, len(items), size)]
