"""What a run leaves behind: no credential from a URL anywhere (run and evaluation folders,
checkpoints, MLflow store and artifacts, errors.jsonl, console, exported file), exports readable
by others. (sqlite-tracked artifacts next to the database: tests/pipeline/tracking/.)"""

from __future__ import annotations

import stat
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from safetensors import safe_open

from pipeline.tracking.tracker import split_credentials
from tests.support.procs import REPO
from tests.support.procs import cpu_env as env

PLANTED = "Planted-s3cret-7781"
EXPERIMENT = "tracking.experiment=secrets"  # its own, on the session's MLflow server


def files_holding(secret: str, *roots: Path) -> list[str]:
    """Every file under ``roots`` whose bytes contain ``secret``."""
    return [
        str(p)
        for root in roots
        for p in ([root] if root.is_file() else root.rglob("*"))
        if p.is_file() and secret.encode() in p.read_bytes()
    ]


def command(module: str, *args, cwd: Path) -> subprocess.CompletedProcess:
    """``python -m module args`` as a user runs it (its own process, the CPU environment)."""
    return subprocess.run(
        [sys.executable, "-m", module, *map(str, args)],
        cwd=cwd,
        env=env(),
        capture_output=True,
        text=True,
        timeout=900,
    )


@pytest.mark.slow
@pytest.mark.multiproc
def test_a_password_in_the_tracking_uri_is_in_no_artifact_of_the_run(
    shard_set, mlflow_server, tmp_path, capfd, caplog
):
    """#29.2: a pretraining, a linear-probe evaluation of it and an export, all tracked through
    ``http://avf:PASSWORD@host``, plus a shards build whose failing inputs carry a password and
    a signature: the password is in no file any of them wrote (run and evaluation folders,
    their checkpoints, the MLflow store and artifacts, errors.jsonl, the export) nor on the
    console. (A password in an s3:// URL is refused up front: tests/pipeline/test_redaction.py.)"""
    from mlflow.tracking import MlflowClient

    from pipeline.cli import main

    root, port = mlflow_server.root, mlflow_server.uri.rsplit(":", 1)[1]  # the session's
    uri = f"http://avf:{PLANTED}@127.0.0.1:{port}"
    out, evaluation = tmp_path / "run", tmp_path / "eval"
    exported = tmp_path / "export" / "model.safetensors"
    train = command(
        "pipeline.train",
        *("--config", REPO / "configs" / "debug.yaml", f"tracking.uri={uri}", EXPERIMENT),
        *(f"data.shards={shard_set}", f"probe.shards={shard_set}", f"train.output_dir={out}"),
        *("data.batch_size=4", "train.max_steps=2", "train.log_every=1"),
        "train.save_every_steps=2",
        cwd=tmp_path,
    )
    assert train.returncode == 0, train.stderr[-3000:]
    linear = command(
        "pipeline.evaluate",
        *("--config", REPO / "configs" / "eval" / "debug_linear.yaml", f"tracking.uri={uri}"),
        EXPERIMENT,
        *(f"encoder.checkpoint={out}", f"data.train={shard_set}", f"data.test={shard_set}"),
        *(f"train.output_dir={evaluation}", "data.train.batch_size=8", "optim.epochs=1"),
        *("optim.warmup_epochs=0", "train.max_steps=2", "train.log_every=1"),
        cwd=tmp_path,
    )
    assert linear.returncode == 0, linear.stderr[-3000:]
    # export and build in this process (the console entry point's main): no start-up each
    assert main(["export", str(out / "checkpoints"), "--out", str(exported)]) == 0
    inputs, built = tmp_path / "inputs.txt", tmp_path / "built"
    inputs.write_text(
        f"http://avf:{PLANTED}@127.0.0.1:9/a.mp4\n"
        f"http://127.0.0.1:9/b.mp4?X-Amz-Signature={PLANTED}&v=1\n"
    )
    build = ["shards", "build", str(inputs), "--out", str(built), "--workers", "1"]
    assert main(build) == 1  # no input yielded a sample
    assert len((built / "errors.jsonl").read_text().splitlines()) == 2
    in_process = capfd.readouterr()

    # Both runs were tracked through the credentialed URI, and say where it went without it.
    masked = f"http://***@127.0.0.1:{port}"
    client = MlflowClient(f"http://127.0.0.1:{port}")
    experiment = client.get_experiment_by_name("secrets").experiment_id
    runs = client.search_runs([experiment], order_by=["attributes.start_time ASC"])
    assert [r.data.tags.get("avfusion.task") for r in runs] == [None, "linear"]
    for run in runs:
        assert run.data.params["tracking.uri"] == masked
        assert "config.yaml" in {a.path for a in client.list_artifacts(run.info.run_id)}
    assert [m.step for m in client.get_metric_history(runs[0].info.run_id, "train/loss")] == [1, 2]
    for folder in (out, evaluation):
        assert yaml.safe_load((folder / "config.yaml").read_text())["tracking"]["uri"] == masked
    checkpoints = [*out.rglob("mp_rank_00_model_states.pt")]
    checkpoints += [*evaluation.rglob("mp_rank_00_model_states.pt")]
    assert len(checkpoints) == 2  # one per run: searched below with everything else
    with safe_open(str(exported), "pt") as f:
        assert yaml.safe_load(f.metadata()["config"])["tracking"]["uri"] == masked

    written = (out, evaluation, root, exported, built)  # runs, MLflow store, export, errors.jsonl
    assert files_holding(PLANTED, *written) == []
    console = "".join(p.stdout + p.stderr for p in (train, linear)) + in_process.out
    console += in_process.err
    assert exported.name in in_process.out and PLANTED not in console + caplog.text
    assert stat.S_IMODE(exported.stat().st_mode) == 0o644  # a file meant to be shared


def test_mlflow_gets_the_password_from_its_environment_not_the_uri():
    assert split_credentials("https://alice:p%40ss@mlflow.example.com:5000/x") == (
        "https://mlflow.example.com:5000/x",
        {"MLFLOW_TRACKING_USERNAME": "alice", "MLFLOW_TRACKING_PASSWORD": "p@ss"},
    )
    assert split_credentials("sqlite:///runs/mlruns.db") == ("sqlite:///runs/mlruns.db", {})
    assert split_credentials("http://127.0.0.1:5000") == ("http://127.0.0.1:5000", {})
