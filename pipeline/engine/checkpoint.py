"""Training checkpoints: tag naming, save with a non-finite guard, load-for-resume, pruning.

One step's checkpoint is a DeepSpeed tag directory ``<output_dir>/checkpoints/stepNNNNNNNN``
(model + optimizer states, per rank) whose client state holds the train counters, every
rank's loader state and RNG states, the resolved config and the MLflow run id. DeepSpeed writes
``latest`` only after a complete save, so a save interrupted by ``kill -9`` is never resumed;
``complete.json`` (every file's size), written last, lets resume detect a truncated or missing
file, name it, and fall back to the newest older checkpoint that is intact.
Loads go through :func:`pipeline.export.safe_torch_loads`: resuming never unpickles code.
"""

from __future__ import annotations

import json
import logging
import os
import pickle
import random
import shutil
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist

from pipeline.engine.safeload import (
    CorruptCheckpoint,
    model_states_file,
    safe_torch_loads,
    unsafe_checkpoint,
)

log = logging.getLogger("avfusion.checkpoint")


MARKER = "complete.json"


class CheckpointNotWritten(OSError):
    """A save failed (disk full, write limit); the message names the step and the kept one."""


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
    state = {
        "torch": torch.get_rng_state(),
        "numpy": np.random.get_state(),
        "python": random.getstate(),
    }
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
    local = torch.stack(
        [torch.linalg.vector_norm(t.float(), float("inf")) for t in tensors if t.numel()]
    )
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
        return (
            (self.root / tag_for(step)).is_dir()
            and latest.is_file()
            and latest.read_text().strip() == tag_for(step)
        )

    def save(self, step: int, train_state: dict, loader, run_id: str | None) -> None:
        """Write ``tag_for(step)`` unless it is already the latest; refuse non-finite weights."""
        if self.is_saved(step):
            return  # e.g. max_steps hit at an epoch end
        if not weights_finite(self.engine):
            raise NonFiniteWeights(
                f"non-finite weights after step {step}: no checkpoint written "
                f"(the last one in {self.root} is intact)"
            )
        state = {
            **train_state,
            "loader": gather_objects(loader.state_dict()),
            "rng": gather_objects(rng_state()),
            "mlflow_run_id": gather_objects(run_id)[0],
        }
        try:
            self.engine.save_checkpoint(str(self.root), tag=tag_for(step), client_state=state)
        except (OSError, RuntimeError) as e:  # a full disk, a write limit: torch.save's errors
            raise CheckpointNotWritten(self._not_written(step, e)) from None
        dist.barrier()
        if self.rank == 0:
            write_marker(self.root / tag_for(step))
            prune_checkpoints(self.root, self.keep_last)
        dist.barrier()

    def _not_written(self, step: int, e: BaseException) -> str:
        """The one-line error for a failed save; rank 0 removes the unfinished tag directory."""
        tag_dir = self.root / tag_for(step)
        if self.rank == 0:
            shutil.rmtree(tag_dir, ignore_errors=True)
        latest = self.root / "latest"
        kept = latest.read_text().strip() if latest.is_file() else None
        reason = getattr(e, "strerror", None) or str(e).strip().splitlines()[-1][:200]
        return f"{tag_dir}: checkpoint not written ({reason}); " + (
            f"the newest complete one, {kept}, is intact" if kept else "no earlier checkpoint"
        )

    def load(self, candidates: list[Path], loader) -> dict:
        """Load the first complete checkpoint of ``candidates`` (tag directories, newest first);
        restore this rank's loader and RNG. A damaged one is skipped with a warning naming it.

        Returns the client state (train counters, ``mlflow_run_id``, ``same_world``).
        """
        for tag_dir in candidates:
            try:
                state = self._load_tag(tag_dir)
                break
            except (CorruptCheckpoint, RuntimeError, EOFError, OSError) as e:
                log.warning("train.resume: skipping %s: %s", tag_dir, str(e).splitlines()[0][:300])
        else:
            raise CorruptCheckpoint(
                f"train.resume: no loadable checkpoint among {[str(c) for c in candidates]}"
            )
        same_world = len(state["loader"]) == self.world_size
        loader.load_state_dict(state["loader"])  # all ranks' states: exact at any world size
        if same_world:
            set_rng_state(state["rng"][self.rank])
        log.info("resumed from %s at step %d (epoch %d)", tag_dir, state["step"], state["epoch"])
        return {**state, "same_world": same_world}

    def _load_tag(self, tag_dir: Path) -> dict:
        verify_marker(tag_dir)
        try:
            with safe_torch_loads():
                _, state = self.engine.load_checkpoint(str(tag_dir.parent), tag=tag_dir.name)
        except pickle.UnpicklingError as e:
            raise unsafe_checkpoint(tag_dir, e) from None
        if state is None:
            raise CorruptCheckpoint(f"{tag_dir}: DeepSpeed found no checkpoint to load")
        return state


