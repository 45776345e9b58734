"""Export a DeepSpeed training checkpoint as fp32 official-key weights (safetensors).

    avfusion export runs/debug/checkpoints --out model.safetensors

The result loads with ``model.checkpoints.load_official`` (strict) and with
``safetensors.torch.load_file``; the resolved training config travels in its metadata.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import tempfile
from collections.abc import Iterator
from pathlib import Path

import torch
import yaml

from avbase.errors import AvfusionError
from avbase.urls import redact_tree
from pipeline.engine.safeload import UnsafeCheckpoint, consolidated_state_dict


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

    from model.keys import adapt_keys
    from pipeline.engine.choice import checkpoint_candidates, newest_intact

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
