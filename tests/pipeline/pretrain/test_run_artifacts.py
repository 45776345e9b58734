"""What a run leaves behind: no credential from a URL anywhere (run folder, MLflow store and
artifacts, console, exported file), exports readable by others, sqlite-tracked artifacts next
to the database."""

from __future__ import annotations

import json
import stat
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from safetensors import safe_open

from pipeline.tracking.tracker import Tracker, split_credentials
from tests.support.procs import REPO, free_port, start_mlflow_server, stop
from tests.support.procs import cpu_env as env

PLANTED = "Planted-s3cret-7781"


def files_holding(secret: str, *roots: Path) -> list[str]:
    """Every file under ``roots`` whose bytes contain ``secret``."""
    return [
        str(p)
        for root in roots
        for p in ([root] if root.is_file() else root.rglob("*"))
        if p.is_file() and secret.encode() in p.read_bytes()
    ]


@pytest.fixture
def mlflow_server(tmp_path):
    root = tmp_path / "mlflow"
    root.mkdir()
    port = free_port()
    server = start_mlflow_server(root, port)
    yield root, port
    stop(server)


@pytest.mark.slow
@pytest.mark.multiproc
def test_a_password_in_the_tracking_uri_is_in_no_artifact_of_the_run(
    shard_set, mlflow_server, tmp_path
):
    from mlflow.tracking import MlflowClient

    root, port = mlflow_server
    out, exported = tmp_path / "run", tmp_path / "export" / "model.safetensors"
    train = subprocess.run(
        [
            sys.executable,
            "-m",
            "pipeline.train",
            "--config",
            str(REPO / "configs" / "debug.yaml"),
            f"data.shards={shard_set}",
            f"probe.shards={shard_set}",
            f"train.output_dir={out}",
            f"tracking.uri=http://avf:{PLANTED}@127.0.0.1:{port}",
            "data.batch_size=4",
            "train.max_steps=2",
            "train.log_every=1",
            "train.save_every_steps=2",
        ],
        cwd=tmp_path,
        env=env(),
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert train.returncode == 0, train.stderr[-3000:]
    export = subprocess.run(
        [
            sys.executable,
            "-m",
            "pipeline.cli",
            "export",
            str(out / "checkpoints"),
            "--out",
            str(exported),
        ],
        cwd=tmp_path,
        env=env(),
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert export.returncode == 0, export.stderr

    # The run was tracked through the credentialed URI, and says where it went without the password.
    client = MlflowClient(f"http://127.0.0.1:{port}")
    (run,) = client.search_runs(
        [client.get_experiment_by_name("avfusion-demo").experiment_id],
        order_by=["attributes.start_time DESC"],
        max_results=1,
    )
    assert run.data.params["tracking.uri"] == f"http://***@127.0.0.1:{port}"
    assert [m.step for m in client.get_metric_history(run.info.run_id, "train/loss")] == [1, 2]
    assert {"config.yaml", "manifest.json"} <= {
        a.path for a in client.list_artifacts(run.info.run_id)
    }
    assert (
        yaml.safe_load((out / "config.yaml").read_text())["tracking"]["uri"]
        == f"http://***@127.0.0.1:{port}"
    )
    with safe_open(str(exported), "pt") as f:
        assert (
            yaml.safe_load(f.metadata()["config"])["tracking"]["uri"]
            == f"http://***@127.0.0.1:{port}"
        )

    assert files_holding(PLANTED, out, root, exported) == []  # run folder, MLflow store, export
    console = train.stdout + train.stderr + export.stdout + export.stderr
    assert PLANTED not in console
    assert stat.S_IMODE(exported.stat().st_mode) == 0o644  # a file meant to be shared


@pytest.mark.slow
def test_sqlite_tracked_artifacts_go_next_to_the_database(tmp_path, monkeypatch):
    elsewhere = tmp_path / "started-here"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    note = tmp_path / "note.json"
    note.write_text(json.dumps({"a": 1}))
    tracker = Tracker(f"sqlite:///{tmp_path}/store/runs.db", "exp", "r", system_metrics=False)
    tracker.log_artifact(note)
    tracker.close()
    stored = list((tmp_path / "store" / "runs-artifacts").rglob("note.json"))
    assert len(stored) == 1 and stored[0].read_text() == note.read_text()
    assert list(elsewhere.iterdir()) == []  # no ./mlruns where training started


def test_mlflow_gets_the_password_from_its_environment_not_the_uri():
    assert split_credentials("https://alice:p%40ss@mlflow.example.com:5000/x") == (
        "https://mlflow.example.com:5000/x",
        {"MLFLOW_TRACKING_USERNAME": "alice", "MLFLOW_TRACKING_PASSWORD": "p@ss"},
    )
    assert split_credentials("sqlite:///runs/mlruns.db") == ("sqlite:///runs/mlruns.db", {})
    assert split_credentials("http://127.0.0.1:5000") == ("http://127.0.0.1:5000", {})