def write_marker(tag_dir: Path) -> None:
    """Commit ``tag_dir``: record every file's size in ``complete.json``, written last (atomically)."""
    files = {
        str(f.relative_to(tag_dir)): f.stat().st_size
        for f in sorted(tag_dir.rglob("*"))
        if f.is_file()
    }
    tmp = tag_dir / f".{MARKER}.tmp"
    tmp.write_text(json.dumps({"files": files}, indent=1))
    tmp.replace(tag_dir / MARKER)


def verify_marker(tag_dir: Path) -> None:
    """Raise CorruptCheckpoint naming the first missing or resized file. A tag without a marker
    (a universal checkpoint, or one written before markers) is DeepSpeed's word alone."""
    marker = tag_dir / MARKER
    if not marker.is_file():
        return
    for name, size in json.loads(marker.read_text())["files"].items():
        f = tag_dir / name
        if not f.is_file() or f.stat().st_size != size:
            got = f.stat().st_size if f.is_file() else "missing"
            raise CorruptCheckpoint(f"{f}: expected {size} bytes, found {got}")


def check_writable(root: Path) -> None:
    """Create ``root`` and prove a file can be written there (before any training work)."""
    probe = root / f".write-test-{os.getpid()}"
    try:
        root.mkdir(parents=True, exist_ok=True)
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as e:
        raise PermissionError(
            f"train.output_dir: cannot write checkpoints to {root} ({e.strerror or e})"
        ) from None


def resume_candidates(resume: str, root: Path) -> list[Path]:
    """Tag directories to try, newest first (``train.resume``: auto | never | checkpoint root |
    one step directory). A root yields its ``latest`` tag, then the older step tags."""
    if resume == "never":
        return []
    path = root if resume == "auto" else Path(resume)
    if resume != "auto" and model_states_file(path):
        return [path]
    latest = path / "latest"
    if not latest.is_file():
        if resume == "auto":
            return []
        raise FileNotFoundError(
            f"train.resume: {path} is neither a checkpoint folder ('latest' file) "
            f"nor a step directory"
        )
    first = latest.read_text().strip()
    older = sorted(
        (p.name for p in path.glob("step*") if p.is_dir() and p.name != first), reverse=True
    )
    return [path / first] + [path / t for t in older]


def prune_checkpoints(root: Path, keep_last: int) -> list[str]:
    """Delete all but the newest ``keep_last`` intact step tags (main rank, after a barrier);
    a damaged one (a file missing or cut short, which resume skipped) is deleted with a warning
    naming the file, so that ``keep_last`` counts checkpoints that load."""
    latest = (root / "latest").read_text().strip() if (root / "latest").exists() else None
    tags = sorted(p.name for p in root.glob("step*") if p.is_dir())
    damaged = {t: why for t in tags if t != latest and (why := marker_problem(root / t))}
    intact = [t for t in tags if t not in damaged]
    doomed = [t for t in intact[:-keep_last] if t != latest] if keep_last > 0 else []
    for tag, why in damaged.items():
        log.warning("removing the damaged checkpoint %s (%s)", root / tag, why)
    for tag in [*damaged, *doomed]:
        shutil.rmtree(root / tag, ignore_errors=True)
    return sorted([*damaged, *doomed])


def marker_problem(tag_dir: Path) -> str | None:
    """What :func:`verify_marker` finds wrong with ``tag_dir`` (None: intact, or no marker)."""
    try:
        verify_marker(tag_dir)
    except CorruptCheckpoint as e:
        return str(e)
    return None
