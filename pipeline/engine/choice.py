"""Which checkpoint to read: the newest intact one, and what it was written with.

A checkpoint root holds step tags; the newest may be damaged (a save cut short by a full disk,
a copy cut short). Export, the evaluations' encoder and the pre-flight checks read the newest
*intact* one — a damaged one is skipped with a warning naming its file, as resume does — and
compare the model config a checkpoint carries with the one asked for, before any weights load.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

import torch

from pipeline.engine.checkpoint import verify_marker
from pipeline.engine.safeload import (
    CorruptCheckpoint,
    model_states_file,
    resolve_tag_dir,
    restricted_load,
)

log = logging.getLogger("avfusion.checkpoint")
T = TypeVar("T")
# model-section keys that do not shape the weights: the objective, execution, tower init files
NOT_WEIGHTS = frozenset(
    {
        "image_mask_ratio",
        "audio_mask_ratio",
        "norm_pix_loss",
        "attn_impl",
        "activation_checkpointing",
        "init_image",
        "init_audio",
        "trust_pickle",
    }
)


def checkpoint_candidates(path: Path, tag: str | None = None) -> list[Path]:
    """Tag directories to load, newest first: ``path`` itself (a step directory) or ``path/tag``
    alone; for a checkpoint root its ``latest`` tag, then the older step tags (as resume does)."""
    first = resolve_tag_dir(path, tag)
    if tag is not None or first == path:
        return [first]
    older = sorted(
        (p for p in path.glob("step*") if p != first and model_states_file(p)), reverse=True
    )
    return [first, *older]


def newest_intact(
    candidates: list[Path], read: Callable[[Path], T], warn: bool = True
) -> tuple[Path, T]:
    """(tag directory, ``read(tag directory)``) of the first intact checkpoint of ``candidates``
    (newest first: :func:`checkpoint_candidates`, or resume's).

    A damaged one (a file missing or cut short: ``complete.json`` disagrees, or torch cannot read
    it) is skipped with a warning naming the file, as resume does; when the last one is damaged
    too, :class:`pipeline.engine.checkpoint.CorruptCheckpoint` names its file.
    """
    *fallbacks, last = candidates
    for tag_dir, older in zip(fallbacks, candidates[1:], strict=True):
        try:
            verify_marker(tag_dir)
            return tag_dir, read(tag_dir)
        except CorruptCheckpoint as e:
            if warn:
                log.warning("%s; using the previous checkpoint, %s", e, older)
    verify_marker(last)
    return last, read(last)


def stored_config(tag_dir: Path) -> dict:
    """The resolved training config a checkpoint was written with (``{}`` if it holds none);
    the weights are memory-mapped, not read."""
    states_file = model_states_file(tag_dir)
    if states_file is None:  # not ours (a universal checkpoint's folder): nothing to compare
        return {}
    states = restricted_load(
        states_file,
        lambda: torch.load(states_file, map_location="cpu", weights_only=True, mmap=True),
    )
    return states.get("config") or {}


def model_difference(stored: dict, wanted: dict) -> str | None:
    """How a checkpoint's stored ``model`` section (preset + resolved fields) differs from
    ``wanted`` in what shapes the weights — ``"was written by model preset 'debug' with
    fusion_arch='factorized_mmi'; the config asks for preset 'debug' with fusion_arch='token'"``
    — or None when the weights fit (or the checkpoint holds no config)."""
    keys = sorted(k for k in (stored.keys() & wanted.keys()) - NOT_WEIGHTS if k != "preset")
    keys = [k for k in keys if stored[k] != wanted[k]]
    if not keys:
        return None

    def describe(model: dict) -> str:
        return f"preset {model.get('preset')!r} with " + ", ".join(
            f"{k}={model[k]!r}" for k in keys
        )

    return f"was written by model {describe(stored)}; the config asks for {describe(wanted)}"
