"""Tracking faults with real processes: a `mlflow server` killed, restarted, SIGSTOPped and SIGCONTed
under a live Tracker and under `avfusion train`; `avfusion runs sync` and `runs compare` as a user runs them."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from pathlib import Path

import pytest

from pipeline.tracking.pending import PENDING_FILE
from pipeline.tracking.tracker import Tracker
from tests.support.procs import AVFUSION, REPO, free_port, start_mlflow_server, stop

pytestmark = [pytest.mark.multiproc, pytest.mark.slow]


def avfusion(*args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    env = {**os.environ, "DS_ACCELERATOR": "cpu", "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    return subprocess.run(
        [*AVFUSION, *args], cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout
    )


def history(uri: str, run_id: str, key: str = "train/loss") -> list[tuple[int, float]]:
    from mlflow.tracking import MlflowClient

    return sorted((m.step, m.value) for m in MlflowClient(uri).get_metric_history(run_id, key))


def wait_for(condition, timeout: float, what: str):
    deadline = time.monotonic() + timeout
    while not (value := condition()):
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.5)
    return value


@pytest.fixture
def server(mlflow_server):
    """The session's real `mlflow server` (tests/pipeline/conftest.py): (uri, process)."""
    return mlflow_server.uri, mlflow_server.proc


def test_midrun_outage_is_recovered_before_close(tmp_path):
    """The server dies mid-run and comes back: the sender retries by itself (no flush, no close) and
    every step arrives in the run it started, while the caller never waited on the network."""
    port = free_port()
    uri = f"http://127.0.0.1:{port}"
    proc = start_mlflow_server(tmp_path, port)
    tracker = Tracker(uri, "midrun", "r", system_metrics=False, output_dir=tmp_path / "out")
    try:
        for step in range(1, 4):
            tracker.log_metrics({"train/loss": float(step)}, step=step)
        wait_for(
            lambda: len(history(uri, tracker.run_id)) == 3 if tracker.run_id else None,
            60,
            "steps 1-3",
        )
        run_id = tracker.run_id
        stop(proc)
        for step in range(4, 7):
            tracker.log_metrics({"train/loss": float(step)}, step=step)
        wait_for(
            lambda: (tmp_path / "out" / PENDING_FILE).exists(), 60, "the journal of the outage"
        )
        proc = start_mlflow_server(tmp_path, port)  # same store, same port
        tracker.log_metrics({"train/loss": 7.0}, step=7)
        wait_for(lambda: len(history(uri, run_id)) == 7, 120, "all steps after the restart")
        assert history(uri, run_id) == [(s, float(s)) for s in range(1, 8)]
        assert tracker.run_id == run_id
        wait_for(lambda: not (tmp_path / "out" / PENDING_FILE).exists(), 30, "the journal to empty")
        tracker.close()
    finally:
        stop(proc)


def test_hung_server_costs_the_caller_nothing(server, tmp_path):
    """SIGSTOP: the server accepts connections but never answers. Logging returns at once (the old
    client blocked 2 × 10 s); after SIGCONT every step arrives in the same run."""
    uri, proc = server
    tracker = Tracker(uri, "hung", "r", system_metrics=False, output_dir=tmp_path)
    tracker.log_metrics({"train/loss": 1.0}, step=1)
    run_id = wait_for(lambda: tracker.run_id, 60, "the run")
    os.killpg(proc.pid, signal.SIGSTOP)  # the whole server: its workers too
    try:
        t0 = time.perf_counter()
        for step in range(2, 202):
            tracker.log_metrics({"train/loss": float(step), "train/lr": 0.1}, step=step)
        assert time.perf_counter() - t0 < 1.0  # 200 steps while hung; a blocking call costs >= 10 s
        wait_for(lambda: (tmp_path / PENDING_FILE).exists(), 30, "the journal")
    finally:
        os.killpg(proc.pid, signal.SIGCONT)
    wait_for(lambda: len(history(uri, run_id)) == 201, 120, "all steps after SIGCONT")
    assert history(uri, run_id) == [(s, float(s)) for s in range(1, 202)]
    tracker.close()


def test_runs_sync_creates_the_run_and_backfills(server, tmp_path):
    """A process that never reached its server leaves a journal; `runs sync` fails in one line while
    the server is away, then creates the run and sends everything once it is there."""
    from mlflow.tracking import MlflowClient

    uri, _ = server
    dead = f"http://127.0.0.1:{free_port()}"
    tracker = Tracker(dead, "synced", "offline", system_metrics=False, output_dir=tmp_path)
    tracker.log_params({"optim": {"lr": 0.5}})
    for step in range(1, 6):
        tracker.log_metrics({"train/loss": 1.0 / step}, step=step)
    tracker.close("FINISHED")
    journal = (tmp_path / PENDING_FILE).read_text()

    t0 = time.monotonic()
    failed = avfusion("runs", "sync", str(tmp_path))
    assert failed.returncode == 2 and time.monotonic() - t0 < 60
    assert failed.stderr.strip().count("\n") == 0 and failed.stderr.startswith(
        "error: tracking sync of"
    )
    assert (tmp_path / PENDING_FILE).read_text() == journal  # nothing lost, nothing changed

    done = avfusion("runs", "sync", str(tmp_path), "--uri", uri)
    assert done.returncode == 0, done.stderr
    client = MlflowClient(uri)
    (run,) = client.search_runs([client.get_experiment_by_name("synced").experiment_id])
    assert (
        done.stdout.strip()
        == f"sent 5 metric values, 1 param sets to run {run.info.run_id} at {uri}"
    )
    assert run.info.run_name == "offline" and run.info.status == "FINISHED"
    assert run.data.params == {"optim.lr": "0.5"}
    assert history(uri, run.info.run_id) == [(s, 1.0 / s) for s in range(1, 6)]
    assert not (tmp_path / PENDING_FILE).exists()
    again = avfusion("runs", "sync", str(tmp_path))
    assert again.returncode == 0 and again.stdout.strip() == f"{tmp_path}: nothing pending"


