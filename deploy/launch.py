"""Container entry of a training node: torch-distributed environment → ``torchrun -m pipeline.train``.

``python -m deploy.launch --config CONFIG [key=value ...]`` reads the variables Kubeflow
Trainer's torch runtime injects into container "node" (the rendered JobSet sets the same ones):

    PET_NNODES          nodes                     → --nnodes
    PET_NPROC_PER_NODE  processes (GPUs) per node → --nproc-per-node   (int, auto, gpu, cpu)
    PET_NODE_RANK       this node (completion index; JOB_COMPLETION_INDEX if unset) → --node-rank
    PET_MASTER_ADDR     node 0's hostname         → --master-addr
    PET_MASTER_PORT     rendezvous port           → --master-port      (default 29500)

and replaces itself with torchrun (signals such as a preemption's SIGTERM reach it directly),
which gives every worker MASTER_ADDR, MASTER_PORT, WORLD_SIZE, RANK and LOCAL_RANK.
"""

from __future__ import annotations

import os
import shlex
import sys
from collections.abc import Mapping, Sequence

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


def main(argv: Sequence[str] | None = None) -> None:
    cmd = torchrun_argv(os.environ, list(sys.argv[1:] if argv is None else argv))
    print(f"deploy.launch: {shlex.join(cmd)}", file=sys.stderr, flush=True)
    os.execv(cmd[0], cmd)


if __name__ == "__main__":
    main()
