"""Process group and the DeepSpeed engine config (checkpoints: pipeline/engine/checkpoint.py).

Works under the ``deepspeed`` launcher (one node, hostfile, ``--no_ssh --node_rank``), under
``torchrun`` and under the environment Kubernetes training operators set (both export
RANK / WORLD_SIZE / LOCAL_RANK / MASTER_ADDR / MASTER_PORT). Without any of these, a
single-process group is created (``avfusion train``). gloo on CPU, nccl on GPUs.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import socket
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.distributed as dist

from avbase.errors import AvfusionError, Preempted, error_line, run_cli
from pipeline.config import EngineSpec


@dataclass(frozen=True)
class DistInfo:
    rank: int
    world_size: int
    local_rank: int
    device: torch.device

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def init_distributed() -> DistInfo:
    """Initialise torch.distributed from the launcher's environment."""
    import deepspeed

    if "RANK" not in os.environ:  # plain `python -m pipeline.train` / `avfusion train`
        os.environ.update(
            RANK="0",
            LOCAL_RANK="0",
            WORLD_SIZE="1",
            MASTER_ADDR="127.0.0.1",
            MASTER_PORT=str(_free_port()),
        )
    cuda = torch.cuda.is_available() and os.environ.get("DS_ACCELERATOR", "cuda") != "cpu"
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if cuda:
        torch.cuda.set_device(local_rank)
    try:
        deepspeed.init_distributed(dist_backend="nccl" if cuda else "gloo")
    except dist.DistNetworkError as e:
        if "EADDRINUSE" not in str(e):
            raise
        raise port_in_use() from None
    if not cuda:
        release_shm_segment(dist.get_rank(), dist.get_world_size())
    device = torch.device("cuda", local_rank) if cuda else torch.device("cpu")
    return DistInfo(dist.get_rank(), dist.get_world_size(), local_rank, device)


def shm_segment(rank: int) -> Path:
    """The POSIX shared-memory segment of DeepSpeed's CPU all-reduce for this job and rank
    (the name ``ops/csrc/cpu/comm/shm.cpp`` gives it)."""
    job = f"{os.getuid()}_{os.environ.get('MASTER_ADDR', '')}_{os.environ.get('MASTER_PORT', '')}"
    return Path("/dev/shm") / f"deepspeed_allreduce_buffer_{job}_{rank}"


def release_shm_segment(rank: int, world_size: int) -> None:
    """Unlink this rank's all-reduce segment once every rank has mapped every peer's.

    NOTE: DeepSpeed's CPU comm op (ranks all on one node) creates a 69-MB segment per rank at
    ``init_distributed`` and never unlinks it, so each launch left ``world_size`` × 69 MB of RAM
    in /dev/shm (after ~110 launches on this 24-GiB machine the OOM killer ended the test suite).
    The peers map each other's segments inside ``init_distributed``; after the barrier the names
    can go: the mappings stay valid, and the memory is freed when the last rank exits, kill -9
    included.
    """
    if world_size < 2:
        return
    dist.barrier()
    shm_segment(rank).unlink(missing_ok=True)


def port_in_use() -> AvfusionError:
    """The one line for a rendezvous port that another process holds (EADDRINUSE)."""
    port, addr = os.environ.get("MASTER_PORT"), os.environ.get("MASTER_ADDR")
    return AvfusionError(
        f"MASTER_PORT {port}: the port is in use on {addr} (another job, or one still ending); "
        "choose a free one: make demo DEMO_PORT=<port>, deepspeed --master_port <port>, "
        "torchrun --master-port <port>, or MASTER_PORT=<port>"
    )


def accumulation_steps(spec: EngineSpec, world_size: int) -> int:
    """Micro-batches per optimizer step so that batch × world × accum = effective batch."""
    per_step = spec.batch_size * world_size
    target = spec.train.effective_batch_size or per_step
    if target % per_step:
        raise ValueError(
            f"train.effective_batch_size: {target} is not a multiple of {spec.batch_key} × world "
            f"size = {spec.batch_size} × {world_size}"
        )
    return target // per_step


def deepspeed_config(spec: EngineSpec, world_size: int) -> dict:
    """The DeepSpeed JSON config generated from ours (the optimizer is built by us).

    Every value the recipe depends on is written out: DeepSpeed 0.19 defaults
    ``gradient_clipping`` to 1.0 and turns on a synchronising throughput timer.
    """
    accum = accumulation_steps(spec, world_size)
    ds = {
        "train_micro_batch_size_per_gpu": spec.batch_size,
        "gradient_accumulation_steps": accum,
        "train_batch_size": spec.batch_size * world_size * accum,
        "zero_optimization": _zero_config(spec),
        "gradient_clipping": spec.grad_clip,  # 0.0: no clipping (the official recipe)
        "prescale_gradients": False,
        "gradient_predivide_factor": 1.0,
        "steps_per_print": 10**9,
        "wall_clock_breakdown": False,
        "timers": {
            "throughput": {"enabled": False, "synchronized": False}
        },  # no per-step device sync
        "zero_allow_untested_optimizer": True,
        "zero_force_ds_cpu_optimizer": False,
    }
    if spec.train.load_universal:  # see docs/RECIPES.md: resuming at another world size
        ds["checkpoint"] = {"load_universal": True}
    ds.update(_precision_config(spec.train.precision))
    return ds


