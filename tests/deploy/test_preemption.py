"""Preemption on Kubernetes: the rendered grace period and restart policies, what the Job and
JobSet controllers decide from them, and the exit code ``deploy.launch`` gives a node."""

from __future__ import annotations

import signal
import subprocess
import sys
import time

import pytest

from deploy import preemption
from deploy.launch import node_exit_code
from tests.deploy.helpers import IMAGE, REPO, VGG, node_pod
from tests.deploy.validators import crd_errors, jobset_job_errors, load_docs
from tests.support.procs import cpu_env, free_port

BASE = ["--run-config", VGG, "--nodes", "2", "--gpus-per-node", "4", "--image", IMAGE]


def rendered(render, launcher: str, *extra: str) -> tuple[dict, dict]:
    """(the training document, the JobSet spec its Jobs come from) for ``launcher``."""
    files = render(*BASE, "--launcher", launcher, *extra)
    (train,) = load_docs(files["40-train.yaml"])
    if launcher == "jobset":
        return train, train["spec"]
    (runtime,) = [d for d in load_docs(files["00-config.yaml"]) if d["kind"] == "TrainingRuntime"]
    ref = train["spec"]["runtimeRef"]
    assert (ref["kind"], ref["name"]) == ("TrainingRuntime", runtime["metadata"]["name"])
    assert runtime["metadata"]["namespace"] == train["metadata"]["namespace"]
    assert crd_errors(runtime) == [] and jobset_job_errors(runtime) == []
    return train, runtime["spec"]["template"]["spec"]


@pytest.mark.parametrize("launcher", ["trainjob", "jobset"])
@pytest.mark.parametrize("grace", [None, "300"])
def test_training_pods_get_the_grace_period_and_torchrun_waits_almost_as_long(
    render, launcher, grace
):
    train, _ = rendered(render, launcher, *(["--grace-seconds", grace] if grace else []))
    want = int(grace) if grace else preemption.DEFAULT_GRACE_S
    pod_spec, _, env = node_pod(train)
    assert pod_spec["terminationGracePeriodSeconds"] == want
    assert env["TORCH_ELASTIC_SHUTDOWN_TIMEOUT"] == {
        "name": "TORCH_ELASTIC_SHUTDOWN_TIMEOUT",
        "value": str(want - 5),
    }


def test_the_default_grace_is_the_documented_arithmetic():
    """docs/DEPLOY.md: 10 s of steps + 2 saves of 6.06 GB at 0.1 GB/s + 20 s of exit = 151.2 s,
    rounded up to 160 s; the floor is one save at the measured 0.90 GB/s: 6.7 s → 7 s."""
    assert (preemption.DEFAULT_GRACE_S, preemption.MIN_GRACE_S) == (160, 7)
    docs = (REPO / "docs" / "DEPLOY.md").read_text()
    assert "10 + 2 × 60.6 + 20 = 151.2 s, rounded up to **160 s**" in docs


def test_the_runtime_is_the_torch_runtime_kubeflow_injects_pet_variables_into(render):
    files = render(*BASE)
    (runtime,) = [d for d in load_docs(files["00-config.yaml"]) if d["kind"] == "TrainingRuntime"]
    assert "torch" in runtime["spec"]["mlPolicy"]
    (node,) = runtime["spec"]["template"]["spec"]["replicatedJobs"]
    # Kubeflow Trainer v2.3's webhook and torch plugin: the "trainer" ancestor, one replica,
    # container "node" (pkg/webhooks/trainingruntime_webhook.go, plugins/torch/torch.go).
    labels = node["template"]["metadata"]["labels"]
    assert labels["trainer.kubeflow.org/trainjob-ancestor-step"] == "trainer"
    assert node.get("replicas", 1) == 1
    containers = node["template"]["spec"]["template"]["spec"]["containers"]
    assert [c["name"] for c in containers] == ["node"]
    jobset_files = render(*BASE, "--launcher", "jobset", out=files["00-config.yaml"].parent / "js")
    kinds = {d["kind"] for d in load_docs(jobset_files["00-config.yaml"])}
    assert "TrainingRuntime" not in kinds  # a JobSet-only cluster has no such CRD


