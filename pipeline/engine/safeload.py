"""Reading checkpoints others hand around: DeepSpeed tag directories and their model states,
with a restricted unpickler (no code ever runs from a checkpoint).

:func:`safe_torch_loads` makes every ``torch.load`` inside it (DeepSpeed's too) run the
``weights_only`` unpickler with :func:`safe_globals` allowed; :func:`consolidated_state_dict`
merges ZeRO partitions into fp32 weights. Used by resume (:mod:`pipeline.engine.checkpoint`),
``avfusion export`` and the evaluations' encoder loading.
"""

from __future__ import annotations

import contextlib
import enum
import os
import pickle
import re
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TypeVar

import numpy as np
import torch

from avbase.errors import AvfusionError

T = TypeVar("T")

# rank 0's model states: "mp_rank_00_…" (ZeRO 0-2) or "zero_pp_rank_0_mp_rank_00_…" (ZeRO-3)
MODEL_STATES = ("mp_rank_00_model_states.pt", "zero_pp_rank_0_mp_rank_00_model_states.pt")


def _allowed_enums() -> tuple[type[enum.Enum], ...]:
    from deepspeed.runtime.zero.config import ZeroStageEnum

    return (ZeroStageEnum,)


def enum_member(cls: object, name: object) -> enum.Enum:
    """``builtins.getattr`` as the restricted unpickler sees it: only ``getattr(E, 'member')``
    for an allowed enum class E.

    Some Python 3.11 patch releases (Debian 12's 3.11.2 among them) pickle an ``int``-mixin enum
    member as ``getattr(ZeroStageEnum, 'gradients')`` where 3.11.7, 3.12 and 3.13 write
    ``ZeroStageEnum(2)``, so DeepSpeed's ZeRO optimizer states hold either form. Any other use of
    ``getattr`` (another class, a dunder, a module attribute) raises UnpicklingError.
    """
    if (
        isinstance(cls, type)
        and cls in _allowed_enums()
        and isinstance(name, str)
        and name in cls.__members__
    ):
        return cls[name]
    raise pickle.UnpicklingError(
        f"refusing getattr({getattr(cls, '__name__', type(cls).__name__)}, {name!r}): only "
        "members of allowed enum classes may be looked up"
    )


def safe_globals() -> list:
    """The only non-tensor classes our checkpoints hold: numpy arrays (RNG states in the client
    state) and DeepSpeed's plain data classes in its optimizer states (built from their fields,
    no code runs), plus ``getattr`` restricted to enum members (:func:`enum_member`) under both
    names a pickle may give it (``__builtin__`` at protocol 2, ``builtins`` above)."""
    from deepspeed.runtime.fp16.loss_scaler import DynamicLossScaler, LossScaler
    from deepspeed.utils.tensor_fragment import fragment_address

    return [
        np._core.multiarray._reconstruct,
        np.ndarray,
        np.dtype,
        type(np.dtype(np.uint32)),
        *_allowed_enums(),
        LossScaler,
        DynamicLossScaler,
        fragment_address,
        (enum_member, "builtins.getattr"),
        (enum_member, "__builtin__.getattr"),
    ]


class UnsafeCheckpoint(ValueError):
    """A checkpoint file needs full unpickling (it could run code); the message names the file."""


class CorruptCheckpoint(AvfusionError, RuntimeError):
    """A checkpoint file is missing, truncated or unreadable; the message names it (exit 2)."""


_ANSI = re.compile(r"\x1b\[[0-9;]*m")
_OBJECTION = re.compile(r"WeightsUnpickler error|GLOBAL|getattr|[Uu]nsupported|unrecognized")


def unsafe_checkpoint(tag_dir: Path, e: pickle.UnpicklingError) -> UnsafeCheckpoint:
    """The one-line refusal for ``tag_dir``: the line of torch's message that says what the
    restricted unpickler objected to (not its boilerplate), without terminal colour codes."""
    lines = [_ANSI.sub("", x).strip() for x in str(e).splitlines() if x.strip()]
    why = next((x for x in lines if _OBJECTION.search(x)), lines[0] if lines else "")
    return UnsafeCheckpoint(
        f"{tag_dir}: refusing to unpickle a checkpoint that holds objects other than "
        f"tensors and RNG states ({why.removeprefix('WeightsUnpickler error: ')[:160]})"
    )


