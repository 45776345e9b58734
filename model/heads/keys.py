"""Official ↔ our state-dict keys of the dense-task models (as ``model.checkpoints.adapt_keys``
does for the encoder and decoders).

The official task models hold the encoder under ``encoder.`` and the head at top level
(``AVSegmSimple``: ``normv``, ``proja``, ``norma``, ``top``, ``lat``, ``up``, ``predictor``) or
under ``avss_decoder.`` (``AVSrcSep``). Our AVS head uses the official names; our separation
head keeps the release's numbered attributes as lists: ``cond.k`` ↔ ``cond{5−k}``,
``lat.j`` ↔ ``lat{4−j}``, ``up.j`` ↔ ``up{4−j}``.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Literal

from torch import Tensor, nn

from model.checkpoints import ENCODER_PREFIX, official_state_dict

TASKS = ("avs", "separation")
HEAD_PREFIX = {"avs": "", "separation": "avss_decoder."}
# separation: list name → number of entries (official number = count − list index)
_NUMBERED = {"cond": 5, "lat": 4, "up": 4}
_OURS = re.compile(r"^(cond|lat|up)\.(\d+)(?=\.)")
_OFFICIAL = re.compile(r"^(cond|lat|up)(\d+)(?=\.)")


def adapt_head_keys(
    state: Mapping[str, Tensor], task: str, to: Literal["official", "ours"]
) -> dict[str, Tensor]:
    """A head's ``state`` renamed to the official task-model keys (``to="official"``, from our
    head's own keys) or to ours (from official keys, prefix included)."""
    if task not in TASKS:
        raise ValueError(f"unknown dense task {task!r} (known: {', '.join(TASKS)})")
    prefix = HEAD_PREFIX[task]
    if to == "official":
        return {prefix + _rename(k, task, _OURS, "{}{}"): v for k, v in state.items()}
    return {_rename(k.removeprefix(prefix), task, _OFFICIAL, "{}.{}"): v for k, v in state.items()}


def official_task_state_dict(encoder: nn.Module, head: nn.Module, task: str) -> dict[str, Tensor]:
    """The official ``AVSegmSimple`` / ``AVSrcSep`` ``state_dict()`` keys of our encoder + head."""
    state = {ENCODER_PREFIX + k: v for k, v in official_state_dict(encoder).items()}
    state.update(adapt_head_keys(head.state_dict(), task, "official"))
    return state


def split_task_state_dict(
    state: Mapping[str, Tensor], task: str
) -> tuple[dict[str, Tensor], dict[str, Tensor]]:
    """An official task-model state dict → (encoder state, our head state)."""
    encoder = {
        k[len(ENCODER_PREFIX) :]: v for k, v in state.items() if k.startswith(ENCODER_PREFIX)
    }
    head = {k: v for k, v in state.items() if not k.startswith(ENCODER_PREFIX)}
    return encoder, adapt_head_keys(head, task, "ours")


def _rename(key: str, task: str, pattern: re.Pattern, form: str) -> str:
    if task != "separation":
        return key
    return pattern.sub(lambda m: form.format(m[1], _NUMBERED[m[1]] - int(m[2])), key)
