"""Export a DeepSpeed training checkpoint as fp32 official-key weights (safetensors).

    avfusion export runs/debug/checkpoints --out model.safetensors

The result loads with ``model.checkpoints.load_official`` (strict) and with
``safetensors.torch.load_file``; the resolved training config travels in its metadata.
"""

from __future__ import annotations

import contextlib
import dataclasses
import enum
import json
import os
import pickle
import re
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TypeVar

import numpy as np
import torch
import yaml

from preprocess.errors import AvfusionError
from preprocess.urls import redact_tree

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
    cannot read (cut short) raises :class:`pipeline.checkpoint.CorruptCheckpoint` naming it.
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
    from pipeline.checkpoint import CorruptCheckpoint

    try:
        with safe_torch_loads():
            return load()
    except pickle.UnpicklingError as e:
        raise unsafe_checkpoint(where if where.is_dir() else where.parent, e) from None
    except (RuntimeError, EOFError) as e:  # a file cut short: "PytorchStreamReader failed ..."
        raise CorruptCheckpoint(f"{where}: unreadable ({_first_line(e)})") from None


def _first_line(e: BaseException) -> str:
    return _ANSI.sub("", str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__)


def check_model_preset(sd: dict[str, torch.Tensor], config: dict, source: str) -> None:
    """Raise CheckpointError unless ``sd`` loads strictly into the model its config names
    (or, without a config, into some registry preset)."""
    from model import AVMAE, get_model_config
    from model.checkpoints import CheckpointError, _detect_preset, strict_mismatch
    from model.presets import AVMAEConfig

    model_cfg = config.get("model") or {}
    if not model_cfg.get("preset"):
        _detect_preset(sd, source)
        return
    fields = {f.name for f in dataclasses.fields(AVMAEConfig)}
    overrides = {k: v for k, v in model_cfg.items() if k in fields and v is not None}
    with torch.device("meta"):
        model = AVMAE(get_model_config(model_cfg["preset"], **overrides))
    problem = strict_mismatch(model, sd)
    if problem:
        raise CheckpointError(
            f"{source}: does not match model preset {model_cfg['preset']!r}: {problem}"
        )


def export(ckpt: Path, out: Path, tag: str | None = None) -> Path:
    from safetensors.torch import save_file

    from model.checkpoints import adapt_keys
    from pipeline.checkpoint_choice import checkpoint_candidates, newest_intact

    candidates = checkpoint_candidates(ckpt, tag)  # a checkpoint at all, before the destination
    with _writing(out):  # the destination takes a file: known before the (long) consolidation
        out.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=out.parent, prefix=".avfusion-export-"):
            pass
    tag_dir, (sd, client) = newest_intact(candidates, consolidated_state_dict)
    config = client.get("config", {})
    check_model_preset(sd, config, str(tag_dir))
    metadata = {
        "format": "avfusion-avmae-v1",
        "preset": str(config.get("model", {}).get("preset", "")),
        "step": str(client.get("step", "")),
        "config": yaml.safe_dump(redact_tree(config), sort_keys=False),
    }
    tmp = out.with_name(out.name + ".tmp")
    with _writing(out, tmp):
        save_file(adapt_keys(sd, "official"), str(tmp), metadata=metadata)
        tmp.chmod(0o644)  # a file meant to be shared (safetensors writes 0600)
        tmp.replace(out)
    return out


class ExportNotWritten(Exception):
    """The destination could not take the export (named, with the reason)."""


@contextlib.contextmanager
def _writing(out: Path, tmp: Path | None = None) -> Iterator[None]:
    """I/O errors inside (safetensors' own are not OSError) become one ExportNotWritten naming
    ``out``; a partial ``tmp`` is removed."""
    from safetensors import SafetensorError

    try:
        yield
    except (OSError, SafetensorError) as e:
        if tmp is not None:
            tmp.unlink(missing_ok=True)
        reason = getattr(e, "strerror", None) or str(e)
        raise ExportNotWritten(f"{out}: cannot write the export ({reason})") from e


def run(args) -> int:
    from model.checkpoints import CheckpointError

    try:
        path = export(Path(args.ckpt), Path(args.out), args.tag)
    except (FileNotFoundError, UnsafeCheckpoint, CheckpointError, ExportNotWritten) as e:
        raise AvfusionError(str(e)) from None
    except OSError as e:
        raise AvfusionError(f"{e.filename or args.ckpt}: {e.strerror or e}") from None
    print(json.dumps({"out": str(path), "bytes": path.stat().st_size}))
    return 0


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "export",
        help="export a training checkpoint to official-key safetensors",
        description=__doc__,
        formatter_class=__import__("argparse").RawDescriptionHelpFormatter,
    )
    p.add_argument("ckpt", help="checkpoint root (output_dir/checkpoints) or one step directory")
    p.add_argument("--out", required=True, help="destination .safetensors file")
    p.add_argument("--tag", default=None, help="checkpoint tag (default: the 'latest' one)")
    p.set_defaults(func=run)
