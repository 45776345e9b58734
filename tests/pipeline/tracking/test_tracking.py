"""MLflow tracking: the journal, and a server that is down when the run starts (real `mlflow server`)."""

import logging
import time

import pytest

from pipeline.tracking.pending import PENDING_FILE, Pending
from pipeline.tracking.tracker import CLOSE_WAIT_S, Tracker, flatten
from tests.support.procs import free_port, start_mlflow_server, stop


def test_flatten():
    assert flatten({"a": {"b": 1, "c": [1, 2]}, "d": None}) == {
        "a.b": "1",
        "a.c": "[1, 2]",
        "d": "None",
    }


def test_journal_keeps_later_records_and_survives_a_cut_line(tmp_path):
    path = tmp_path / PENDING_FILE
    journal = Pending(path)
    journal.set_run({"uri": "u", "experiment": "e", "run_name": "r", "run_id": None})
    journal.append([{"metric": ["m", float(i), 1000 + i, i]} for i in range(5)])
    journal.drop(2)  # the first two were delivered
    journal.append([{"status": "FINISHED"}])
    with open(path, "a") as f:
        f.write('{"metric": ["m", 9.0, 10')  # a crash in the middle of a line
    again = Pending(path)
    assert again.run == {"uri": "u", "experiment": "e", "run_name": "r", "run_id": None}
    assert again.records() == [
        *({"metric": ["m", float(i), 1000 + i, i]} for i in range(2, 5)),
        {"status": "FINISHED"},
    ]
    assert again.summary() == "3 metric values"
    again.set_run({**again.run, "run_id": "abc"})
    assert Pending(path).run["run_id"] == "abc"
    again.drop(4)
    assert not path.exists() and not Pending(path)


@pytest.mark.multiproc
@pytest.mark.slow
def test_server_down_at_start_then_resume_backfills_the_same_run(tmp_path, caplog):
    """No server while the first process runs: all of it is kept in output_dir; the resumed process
    creates the run, back-fills the earlier steps, and keeps the first process's params."""
    from mlflow.tracking import MlflowClient

    caplog.set_level(logging.WARNING, "avfusion.tracking")
    port = free_port()
    uri = f"http://127.0.0.1:{port}"
    out = tmp_path / "run"
    out.mkdir()
    (out / "a.txt").write_text("artifact")
    first = Tracker(uri, "outage", "r1", system_metrics=False, output_dir=out)
    first.log_params({"model": {"preset": "debug"}})
    for step in range(1, 4):
        first.log_metrics({"train/loss": 10.0 - step}, step=step)
    first.log_artifact(out / "a.txt")
    first.close("FAILED")
    assert first.run_id is None  # nothing reached a server
    warnings = [r.getMessage() for r in caplog.records if "did not take" in r.getMessage()]
    assert len(warnings) == 1 and "3 metric values, 1 param sets, 1 artifacts" in warnings[0]
    assert str(out / PENDING_FILE) in warnings[0] and f"avfusion runs sync {out}" in warnings[0]
    server = start_mlflow_server(tmp_path, port)
    try:
        resumed = Tracker(uri, "outage", "r1", run_id=None, system_metrics=False, output_dir=out)
        resumed.log_params(
            {"model": {"preset": "changed"}}
        )  # a resumed run keeps its original params
        resumed.log_metrics({"train/loss": 5.0}, step=4)
        resumed.close()
        client = MlflowClient(uri)
        (run,) = client.search_runs([client.get_experiment_by_name("outage").experiment_id])
        assert run.info.run_id == resumed.run_id
        history = client.get_metric_history(resumed.run_id, "train/loss")
        assert sorted((m.step, m.value) for m in history) == [
            (1, 9.0),
            (2, 8.0),
            (3, 7.0),
            (4, 5.0),
        ]
        assert run.data.params == {"model.preset": "debug"}
        assert run.info.status == "FINISHED"
        assert [a.path for a in client.list_artifacts(resumed.run_id)] == ["a.txt"]
        assert not (out / PENDING_FILE).exists()
    finally:
        stop(server)


def test_a_new_sqlite_store_is_migrated_before_training_starts_and_keeps_artifacts_next_to_it(
    tmp_path, monkeypatch
):
    """A kill during MLflow's first migration of a sqlite file leaves it unusable (CI saw
    ``_alembic_tmp_latest_metrics already exists`` on resume), so the store must be complete
    when the Tracker is returned, not later in the sender thread. Its artifacts go next to the
    database, not into ./mlruns of wherever training started; ``close()`` returns once all is
    delivered."""
    import json
    import sqlite3

    from mlflow.tracking import MlflowClient

    elsewhere = tmp_path / "started-here"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    db = tmp_path / "store" / "runs.db"
    tracker = Tracker(f"sqlite:///{db}", "exp", "r", system_metrics=False)
    with sqlite3.connect(db) as con:
        tables = {r[0] for r in con.execute("select name from sqlite_master where type='table'")}
        version = con.execute("select version_num from alembic_version").fetchall()
    assert {"experiments", "runs", "latest_metrics"} <= tables
    assert not {t for t in tables if t.startswith("_alembic_tmp")}
    assert len(version) == 1
    note = tmp_path / "note.json"
    note.write_text(json.dumps({"a": 1}))
    tracker.log_artifact(note)
    started = time.monotonic()
    tracker.close()
    # everything delivered, close returns (it used to sit out CLOSE_WAIT_S at every run's end)
    assert time.monotonic() - started < CLOSE_WAIT_S / 2
    assert MlflowClient(f"sqlite:///{db}").get_run(tracker.run_id).info.status == "FINISHED"
    stored = list((tmp_path / "store" / "runs-artifacts").rglob("note.json"))
    assert len(stored) == 1 and stored[0].read_text() == note.read_text()
    assert list(elsewhere.iterdir()) == []  # no ./mlruns where training started
