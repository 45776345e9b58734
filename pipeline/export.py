"""Export a DeepSpeed training checkpoint as fp32 official-key weights (safetensors).

    avfusion export runs/debug/checkpoints --out model.safetensors

The result loads with ``model.checkpoints.load_official`` (strict) and with
``safetensors.torch.load_file``; the resolved training config travels in its metadata.
"""
from __future__ import annotations

import json
from pathlib import Path

import torch
import yaml

# rank 0's model states: "mp_rank_00_…" (ZeRO 0-2) or "zero_pp_rank_0_mp_rank_00_…" (ZeRO-3)
MODEL_STATES = ("mp_rank_00_model_states.pt", "zero_pp_rank_0_mp_rank_00_model_states.pt")


def model_states_file(tag_dir: Path) -> Path | None:
    return next((tag_dir / n for n in MODEL_STATES if (tag_dir / n).is_file()), None)


def resolve_tag_dir(path: Path, tag: str | None = None) -> Path:
    """``path`` is a checkpoint root (with ``latest``) or one tag directory."""
    if tag is None and model_states_file(path):
        return path
    if tag is None:
        latest = path / "latest"
        if not latest.is_file():
            raise FileNotFoundError(f"{path}: not a DeepSpeed checkpoint (no 'latest' file, no model states)")
        tag = latest.read_text().strip()
    tag_dir = path / tag
    if not model_states_file(tag_dir):
        raise FileNotFoundError(f"{tag_dir}: no {' or '.join(MODEL_STATES)}")
    return tag_dir


def consolidated_state_dict(tag_dir: Path) -> tuple[dict[str, torch.Tensor], dict]:
    """fp32 weights (ZeRO partitions merged) and the checkpoint's client state."""
    # Our own checkpoint: the client state holds RNG states (numpy), so a full unpickle is needed.
    states = torch.load(model_states_file(tag_dir), map_location="cpu", weights_only=False)
    client = {k: states[k] for k in ("step", "epoch", "samples_seen", "config", "mlflow_run_id") if k in states}
    if any(tag_dir.glob("*optim_states.pt")) and states.get("ds_config", {}).get("zero_optimization", {}).get("stage", 0) > 0:
        from deepspeed.utils.zero_to_fp32 import get_fp32_state_dict_from_zero_checkpoint

        sd = get_fp32_state_dict_from_zero_checkpoint(str(tag_dir.parent), tag=tag_dir.name)
    else:
        sd = states["module"]
    return {k: v.detach().float().contiguous().clone() for k, v in sd.items()}, client


def export(ckpt: Path, out: Path, tag: str | None = None) -> Path:
    from safetensors.torch import save_file

    sd, client = consolidated_state_dict(resolve_tag_dir(ckpt, tag))
    config = client.get("config", {})
    metadata = {"format": "avfusion-avmae-v1", "preset": str(config.get("model", {}).get("preset", "")),
                "step": str(client.get("step", "")), "config": yaml.safe_dump(config, sort_keys=False)}
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + ".tmp")
    save_file(sd, str(tmp), metadata=metadata)
    tmp.replace(out)
    return out


def run(args) -> int:
    try:
        path = export(Path(args.ckpt), Path(args.out), args.tag)
    except FileNotFoundError as e:
        raise SystemExit(f"error: {e}") from None
    print(json.dumps({"out": str(path), "bytes": path.stat().st_size}))
    return 0


def register(subparsers) -> None:
    p = subparsers.add_parser("export", help="export a training checkpoint to official-key safetensors",
                              description=__doc__, formatter_class=__import__("argparse").RawDescriptionHelpFormatter)
    p.add_argument("ckpt", help="checkpoint root (output_dir/checkpoints) or one step directory")
    p.add_argument("--out", required=True, help="destination .safetensors file")
    p.add_argument("--tag", default=None, help="checkpoint tag (default: the 'latest' one)")
    p.set_defaults(func=run)