# ---- what the controllers decide ----------------------------------------------------------
# Kubernetes Job podFailurePolicy: the first rule whose requirement a failed pod meets acts
# (onExitCodes: a non-zero exit code of the named container In/NotIn the values; onPodConditions:
# a condition of that type and status); FailJob fails the Job with reason PodFailurePolicy,
# Ignore does not count the pod, Count or no rule counts it against backoffLimit (exceeded:
# BackoffLimitExceeded). JobSet failurePolicy: the first rule whose onJobFailureReasons holds the
# Job's reason acts; none: RestartJobSet, which counts against maxRestarts.


def _meets(rule: dict, pod: dict) -> bool:
    if "onExitCodes" in rule:
        req = rule["onExitCodes"]
        codes = [
            c
            for name, c in pod["exit_codes"].items()
            if c != 0 and req.get("containerName") in (None, name)
        ]
        inside = [(c in req["values"]) == (req["operator"] == "In") for c in codes]
        return any(inside)
    return any(
        (p["type"], p.get("status", "True")) in pod["conditions"] for p in rule["onPodConditions"]
    )


def job_failure_reason(job_spec: dict, pod: dict) -> str | None:
    """The reason the Job fails with after its first failed pod, ``pod`` (None: it does not)."""
    for rule in job_spec.get("podFailurePolicy", {}).get("rules", []):
        if _meets(rule, pod):
            if rule["action"] in ("FailJob", "Ignore"):
                return "PodFailurePolicy" if rule["action"] == "FailJob" else None
            break  # Count: the default handling
    return "BackoffLimitExceeded" if job_spec.get("backoffLimit", 6) < 1 else None


def jobset_action(jobset_spec: dict, reason: str) -> str:
    for rule in jobset_spec["failurePolicy"].get("rules", []):
        if not rule.get("onJobFailureReasons") or reason in rule["onJobFailureReasons"]:
            return rule["action"]
    return "RestartJobSet"


PODS = {
    # the node Kubernetes preempted or drained: killed at the end of the grace period
    "disrupted": ({"node": 137}, {("DisruptionTarget", "True")}),
    # a node that stopped because another one was signalled (deploy.launch: 143)
    "stopped after a signal": ({"node": 143}, set()),
    "crashed": ({"node": 1}, set()),
    "out of memory": ({"node": 137}, set()),
}


@pytest.mark.parametrize("launcher", ["trainjob", "jobset"])
@pytest.mark.parametrize("pod", PODS)
def test_a_preempted_run_restarts_without_using_up_max_restarts(render, launcher, pod):
    _, jobset_spec = rendered(render, launcher)
    (node,) = jobset_spec["replicatedJobs"]
    job = node["template"]["spec"]
    assert job["template"]["spec"]["restartPolicy"] == "Never"  # podFailurePolicy needs it
    exit_codes, conditions = PODS[pod]
    reason = job_failure_reason(job, {"exit_codes": exit_codes, "conditions": conditions})
    action = jobset_action(jobset_spec, reason)
    preempted = pod in ("disrupted", "stopped after a signal")
    assert reason == ("PodFailurePolicy" if preempted else "BackoffLimitExceeded")
    assert action == ("RestartJobSetAndIgnoreMaxRestarts" if preempted else "RestartJobSet")
    assert jobset_spec["failurePolicy"]["maxRestarts"] == 3


# ---- deploy.launch: the node's exit code ---------------------------------------------------


