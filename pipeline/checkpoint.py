"""Training checkpoints: tag naming, save with a non-finite guard, load-for-resume, pruning.

One step's checkpoint is a DeepSpeed tag directory ``<output_dir>/checkpoints/stepNNNNNNNN``
(model + optimizer states, per rank) whose client state holds the train counters, every
rank's loader state and RNG states, the resolved config and the MLflow run id. DeepSpeed writes
``latest`` only after a complete save, so a save interrupted by ``kill -9`` is never resumed.
Loads go through :func:`pipeline.export.safe_torch_loads`: resuming never unpickles code.
"""
from __future__ import annotations

import logging
import os
import pickle
import random
import shutil
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist

from pipeline.export import UnsafeCheckpoint, safe_torch_loads

log = logging.getLogger("avfusion.checkpoint")


class NonFiniteWeights(FloatingPointError):
    """A save was refused: some weight is NaN/inf (no checkpoint holds non-finite weights)."""


def tag_for(step: int) -> str:
    return f"step{step:08d}"


def gather_objects(obj) -> list:
    """All ranks' ``obj`` in rank order (every rank gets the list)."""
    out = [None] * dist.get_world_size()
    dist.all_gather_object(out, obj)
    return out


def rng_state() -> dict:
    """This process's RNG states (saved per rank in every checkpoint)."""
    state = {"torch": torch.get_rng_state(), "numpy": np.random.get_state(), "python": random.getstate()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    np.random.set_state(state["numpy"])
    random.setstate(state["python"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def weights_finite(engine) -> bool:
    """True on every rank iff every rank's weights (its ZeRO-3 partition, or all) are finite."""
    tensors = [getattr(p, "ds_tensor", p).detach() for p in engine.module.parameters()]
    local = torch.stack([torch.linalg.vector_norm(t.float(), float("inf")) for t in tensors if t.numel()])
    bad = (~torch.isfinite(local)).any().to(torch.float32).reshape(1)
    dist.all_reduce(bad)
    return bad.item() == 0


class Checkpointer:
    """Saves and restores one run's checkpoints under ``root`` (rank-collective calls)."""

    def __init__(self, engine, root: Path, keep_last: int, rank: int, world_size: int):
        self.engine, self.root, self.keep_last = engine, Path(root), keep_last
        self.rank, self.world_size = rank, world_size

    def is_saved(self, step: int) -> bool:
        latest = self.root / "latest"
        return (self.root / tag_for(step)).is_dir() and latest.is_file() and latest.read_text().strip() == tag_for(step)

    def save(self, step: int, train_state: dict, loader, run_id: str | None) -> None:
        """Write ``tag_for(step)`` unless it is already the latest; refuse non-finite weights."""
        if self.is_saved(step):
            return  # e.g. max_steps hit at an epoch end
        if not weights_finite(self.engine):
            raise NonFiniteWeights(f"non-finite weights after step {step}: no checkpoint written "
                                   f"(the last one in {self.root} is intact)")
        state = {**train_state, "loader": gather_objects(loader.state_dict()),
                 "rng": gather_objects(rng_state()), "mlflow_run_id": gather_objects(run_id)[0]}
        self.engine.save_checkpoint(str(self.root), tag=tag_for(step), client_state=state)
        dist.barrier()
        if self.rank == 0:
            prune_checkpoints(self.root, self.keep_last)

    def load(self, path: Path, loader) -> dict:
        """Load the engine from ``path`` (a checkpoint root); restore this rank's loader and RNG.

        Returns the client state (train counters, ``mlflow_run_id``, ``same_world``).
        """
        try:
            with safe_torch_loads():
                _, state = self.engine.load_checkpoint(str(path))
        except pickle.UnpicklingError as e:
            raise UnsafeCheckpoint(f"{path}: refusing to unpickle a checkpoint that holds objects other than "
                                   f"tensors and RNG states ({str(e).splitlines()[0][:160]})") from None
        if state is None:
            raise RuntimeError(f"train.resume: could not load the checkpoint in {path}")
        same_world = len(state["loader"]) == self.world_size
        loader.load_state_dict(state["loader"][self.rank if same_world else 0])
        if same_world:
            set_rng_state(state["rng"][self.rank])
        log.info("resumed from %s at step %d (epoch %d)", path, state["step"], state["epoch"])
        return {**state, "same_world": same_world}


def check_writable(root: Path) -> None:
    """Create ``root`` and prove a file can be written there (before any training work)."""
    probe = root / f".write-test-{os.getpid()}"
    try:
        root.mkdir(parents=True, exist_ok=True)
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as e:
        raise PermissionError(f"train.output_dir: cannot write checkpoints to {root} "
                              f"({e.strerror or e})") from None


def resolve_resume(resume: str, root: Path) -> Path | None:
    """The checkpoint root to resume from, or None (``train.resume``: auto | never | PATH)."""
    if resume == "never":
        return None
    if resume == "auto":
        return root if (root / "latest").is_file() else None
    path = Path(resume)
    if not (path / "latest").is_file():
        raise FileNotFoundError(f"train.resume: {path} holds no DeepSpeed checkpoint ('latest' file missing)")
    return path


def prune_checkpoints(root: Path, keep_last: int) -> list[str]:
    """Delete all but the newest ``keep_last`` step tags (main rank, after a barrier)."""
    tags = sorted(p.name for p in root.glob("step*") if p.is_dir())
    latest = (root / "latest").read_text().strip() if (root / "latest").exists() else None
    doomed = [t for t in tags[:-keep_last] if t != latest] if keep_last > 0 else []
    for tag in doomed:
        shutil.rmtree(root / tag, ignore_errors=True)
    return doomed