def test_runs_compare_shows_differing_params_and_final_metrics(server):
    from mlflow.tracking import MlflowClient

    uri, _ = server
    client = MlflowClient(uri)
    exp = client.create_experiment("compare")
    for name, lr, losses in (("base", "0.001", [2.0, 1.23456]), ("fast", "0.01", [2.0, 0.5])):
        run_id = client.create_run(exp, run_name=name).info.run_id
        client.log_batch(run_id, params=[_param("optim.lr", lr), _param("model.preset", "debug")])
        for step, loss in enumerate(losses, 1):
            client.log_metric(run_id, "train/loss", loss, step=step)
        client.set_terminated(run_id)
        time.sleep(0.01)  # distinct start times: newest first
    runs = {r.info.run_name: r.info.run_id[:8] for r in client.search_runs([exp])}
    out = avfusion("runs", "compare", "--uri", uri, "--experiment", "compare")
    assert out.returncode == 0, out.stderr
    rows = [line.split() for line in out.stdout.splitlines()]
    assert rows[0] == ["fast", f"({runs['fast']})", "base", f"({runs['base']})"]
    table = {r[0]: r[1:] for r in rows[1:]}
    assert table["status"] == ["FINISHED", "FINISHED"]
    assert table["optim.lr"] == ["0.01", "0.001"]
    assert "model.preset" not in table  # equal in both runs: not a difference
    assert table["train/loss"] == ["0.5", "1.235"]  # the last logged value, 4 significant digits
    assert table["probe/knn_top1"] == ["-", "-"]


def test_runs_compare_against_a_dead_server_fails_in_one_line():
    t0 = time.monotonic()
    out = avfusion("runs", "compare", "--uri", f"http://127.0.0.1:{free_port()}")
    assert (
        out.returncode == 2 and time.monotonic() - t0 < 60
    )  # mlflow's default retries take minutes
    assert out.stdout == "" and out.stderr.count("\n") == 1
    assert (
        out.stderr.startswith("error: MLflow at http://127.0.0.1:")
        and "Connection refused" in out.stderr
    )


def test_train_with_a_server_stopped_midrun(server, shard_set, tmp_path):
    """`avfusion train`, log_every=1: the server is SIGSTOPped after step 3 and SIGCONTed after step 20.
    The run finishes; every logged step is in the one MLflow run (via `runs sync` if the end came first)."""
    from mlflow.tracking import MlflowClient

    uri, server_proc = server
    out = tmp_path / "run"
    args = [
        f"data.shards={shard_set}",
        "probe.shards=null",
        f"train.output_dir={out}",
        f"tracking.uri={uri}",
        "tracking.run_name=stopped",
        "tracking.experiment=faults",
        "train.max_steps=40",
        "train.log_every=1",
        "data.batch_size=4",
    ]
    env = {**os.environ, "DS_ACCELERATOR": "cpu", "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    train = subprocess.Popen(
        [*AVFUSION, "train", "--config", str(REPO / "configs" / "debug.yaml"), *args],
        cwd=REPO,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        wait_for(lambda: logged_steps(out) >= 3, 600, "step 3")
        os.killpg(server_proc.pid, signal.SIGSTOP)
        wait_for(lambda: logged_steps(out) >= 20 or train.poll() is not None, 600, "step 20")
    finally:
        os.killpg(server_proc.pid, signal.SIGCONT)
    _, stderr = train.communicate(timeout=600)
    assert train.returncode == 0, stderr[-3000:]
    if (out / PENDING_FILE).exists():
        assert "avfusion runs sync" in stderr
        assert avfusion("runs", "sync", str(out)).returncode == 0
    client = MlflowClient(uri)
    (run,) = client.search_runs([client.get_experiment_by_name("faults").experiment_id])
    expected = {
        rec["step"]: rec["train/loss"] for rec in map(json.loads, (out / "metrics.jsonl").open())
    }
    assert sorted(expected) == list(range(1, 41))
    assert history(uri, run.info.run_id) == sorted(expected.items())
    assert client.get_run(run.info.run_id).info.status == "FINISHED"


def logged_steps(out: Path) -> int:
    path = out / "metrics.jsonl"
    return len(path.read_text().splitlines()) if path.exists() else 0


def _param(key: str, value: str):
    from mlflow.entities import Param

    return Param(key, value)
