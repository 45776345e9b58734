"""Compare this model with outputs recorded from the official code (``avfusion model parity``).

A pre-training fixture (``shared/fixtures/parity/*.pt``, format ``deepavfusion-parity-rule-v1``)
holds an architecture ``config``, inputs, pinned masks and the official outputs under a
deterministic weight rule keyed by official state-dict names. We build the model the config
describes, apply the rule, run the masked and unmasked passes with the fixture's masks and report
the max abs / rel error of every stored output (rel = max |ours − ref| / max |ref|).
Dense-task head fixtures (``shared/fixtures/heads/*.pt``, format
``deepavfusion-head-parity-rule-v1``) are run by :mod:`model.parity.heads`.
"""

from __future__ import annotations

import dataclasses
import zlib
from pathlib import Path

import torch
from torch import Tensor

from ..avmae import AVMAE
from ..checkpoints import load_official, official_state_dict
from ..presets import AVMAEConfig, ImageSpec

FORMAT = "deepavfusion-parity-rule-v1"
HEAD_FORMAT = "deepavfusion-head-parity-rule-v1"
TOLERANCE = 1e-5  # fixture README: max |ours − fixture| for float tensors
EXACT = ("target_image", "target_audio")  # must be equal


class ParityError(ValueError):
    """A file is missing or is not a parity fixture; the message names it."""


def rule_value(key: str, shape) -> Tensor:
    """The fixture weight rule: N(0, 1) from a generator seeded with crc32(key), then scaled
    (BatchNorm running variances, which only the head fixtures have: exp(0.2 x))."""
    g = torch.Generator().manual_seed(zlib.crc32(key.encode("utf-8")))
    x = torch.randn(tuple(shape), generator=g, dtype=torch.float32)
    if key.endswith("running_var"):
        return torch.exp(0.2 * x)
    if len(shape) == 1:
        return 1.0 + 0.1 * x if key.endswith("weight") else 0.05 * x  # LayerNorm weight / bias
    return 0.02 * x


def apply_weight_rule(model: AVMAE) -> None:
    """Set every official state-dict entry except the sin-cos ``*pos_embed`` tables by ``rule_value``."""
    state = official_state_dict(model)
    load_official(
        {k: v if k.endswith("pos_embed") else rule_value(k, v.shape) for k, v in state.items()},
        model=model,
    )


def load_fixture(path: str | Path) -> dict:
    """Read a fixture file (tensors only, ``weights_only=True``), checking its format tag (a
    pre-training or a head fixture)."""
    try:
        fixture = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise ParityError(f"{path}: fixture file not found") from None
    except Exception as e:
        raise ParityError(f"{path}: not a readable parity fixture ({type(e).__name__})") from None
    if not isinstance(fixture, dict) or fixture.get("format") not in (FORMAT, HEAD_FORMAT):
        raise ParityError(
            f"{path}: expected a parity fixture with format {FORMAT!r} or {HEAD_FORMAT!r}"
        )
    return fixture


def config_values(cfg: dict) -> dict:
    """The ``AVMAEConfig`` fields a fixture's ``config`` names (square image and patch sizes as
    one side, lists as tuples); other entries are left out."""
    if cfg.get("decoder_arch", "plain") != "plain":
        raise ValueError(f"decoder_arch {cfg['decoder_arch']!r}: only the plain decoder exists")
    values = dict(cfg)
    for key in ("image_size", "patch_size"):
        side = values.get(key)
        if isinstance(side, (list, tuple)):
            if len(set(side)) != 1:
                raise ValueError(f"{key} {side}: only square sizes are supported")
            values[key] = side[0]
    if "fusion_layers" in values:
        values["fusion_layers"] = str(values["fusion_layers"])
    names = {f.name for f in dataclasses.fields(AVMAEConfig)}
    return {k: tuple(v) if isinstance(v, list) else v for k, v in values.items() if k in names}


def config_from_fixture(cfg: dict) -> AVMAEConfig:
    """The ``AVMAEConfig`` a pre-training fixture's (complete) ``config`` describes."""
    values = config_values(cfg)
    return AVMAEConfig(**values, image=ImageSpec(size=values["image_size"]))


def max_errors(ours: Tensor, ref: Tensor) -> tuple[float, float]:
    """(max |ours − ref|, that divided by max |ref|)."""
    if ours.shape != ref.shape:
        return float("inf"), float("inf")
    diff = (ours.double() - ref.double()).abs().max().item() if ref.numel() else 0.0
    scale = ref.double().abs().max().item() if ref.numel() else 0.0
    return diff, diff / scale if scale else diff


@torch.no_grad()
def compute_outputs(model: AVMAE, fixture: dict) -> dict[str, Tensor]:
    """Our values for every fixture output, flattened to dotted names (as in ``outputs``)."""
    image, audio = fixture["inputs"]["image"], fixture["inputs"]["audio"]
    masking = fixture["masking"]
    masks = {
        m: {k: masking[f"{m}_{k}"] for k in ("ids_keep", "ids_restore", "mask")}
        for m in ("image", "audio")
    }
    last = fixture["meta"].get("layer_last_index", model.config.depth - 1)
    out = {}
    enc = model.encoder(
        image, audio, masks["image"]["ids_keep"], masks["audio"]["ids_keep"], return_layers=True
    )
    full = model.encoder(image, audio, return_layers=True)
    for name, e in (("encoder_masked", enc), ("encoder_full", full)):
        for i, stream in enumerate(("image", "audio", "fusion")):
            out[f"{name}.{stream}"] = getattr(e, stream)
            out[f"{name}.layer_first.{stream}"] = e.layers[0][i]
            out[f"{name}.layer_last.{stream}"] = e.layers[last][i]
    result = model(image, audio, masks=masks)
    for m in ("image", "audio"):
        target = model.patchify(fixture["inputs"][m], m)
        pred, mask = getattr(result, f"pred_{m}"), masks[m]["mask"]
        out[f"target_{m}"] = target
        out[f"pred_{m}"] = pred
        out[f"loss_{m}"] = getattr(result, f"loss_{m}")
        out[f"loss_{m}_other_normpix"] = model.forward_loss(
            target, pred, mask, not model.norm_pix_loss
        )
    return out


def flatten_tensors(tree: dict, prefix: str = "") -> dict[str, Tensor]:
    flat = {}
    for key, value in tree.items():
        if isinstance(value, dict):
            flat.update(flatten_tensors(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat
