"""Pre-training parity fixtures (``deepavfusion-parity-rule-v1``): AVMAE outputs under pinned masks."""

from __future__ import annotations

from pathlib import Path

from ..avmae import AVMAE
from ..checkpoints import official_state_dict
from .rule import (
    EXACT,
    TOLERANCE,
    apply_weight_rule,
    compute_outputs,
    config_from_fixture,
    flatten_tensors,
    max_errors,
)


def run_pretrain_fixture(path: str | Path, fixture: dict, tolerance: float | None = None) -> dict:
    """Build the AVMAE, apply the rule, run, compare. Returns the report (``ok``, errors per
    output)."""
    tol = float(tolerance if tolerance is not None else fixture.get("tolerance", TOLERANCE))
    model = AVMAE(config_from_fixture(fixture["config"])).eval()
    ours_keys = sorted(
        [k, list(v.shape), str(v.dtype).removeprefix("torch.")]
        for k, v in official_state_dict(model).items()
    )
    apply_weight_rule(model)
    ours = compute_outputs(model, fixture)
    refs = flatten_tensors(fixture["outputs"])
    refs.update({f"pos_embed.{k}": v for k, v in fixture.get("pos_embed", {}).items()})
    state = official_state_dict(model)
    ours.update({f"pos_embed.{k}": state[k] for k in fixture.get("pos_embed", {})})
    errors = {
        name: max_errors(ours[name], ref) if name in ours else (float("inf"),) * 2
        for name, ref in refs.items()
    }
    failed = sorted(n for n, (a, _) in errors.items() if a > (0.0 if n in EXACT else tol))
    n_params = sum(p.numel() for p in model.parameters())
    keys_match = ours_keys == [list(x) for x in fixture["state_dict_keys"]]
    params_match = n_params == fixture["meta"].get("n_params", {}).get("avmae", n_params)
    return {
        "fixture": Path(path).name,
        "preset": fixture["config"].get("preset"),
        "fusion_arch": model.config.fusion_arch,
        "batch": int(fixture["inputs"]["image"].shape[0]),
        "ok": not failed and keys_match and params_match,
        "tolerance": tol,
        "failed": failed,
        "state_dict_keys_match": keys_match,
        "n_params": n_params,
        "n_params_match": params_match,
        "worst_abs": max((a for n, (a, _) in errors.items() if n not in EXACT), default=0.0),
        "max_abs": {n: a for n, (a, _) in errors.items()},
        "max_rel": {n: r for n, (_, r) in errors.items()},
    }
