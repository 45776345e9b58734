"""Container entry of a training node: torch-distributed environment → ``torchrun -m pipeline.train``.

``python -m deploy.launch --config CONFIG [key=value ...]`` reads the variables Kubeflow
Trainer's torch runtime injects into container "node" (the rendered JobSet sets the same ones):

    PET_NNODES          nodes                     → --nnodes
    PET_NPROC_PER_NODE  processes (GPUs) per node → --nproc-per-node   (int, auto, gpu, cpu)
    PET_NODE_RANK       this node (completion index; JOB_COMPLETION_INDEX if unset) → --node-rank
    PET_MASTER_ADDR     node 0's hostname         → --master-addr
    PET_MASTER_PORT     rendezvous port           → --master-port      (default 29500)

and runs torchrun in this process (the container's PID 1: a preemption's SIGTERM reaches it
directly), which gives every worker MASTER_ADDR, MASTER_PORT, WORLD_SIZE, RANK and LOCAL_RANK.

Exit code: 0, or 143 when the node's workers stopped for a signal (pipeline/engine/stop.py: a
checkpoint saved; the Job's podFailurePolicy restarts the run for that code, deploy/preemption.py),
else 1. NOTE: torchrun alone exits 1 for any worker failure, 143 included, and its SIGTERM
path ends in a traceback; on a node that was not signalled the workers stop because another node
was, and only their exit codes say so. After a signal torchrun waits
``TORCH_ELASTIC_SHUTDOWN_TIMEOUT`` seconds (default 30; the manifests set it from the grace
period) for its workers before it kills them.
"""

from __future__ import annotations

import os
import shlex
import signal
import sys
from collections.abc import Iterable, Mapping, Sequence

from deploy.preemption import EXIT_PREEMPTED

TRAIN_MODULE = "pipeline.train"
DEFAULT_PORT = "29500"
NPROC_WORDS = ("auto", "gpu", "cpu")


def _get(env: Mapping[str, str], name: str, fallback: str | None = None) -> str:
    value = env.get(name, "").strip() or (env.get(fallback, "").strip() if fallback else "")
    if not value:
        also = f" (or {fallback})" if fallback else ""
        raise SystemExit(
            f"error: {name}{also} is not set; deploy.launch expects the environment "
            "of a Kubeflow TrainJob (torch runtime) or the rendered JobSet"
        )
    return value


def _int(name: str, value: str, minimum: int) -> str:
    if not value.isdigit() or int(value) < minimum:
        raise SystemExit(f"error: {name}={value!r}: expected an integer >= {minimum}")
    return value


def torchrun_argv(env: Mapping[str, str], train_args: Sequence[str]) -> list[str]:
    """The torchrun command line for this node, from the operator-provided environment."""
    nnodes = _int("PET_NNODES", _get(env, "PET_NNODES"), 1)
    nproc = _get(env, "PET_NPROC_PER_NODE")
    if nproc not in NPROC_WORDS:
        _int("PET_NPROC_PER_NODE", nproc, 1)
    rank = _int("PET_NODE_RANK", _get(env, "PET_NODE_RANK", "JOB_COMPLETION_INDEX"), 0)
    if int(rank) >= int(nnodes):
        raise SystemExit(f"error: PET_NODE_RANK={rank} is not below PET_NNODES={nnodes}")
    port = _int("PET_MASTER_PORT", env.get("PET_MASTER_PORT", "").strip() or DEFAULT_PORT, 1)
    # NOTE: static rendezvous (fixed node count, node rank = completion index), as Kubeflow's
    # torch runtime intends; elastic c10d would reassign ranks and needs a rendezvous id.
    return [
        sys.executable,
        "-m",
        "torch.distributed.run",
        f"--nnodes={nnodes}",
        f"--nproc-per-node={nproc}",
        f"--node-rank={rank}",
        "--rdzv-backend=static",
        f"--master-addr={_get(env, 'PET_MASTER_ADDR')}",
        f"--master-port={port}",
        "-m",
        TRAIN_MODULE,
        *train_args,
    ]


def node_exit_code(worker_codes: Iterable[int]) -> int:
    """The pod's exit code from its failed workers' codes: 143 when they stopped for a signal
    (143; a worker torchrun itself stopped with SIGTERM after the first one exited: -15)."""
    codes = set(worker_codes)
    if EXIT_PREEMPTED in codes and codes <= {EXIT_PREEMPTED, -signal.SIGTERM}:
        return EXIT_PREEMPTED
    return 1


def run_torchrun(args: Sequence[str]) -> int:
    """``torchrun ARGS`` in this process; the node's exit code (module docstring)."""
    from torch.distributed import run as torchrun
    from torch.distributed.elastic.multiprocessing.api import SignalException
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError

    try:
        torchrun.main(list(args))
    except ChildFailedError as e:
        codes = sorted({f.exitcode for f in e.failures.values()})
        code = node_exit_code(codes)
        if code != EXIT_PREEMPTED:
            print(e.format_msg(), file=sys.stderr, flush=True)
        print(f"deploy.launch: workers exited {codes}; exit {code}", file=sys.stderr, flush=True)
        return code
    except SignalException as e:
        name = signal.Signals(e.sigval).name
        print(f"deploy.launch: {name}; exit {128 + e.sigval}", file=sys.stderr, flush=True)
        return 128 + e.sigval
    return 0


def main(argv: Sequence[str] | None = None) -> None:
    cmd = torchrun_argv(os.environ, list(sys.argv[1:] if argv is None else argv))
    print(f"deploy.launch: {shlex.join(cmd)}", file=sys.stderr, flush=True)
    sys.exit(run_torchrun(cmd[3:]))


if __name__ == "__main__":
    main()