@contextlib.contextmanager
def safe_torch_loads() -> Iterator[None]:
    """Every ``torch.load`` inside (DeepSpeed's too, which pass ``weights_only=False``) runs the
    restricted unpickler with :func:`safe_globals` allowed; anything else raises UnpicklingError."""
    old = os.environ.get("TORCH_FORCE_WEIGHTS_ONLY_LOAD")
    os.environ["TORCH_FORCE_WEIGHTS_ONLY_LOAD"] = "1"
    try:
        with torch.serialization.safe_globals(safe_globals()):
            yield
    finally:
        if old is None:
            os.environ.pop("TORCH_FORCE_WEIGHTS_ONLY_LOAD", None)
        else:
            os.environ["TORCH_FORCE_WEIGHTS_ONLY_LOAD"] = old


def model_states_file(tag_dir: Path) -> Path | None:
    return next((tag_dir / n for n in MODEL_STATES if (tag_dir / n).is_file()), None)


def resolve_tag_dir(path: Path, tag: str | None = None) -> Path:
    """``path`` is a checkpoint root (with ``latest``) or one tag directory."""
    if tag is None and model_states_file(path):
        return path
    if tag is None:
        latest = path / "latest"
        if not latest.is_file():
            raise FileNotFoundError(
                f"{path}: not a DeepSpeed checkpoint (no 'latest' file, no model states)"
            )
        tag = latest.read_text().strip()
    tag_dir = path / tag
    if not model_states_file(tag_dir):
        raise FileNotFoundError(f"{tag_dir}: no {' or '.join(MODEL_STATES)}")
    return tag_dir


def consolidated_state_dict(tag_dir: Path) -> tuple[dict[str, torch.Tensor], dict]:
    """fp32 weights (ZeRO partitions merged) and the checkpoint's client state.

    Checkpoints are files others hand around: every load is restricted (:func:`safe_torch_loads`),
    so a crafted pickle raises :class:`UnsafeCheckpoint` instead of running code; a file torch
    cannot read (cut short) raises :class:`CorruptCheckpoint` naming it.
    """
    states_file = model_states_file(tag_dir)
    states = restricted_load(
        states_file, lambda: torch.load(states_file, map_location="cpu", weights_only=True)
    )
    client = {
        k: states[k]
        for k in ("step", "epoch", "samples_seen", "config", "mlflow_run_id")
        if k in states
    }
    stage = (states.get("ds_config") or {}).get("zero_optimization", {}).get("stage", 0)
    if any(tag_dir.glob("*optim_states.pt")) and stage > 0:
        from deepspeed.utils.zero_to_fp32 import get_fp32_state_dict_from_zero_checkpoint

        sd = restricted_load(
            tag_dir,
            lambda: get_fp32_state_dict_from_zero_checkpoint(str(tag_dir.parent), tag_dir.name),
        )
    else:
        sd = states.get("module") or {}
    if not sd:
        raise UnsafeCheckpoint(f"{tag_dir}: the checkpoint holds an empty model state dict")
    return {k: v.detach().float().contiguous().clone() for k, v in sd.items()}, client


def restricted_load(where: Path, load: Callable[[], T]) -> T:
    """``load()`` under :func:`safe_torch_loads`; its failures as one error naming ``where``."""
    try:
        with safe_torch_loads():
            return load()
    except pickle.UnpicklingError as e:
        raise unsafe_checkpoint(where if where.is_dir() else where.parent, e) from None
    except (RuntimeError, EOFError) as e:  # a file cut short: "PytorchStreamReader failed ..."
        raise CorruptCheckpoint(f"{where}: unreadable ({_first_line(e)})") from None


def _first_line(e: BaseException) -> str:
    return _ANSI.sub("", str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__)
