"""Preemption on Kubernetes: how long a training pod may take to stop, and the policies under
which a preempted run restarts by itself.

On SIGTERM every rank stops at the next optimizer-step boundary, saves a checkpoint and exits
143 (pipeline/engine/stop.py); ``deploy.launch`` makes that the pod's exit code. A pod that
exits 143, or that Kubernetes marks ``DisruptionTarget`` (scheduler preemption, eviction, a
node drained or shut down), fails its Job through the Job's ``podFailurePolicy`` with reason
``PodFailurePolicy``; the JobSet rule for that reason recreates every node without counting
against ``failurePolicy.maxRestarts``, which still bounds restarts after real failures.

The grace period (docs/DEPLOY.md "Resuming a preempted job", docs/BENCHMARKS.md): a save is
``CHECKPOINT_GB`` (measured by benchmarks/bench_checkpoint.py) at ``SHARED_FS_GB_PER_S``; a
signal is acted on within two optimizer steps, or after a periodic save already under way, so
the worst case is two saves, two steps and the exit.
"""

from __future__ import annotations

import math

EXIT_PREEMPTED = 143  # avbase.errors.EXIT_PREEMPTED (deploy imports nothing of ours)

# Measured (benchmarks/bench_checkpoint.py, 2-core VM, local disk, docs/BENCHMARKS.md): the
# vggsound preset's checkpoint is 5.127 GB (320.6M parameters × 16.0 bytes: weights, fp32 master
# copy, AdamW's two moments), saved in 5.7–7.0 s (0.90–0.74 GB/s; the faster bounds the floor).
# The as2m preset (379.0M parameters) at the same 16.0 bytes per parameter: 6.06 GB, the largest.
CHECKPOINT_GB = 6.06
MEASURED_GB_PER_S = 0.90
SHARED_FS_GB_PER_S = 0.10  # conservative: one NFS server behind a 1 Gb/s link (≈ 117 MB/s)
STEP_ALLOWANCE_S = 10  # two optimizer steps (0.26 s each on an H100, docs/BENCHMARKS.md)
EXIT_ALLOWANCE_S = 20  # tracking flush, loader workers, process-group teardown
AGENT_EXIT_S = 5  # torchrun kills workers this long before the kubelet's SIGKILL, then exits


def save_seconds(gb_per_s: float) -> float:
    return CHECKPOINT_GB / gb_per_s


MIN_GRACE_S = math.ceil(save_seconds(MEASURED_GB_PER_S))  # 7: not even one save fits below
DEFAULT_GRACE_S = 10 * math.ceil(
    (STEP_ALLOWANCE_S + 2 * save_seconds(SHARED_FS_GB_PER_S) + EXIT_ALLOWANCE_S) / 10
)  # 10 + 2 × 60.6 + 20 = 151.2 → 160


def grace_problem(seconds: int) -> str | None:
    """Why ``--grace-seconds`` cannot work, or None."""
    if seconds < MIN_GRACE_S:
        return (
            f"--grace-seconds {seconds}: not even one checkpoint save fits (measured: "
            f"{CHECKPOINT_GB:g} GB at {MEASURED_GB_PER_S:g} GB/s on a local disk, docs/DEPLOY.md "
            f"'Resuming a preempted job'); expected >= {MIN_GRACE_S}, default {DEFAULT_GRACE_S}"
        )
    return None


def agent_env(grace_seconds: int) -> dict:
    """torchrun's wait for its workers after a signal (its default, 30 s, is shorter than a
    save): until just before the kubelet's SIGKILL, so it still exits with its own code."""
    return {
        "name": "TORCH_ELASTIC_SHUTDOWN_TIMEOUT",
        "value": str(max(grace_seconds - AGENT_EXIT_S, 1)),
    }


def pod_failure_policy(container: str) -> dict:
    """Job ``podFailurePolicy``: a disrupted pod or a stop after a signal fails the Job at once
    with reason ``PodFailurePolicy``; any other failure counts against ``backoffLimit`` (0)."""
    return {
        "rules": [
            {
                "action": "FailJob",
                "onPodConditions": [{"type": "DisruptionTarget", "status": "True"}],
            },
            {
                "action": "FailJob",
                "onExitCodes": {
                    "containerName": container,
                    "operator": "In",
                    "values": [EXIT_PREEMPTED],
                },
            },
        ]
    }


def restartable_job(job_spec: dict, container: str) -> None:
    """A Job of the training JobSet: one failed pod fails it, as the policy above says.
    (``podFailurePolicy`` needs ``restartPolicy: Never``; JobSet would default OnFailure.)"""
    job_spec["backoffLimit"] = 0
    job_spec["podFailurePolicy"] = pod_failure_policy(container)
    job_spec.setdefault("template", {}).setdefault("spec", {})["restartPolicy"] = "Never"


def restart_preempted(failure_policy: dict) -> None:
    """JobSet ``failurePolicy`` (its ``maxRestarts`` kept): preemptions restart the set without
    counting; other failures take the default action, RestartJobSet, which counts."""
    failure_policy["rules"] = [
        {
            "name": "Preempted",
            "action": "RestartJobSetAndIgnoreMaxRestarts",
            "onJobFailureReasons": ["PodFailurePolicy"],
        }
    ]
