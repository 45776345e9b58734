"""MLflow tracking against a real `mlflow server` process, including an outage."""
import pytest

from pipeline.tracking import Tracker, flatten
from tests.pipeline.helpers import free_port, start_mlflow_server, stop

pytestmark = [pytest.mark.multiproc, pytest.mark.slow]


def test_flatten():
    assert flatten({"a": {"b": 1, "c": [1, 2]}, "d": None}) == {"a.b": "1", "a.c": "[1, 2]", "d": "None"}


def test_outage_then_recovery(tmp_path, caplog):
    """Server down at start: training goes on, logs are buffered and arrive once it is up."""
    from mlflow.tracking import MlflowClient

    port = free_port()
    uri = f"http://127.0.0.1:{port}"
    tracker = Tracker(uri, "outage", "r1", system_metrics=False)
    tracker.log_params({"model": {"preset": "debug"}})
    for step in range(1, 4):
        tracker.log_metrics({"train/loss": 10.0 - step}, step=step)
    assert tracker.run_id is None                       # nothing reached a server
    assert any("unreachable" in r.message for r in caplog.records)
    (tmp_path / "a.txt").write_text("artifact")
    tracker.log_artifact(tmp_path / "a.txt")
    server = start_mlflow_server(tmp_path, port)
    try:
        assert tracker.flush(force=True)
        tracker.log_metrics({"train/loss": 5.0}, step=4)
        tracker.close()
        client = MlflowClient(uri)
        run = client.get_run(tracker.run_id)
        history = client.get_metric_history(tracker.run_id, "train/loss")
        assert [(m.step, m.value) for m in sorted(history, key=lambda m: m.step)] == \
            [(1, 9.0), (2, 8.0), (3, 7.0), (4, 5.0)]
        assert run.data.params["model.preset"] == "debug"
        assert run.info.status == "FINISHED"
        assert [a.path for a in client.list_artifacts(tracker.run_id)] == ["a.txt"]
        # a resumed tracker continues the same run and does not re-log params
        again = Tracker(uri, "outage", "r1", run_id=tracker.run_id, system_metrics=False)
        again.log_params({"model": {"preset": "changed"}})
        again.log_metrics({"train/loss": 4.0}, step=5)
        again.close()
        assert client.get_run(tracker.run_id).data.params["model.preset"] == "debug"
        assert len(client.get_metric_history(tracker.run_id, "train/loss")) == 5
    finally:
        stop(server)