@pytest.mark.parametrize(
    "codes,want",
    [
        ([143, 143], 143),  # every worker saved and stopped
        ([143, -15], 143),  # torchrun stopped the second one after the first exited
        ([-15], 1),  # stopped by torchrun, but no worker stopped by itself
        ([143, 1], 1),  # one of them failed
        ([143, -9], 1),  # one killed
        ([1], 1),
    ],
)
def test_node_exit_code(codes, want):
    assert node_exit_code(codes) == want


def test_deploy_uses_the_engines_exit_code():
    from avbase.errors import EXIT_PREEMPTED

    assert preemption.EXIT_PREEMPTED == EXIT_PREEMPTED


WORKER = """
import os, pathlib, signal, sys, time
rank, mode, out = os.environ["RANK"], os.environ["MODE"], pathlib.Path(os.environ["OUT"])

def save(signum, frame):  # the engine: finish the step, save, exit 143
    time.sleep(float(os.environ["SAVE_S"]))
    (out / f"saved-{rank}").touch()
    os._exit(143)

signal.signal(signal.SIGTERM, save if mode == "signal" else signal.SIG_DFL)
(out / f"ready-{rank}").touch()
if mode == "stop" or (mode == "one stops" and rank == "0"):
    os._exit(143)
if mode == "crash" and rank == "0":
    os._exit(1)
time.sleep(120)
"""
LAUNCH = "import sys; from deploy.launch import run_torchrun; sys.exit(run_torchrun(sys.argv[1:]))"


def torchrun(tmp_path, mode: str, launcher: str = "deploy.launch", **env: str) -> subprocess.Popen:
    """One node × 2 workers of WORKER under ``launcher`` (or plain torchrun)."""
    worker = tmp_path / "worker.py"
    worker.write_text(WORKER)
    args = [
        "--nnodes=1",
        "--nproc-per-node=2",
        "--node-rank=0",
        "--rdzv-backend=static",
        "--master-addr=127.0.0.1",
        f"--master-port={free_port()}",
        str(worker),
    ]
    head = ["-c", LAUNCH] if launcher == "deploy.launch" else ["-m", "torch.distributed.run"]
    return subprocess.Popen(
        [sys.executable, *head, *args],
        env={**cpu_env(), "MODE": mode, "OUT": str(tmp_path), "SAVE_S": "0", **env},
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


@pytest.mark.multiproc
@pytest.mark.parametrize(
    "mode,launcher,want",
    [
        ("stop", "torchrun", 1),  # why deploy.launch maps the code
        ("stop", "deploy.launch", 143),
        ("one stops", "deploy.launch", 143),
        ("crash", "deploy.launch", 1),
    ],
)
def test_a_node_whose_workers_stopped_for_a_signal_exits_143(tmp_path, mode, launcher, want):
    proc = torchrun(tmp_path, mode, launcher)
    out, _ = proc.communicate(timeout=120)
    assert proc.returncode == want, out[-3000:]


@pytest.mark.multiproc
@pytest.mark.parametrize("timeout,saved", [("6", True), ("1", False)])
def test_after_sigterm_torchrun_waits_its_shutdown_timeout_for_the_save(tmp_path, timeout, saved):
    """Workers need 3 s to save: the rendered TORCH_ELASTIC_SHUTDOWN_TIMEOUT lets them (torch's
    default, 30 s, would be too short for a real save); a shorter one kills them mid-save."""
    proc = torchrun(tmp_path, "signal", TORCH_ELASTIC_SHUTDOWN_TIMEOUT=timeout, SAVE_S="3")
    deadline = time.time() + 90
    while len(list(tmp_path.glob("ready-*"))) < 2:
        assert proc.poll() is None and time.time() < deadline, proc.stdout.read()[-3000:]
        time.sleep(0.2)
    proc.send_signal(signal.SIGTERM)
    out, _ = proc.communicate(timeout=60)
    assert proc.returncode == 143, out[-3000:]
    assert len(list(tmp_path.glob("saved-*"))) == (2 if saved else 0), out[-3000:]
