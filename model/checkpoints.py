"""Official checkpoints and MAE / AudioMAE tower weights (REFERENCE.md §4.3, §5).

Our keys differ from the official ones only in the decoders (``image_decoder.embed.weight`` vs
``image_decoder_embed.weight``); ``adapt_keys`` is the one mapping, used to load official files
strictly and to export official names. Tower weights are CC-BY-NC: only ever read from paths the
user supplies, never bundled or downloaded.
"""

from __future__ import annotations

import pickle
from collections.abc import Mapping
from pathlib import Path

import torch
from torch import Tensor, nn

from .avmae import AVMAE
from .deepavfusion import DeepAVFusion
from .keys import adapt_keys
from .presets import MODEL_PRESETS, get_model_config

ENCODER_PREFIX = "encoder."
TOWER_SKIP_PREFIXES = (
    "decoder",
    "mask_token",
    "cls_token",
)  # MAE/AudioMAE parts with no tower slot


class CheckpointError(ValueError):
    """A checkpoint file or state dict cannot be used; the message names it and what was expected."""


def read_checkpoint(path: str | Path, trust_pickle: bool = False) -> object:
    """A ``.safetensors`` file, else ``torch.load`` on CPU with ``weights_only=True``;
    ``trust_pickle`` allows full unpickling (only for files the user trusts)."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: checkpoint file not found")
    if path.suffix == ".safetensors":
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        try:
            return load_file(path)
        except SafetensorError as e:
            raise CheckpointError(_unreadable(path, e)) from None
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        global_name = next(
            (
                line.split("GLOBAL")[-1].split()[0]
                for line in str(e).splitlines()
                if "Unsupported global" in line
            ),
            None,
        )
        if global_name is None:
            raise CheckpointError(_unreadable(path, e)) from None
        if not trust_pickle:
            raise CheckpointError(
                f"{path}: torch.load(weights_only=True) refuses the pickled object {global_name} "
                "(the AudioMAE file stores an argparse Namespace); if you trust this file, pass "
                "trust_pickle=True (config: model.trust_pickle=true)"
            ) from None
    except Exception as e:  # torch raises assorted types for files that are not checkpoints
        raise CheckpointError(_unreadable(path, e)) from None
    try:
        return torch.load(path, map_location="cpu", weights_only=False)
    except Exception as e:
        raise CheckpointError(_unreadable(path, e)) from None


def unwrap_state_dict(obj: object, source: str) -> dict[str, Tensor]:
    """``obj['state_dict']``, else ``obj['model']``, else ``obj`` itself; all values tensors."""
    if isinstance(obj, Mapping):
        for key in ("state_dict", "model"):
            if isinstance(obj.get(key), Mapping):
                obj = obj[key]
                break
    if (
        not isinstance(obj, Mapping)
        or not obj
        or not all(isinstance(v, Tensor) for v in obj.values())
    ):
        raise CheckpointError(
            f"{source}: expected a state dict (a mapping of tensors, optionally "
            "under 'state_dict' or 'model')"
        )
    return dict(obj)


def strict_mismatch(module: nn.Module, state: Mapping[str, Tensor]) -> str | None:
    """Why ``state`` would not load strictly into ``module`` (missing / unexpected / shapes), or None."""
    expected = {k: tuple(v.shape) for k, v in module.state_dict().items()}
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    shapes = [
        f"{k} {list(state[k].shape)} vs model {list(s)}"
        for k, s in sorted(expected.items())
        if k in state and tuple(state[k].shape) != s
    ]
    problems = [
        f"{label} {len(items)} ({', '.join(items[:3])}{', …' if len(items) > 3 else ''})"
        for label, items in (
            ("missing", missing),
            ("unexpected", unexpected),
            ("shape mismatch", shapes),
        )
        if items
    ]
    return "; ".join(problems) or None


def load_strict(module: nn.Module, state: Mapping[str, Tensor], source: str) -> None:
    """``module.load_state_dict(state, strict=True)`` with a one-line error on any mismatch."""
    problem = strict_mismatch(module, state)
    if problem:
        raise CheckpointError(
            f"{source}: does not match {type(module).__name__} strictly: {problem}"
        )
    module.load_state_dict(state, strict=True)


def load_official(
    path_or_state_dict: str | Path | Mapping,
    model: nn.Module | None = None,
    preset: str | None = None,
) -> nn.Module:
    """Load an official (or project) AVMAE / encoder checkpoint strictly; return the model.

    Accepts ``{state_dict: …}``, ``{model: …}`` or a bare mapping, in official or our key layout;
    the full AVMAE key set or the encoder subset, with or without the ``encoder.`` prefix. Into a
    ``DeepAVFusion`` only the ``encoder.*`` keys are taken (official downstream behaviour). Without ``model`` one is built
    from ``preset``, or from the first registry preset whose shapes match when ``preset`` is None.
    """
    if isinstance(path_or_state_dict, Mapping):
        source, obj = "state dict", path_or_state_dict
    else:
        source, obj = str(path_or_state_dict), read_checkpoint(path_or_state_dict)
    state = adapt_keys(unwrap_state_dict(obj, source), "ours")
    if model is None:
        model = AVMAE(get_model_config(preset or _detect_preset(state, source)))
    target, state = _target(model, state)
    load_strict(target, state, source)
    return model


def _target(model: nn.Module, state: dict[str, Tensor]) -> tuple[nn.Module, dict[str, Tensor]]:
    """The module the keys of ``state`` address, and the keys relative to it."""
    prefixed = [k.startswith(ENCODER_PREFIX) for k in state]
    encoder_only = {
        k[len(ENCODER_PREFIX) :]: v for k, v in state.items() if k.startswith(ENCODER_PREFIX)
    }
    if isinstance(model, AVMAE):
        if all(prefixed):
            return model.encoder, encoder_only
        return (model, state) if any(prefixed) else (model.encoder, state)
    if isinstance(model, DeepAVFusion) and any(prefixed):
        return model, encoder_only
    return model, state


def _detect_preset(state: dict[str, Tensor], source: str) -> str:
    """The first registry preset whose (meta-device) model the keys and shapes fit."""
    problems = {}
    for name in MODEL_PRESETS:
        with torch.device("meta"):
            candidate = AVMAE(get_model_config(name))
        problems[name] = strict_mismatch(*_target(candidate, state))
        if problems[name] is None:
            return name
    raise CheckpointError(
        f"{source}: matches no model preset; pass preset= or model=. As "
        + "; as ".join(f"{n!r}: {p}" for n, p in problems.items())
    )


def load_tower_weights(
    model: nn.Module,
    image_path: str | Path | None = None,
    audio_path: str | Path | None = None,
    trust_pickle: bool = False,
) -> None:
    """Initialise the image tower from an MAE ViT-B file and/or the audio tower from AudioMAE.

    Mapping (REFERENCE §5): unwrap ``state_dict`` / ``model``; drop ``decoder*``, ``mask_token``
    and ``cls_token``; discard the file's ``pos_embed`` and keep the tower's sin-cos table (no
    interpolation); load the rest strictly (``patch_embed.proj.*``, ``blocks.N.*``, ``norm.*``).
    NOTE: the AudioMAE patch kernel is used as is, although AudioMAE saw [time, freq] Kaldi fbank
    and the tower sees [freq, time] log10 power (how the releases were trained).
    """
    encoder = model.encoder if isinstance(model, AVMAE) else model
    for modality, path in (("image", image_path), ("audio", audio_path)):
        if path is None:
            continue
        tower = getattr(encoder, modality)
        source = f"{path} ({modality} tower)"
        state = unwrap_state_dict(read_checkpoint(path, trust_pickle), source)
        state = {k: v for k, v in state.items() if not k.startswith(TOWER_SKIP_PREFIXES)}
        state["pos_embed"] = tower.pos_embed.detach().clone()
        kind = "an MAE" if modality == "image" else "an AudioMAE"
        try:
            load_strict(tower, state, source)
        except CheckpointError as e:
            raise CheckpointError(f"{e} — expected {kind} ViT-B/16 pre-training file") from None


def official_state_dict(model: nn.Module) -> dict[str, Tensor]:
    """The official-key state dict of ``model``, unwrapping DDP/DeepSpeed ``.module`` and
    ``torch.compile``'s ``_orig_mod``."""
    while True:
        inner = [
            m
            for m in (getattr(model, "_orig_mod", None), getattr(model, "module", None))
            if isinstance(m, nn.Module)
        ]
        if not inner:
            return adapt_keys(model.state_dict(), "official")
        model = inner[0]


def _unreadable(path: Path, e: BaseException) -> str:
    return f"{path}: not a readable PyTorch checkpoint (loading failed with {type(e).__name__})"