def _zero_config(spec: EngineSpec) -> dict:
    """The ZeRO section: at stages 1–2 the cheapest gradient path DeepSpeed offers.

    NOTE: DeepSpeed computes the global gradient norm every step by default (a per-tensor pass
    and a host read); without clipping nothing uses it, so it is off. ``contiguous_gradients``
    (copy each gradient into the bucket as its hook fires: a narrow + copy + view per parameter
    tensor in Python) is off too: the bucket is flattened once at reduction instead; measured in
    benchmarks/bench_step.py (CPU, debug preset, ZeRO 2: 0.649 → 0.567 s per step, 1.27 → 1.11×
    the plain loop).
    """
    zero = {"stage": spec.train.zero_stage}
    if spec.train.zero_stage in (1, 2):
        zero["contiguous_gradients"] = False
        if spec.grad_clip == 0:
            zero["compute_grad_norm"] = False
    return zero


def _precision_config(precision: str) -> dict:
    """The DeepSpeed precision keys for ``train.precision``.

    NOTE: bf16 runs as torch autocast over fp32 parameters (the official recipe's AMP), not as
    DeepSpeed's ``bf16`` mode: the parameters are the fp32 master weights, so at ZeRO 0 our
    fused/foreach AdamW steps them directly, and at ZeRO 1–3 the ZeRO optimizer partitions fp32
    states; DeepSpeed's BF16_Optimizer (per-tensor copy loops, a host sync per parameter in its
    overflow check) is never on the path. Gradients are reduced in fp32
    (``lower_precision_safe_modules`` empty) as DDP does in the official code. fp16 keeps
    DeepSpeed's dynamic loss scaling (fp16 weights + fp32 master copy) with the official
    GradScaler's constants: start at 2**16, halve on every overflow (hysteresis 1), double
    after 2000 clean steps.
    """
    off = {"bf16": {"enabled": False}, "fp16": {"enabled": False}}
    if precision == "bf16":
        return off | {
            "torch_autocast": {
                "enabled": True,
                "dtype": "bfloat16",
                "lower_precision_safe_modules": [],
            }
        }
    if precision == "fp16":
        return off | {
            "fp16": {
                "enabled": True,
                "loss_scale": 0,
                "initial_scale_power": 16,
                "loss_scale_window": 2000,
                "hysteresis": 1,
                "min_loss_scale": 1,
            }
        }
    return off


def build_engine(model: torch.nn.Module, optimizer, spec: EngineSpec, world_size: int):
    """``(engine, optimizer)``: DeepSpeed around ``model`` with the generated config.

    NOTE: at ZeRO 0 with one rank the engine's after-backward all-reduce is switched off: it
    flattens every gradient into a bucket, all-reduces it with itself and copies it back
    (≈ 5 ms a step on the CPU debug model, benchmarks/bench_step.py); at ZeRO 1–3 the same call
    finalises the partitioned gradients and stays.
    """
    import deepspeed

    engine, optimizer, _, _ = deepspeed.initialize(
        model=model, optimizer=optimizer, config=deepspeed_config(spec, world_size)
    )
    if world_size == 1 and spec.train.zero_stage == 0:
        engine.enable_backward_allreduce = False
    return engine, optimizer


def engine_dtype(spec: EngineSpec) -> torch.dtype:
    """The dtype of the engine's parameters, which is the dtype batches are fed in."""
    return torch.float16 if spec.train.precision == "fp16" else torch.float32


@contextlib.contextmanager
def process_group() -> Iterator[DistInfo]:
    """Log by rank (INFO on rank 0), join the process group, and leave it however the body ends."""
    rank = os.environ.get("RANK", "0")
    logging.basicConfig(
        level=logging.INFO if rank == "0" else logging.WARNING,
        format=f"%(asctime)s [rank {rank}] %(name)s: %(message)s",
    )
    info = init_distributed()
    try:
        yield info
    except (FloatingPointError, Preempted):
        raise  # non-finite loss or weights, a stop signal: agreed by all ranks, the same on each
    except Exception as e:
        if info.world_size > 1:  # this rank's own failure (a shard, a save): it reports it
            raise RankFailed(info.rank, e) from e
        raise
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()


class RankFailed(AvfusionError):
    """A failure after the process group was joined; ``str(e)`` says which rank it hit."""

    def __init__(self, rank: int, cause: Exception):
        super().__init__(f"rank {rank}: {error_line(cause).removeprefix('error: ')}")


def rank_main(run: Callable[[argparse.Namespace], int], args: argparse.Namespace) -> int:
    """Every rank runs ``run(args)``. Errors before the process group is joined (config, data,
    folders: the same on all ranks) are printed once, by rank 0; later ones by the rank they hit,
    prefixed with it (a shard that one rank could not read, a failed save)."""
    rank = os.environ.get("RANK", "0")
    return run_cli(run, args, quiet=lambda e: rank != "0" and not isinstance(e, RankFailed))
