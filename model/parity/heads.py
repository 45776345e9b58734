"""Parity of the dense-task models (encoder + head) with the official ``AVSegmSimple`` /
``AVSrcSep`` (fixtures ``shared/fixtures/heads/*.pt``, format ``deepavfusion-head-parity-rule-v1``).

Steps per file: build the encoder its ``config`` describes (``preset`` + the AVMAEConfig fields it
names) and the task's head at the release's widths → check our official-key list (through the
key adapter) against ``state_dict_keys`` (names, shapes, dtypes) → set every entry by the weight
rule under its official name (``*pos_embed`` keep the sin-cos tables, ``*num_batches_tracked``
keep 0) → eval mode, fp32 → the head on the release's layers for ``inputs`` → max |ours − logits|
relative to max |logits| (fixture README: pass at ≤ 1e-4).
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import Tensor, nn

from ..checkpoints import load_official, load_strict
from ..deepavfusion import DeepAVFusion
from ..heads import (
    AVSHead,
    SeparationHead,
    official_task_state_dict,
    release_layers,
    split_task_state_dict,
)
from ..presets import get_model_config
from .rule import ParityError, config_values, max_errors, rule_value

HEAD_TOLERANCE = 1e-4  # fixture README: max |ours − logits| ≤ 1e-4 × max |logits|
KEEP = ("pos_embed", "num_batches_tracked")  # entries the rule leaves as built


def build_task_model(fixture: dict) -> tuple[DeepAVFusion, nn.Module]:
    """(encoder, head) of a head fixture's task and config, weights set by the rule, eval mode."""
    cfg, task = fixture["config"], fixture["task"]
    mcfg = get_model_config(cfg["preset"], **config_values(cfg))
    encoder = DeepAVFusion(mcfg)
    if task == "avs":
        head = AVSHead(
            mcfg.embed_dim, mcfg.image_grid[0], num_classes=cfg.get("avs_num_classes", 1)
        )
    else:
        head = SeparationHead(mcfg.embed_dim, mcfg.audio_grid)
    state = official_task_state_dict(encoder, head, task)
    ruled = {k: v if k.endswith(KEEP) else rule_value(k, v.shape) for k, v in state.items()}
    encoder_state, head_state = split_task_state_dict(ruled, task)
    load_official(encoder_state, model=encoder)
    load_strict(head, head_state, f"{task} head")
    return encoder.eval(), head.eval()


@torch.no_grad()
def task_logits(encoder: DeepAVFusion, head: nn.Module, image: Tensor, audio: Tensor) -> Tensor:
    """The task model's logits as the release computes them: AVS ``[B, classes, H, W]`` from
    ``(image, audio)``; separation ``[B, 1, F, T]`` from ``(image, mixture log-mel)``."""
    out = encoder(image, audio, return_layers=True)
    depth = len(out.layers)
    if isinstance(head, AVSHead):
        return head.from_encoder(out, release_layers(depth, 4))
    return head.from_encoder(out, release_layers(depth, 5)[::-1])


def run_head_fixture(path: str | Path, fixture: dict, tolerance: float | None = None) -> dict:
    """Build, set the rule, run, compare; the report (``ok``, ``rel_error`` …)."""
    missing = [
        k for k in ("task", "config", "state_dict_keys", "inputs", "logits") if k not in fixture
    ]
    if missing or fixture["task"] not in ("avs", "separation"):
        raise ParityError(
            f"{path}: a head fixture needs task 'avs' or 'separation' and {', '.join(missing)}"
            if missing
            else f"{path}: unknown head fixture task {fixture['task']!r}"
        )
    tol = HEAD_TOLERANCE if tolerance is None else float(tolerance)
    encoder, head = build_task_model(fixture)
    ours = {
        k: [list(v.shape), str(v.dtype).removeprefix("torch.")]
        for k, v in official_task_state_dict(encoder, head, fixture["task"]).items()
    }
    theirs = {k: [list(shape), dtype] for k, shape, dtype in fixture["state_dict_keys"]}
    unmapped = sorted(set(theirs) - set(ours))
    unexpected = sorted(set(ours) - set(theirs))
    shapes = sorted(k for k in set(ours) & set(theirs) if ours[k] != theirs[k])
    inputs = fixture["inputs"]
    logits = task_logits(encoder, head, inputs["image"], inputs["audio"])
    diff, rel = max_errors(logits, fixture["logits"])
    n_params = sum(p.numel() for p in head.parameters())
    keys_match = not (unmapped or unexpected or shapes)
    params_match = n_params == fixture.get("n_params_head", n_params)
    return {
        "fixture": Path(path).name,
        "task": fixture["task"],
        "preset": fixture["config"].get("preset"),
        "fusion_arch": fixture["config"].get("fusion_arch"),
        "batch": int(inputs["image"].shape[0]),
        "ok": rel <= tol and keys_match and params_match,
        "tolerance": tol,
        "rel_error": rel,
        "max_abs_diff": diff,
        "max_abs_logits": float(fixture["logits"].abs().max()),
        "state_dict_keys_match": keys_match,
        "unmapped_keys": unmapped[:5],
        "unexpected_keys": unexpected[:5],
        "shape_mismatches": shapes[:5],
        "n_params_head": n_params,
        "n_params_head_match": params_match,
    }
