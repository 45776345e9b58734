"""The encoder under evaluation, from any of its three sources (REFERENCE.md §4.3, §8).

- a pretraining checkpoint: ``train.output_dir``, its ``checkpoints/`` root or one step directory
  (ZeRO partitions merged; the model config and the MLflow run id come from the checkpoint);
- an exported ``.safetensors`` file (``avfusion export``; the config travels in its metadata);
- an official checkpoint file (``{'state_dict': …}``; preset from ``encoder.preset`` or detected).

Only the ``encoder.*`` keys are loaded, strictly (official downstream behaviour); the release's
fusion overrides (``encoder.fusion_*``) pick the architecture the file was trained with.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import NamedTuple

import torch
import yaml

from model import DeepAVFusion, get_model_config
from model.checkpoints import (
    ENCODER_PREFIX,
    CheckpointError,
    _detect_preset,
    load_strict,
    read_checkpoint,
    unwrap_state_dict,
)
from model.fusion import FusionBlock
from model.presets import AVMAEConfig
from model.vit import Block
from pipeline.engine.choice import checkpoint_candidates, newest_intact, stored_config
from pipeline.eval.config import EncoderConfig


class LoadedEncoder(NamedTuple):
    encoder: DeepAVFusion
    config: AVMAEConfig
    pretrain_run_id: str | None  # MLflow run of the pretraining (training checkpoints only)
    source: str


def load_encoder(cfg: EncoderConfig) -> LoadedEncoder:
    """Build and (unless ``init=random``) strictly load the encoder ``cfg`` describes."""
    state, model_cfg, run_id, source = (
        _read_source(cfg) if cfg.checkpoint else (None, {}, None, "random")
    )
    mcfg = architecture(cfg, model_cfg, source, state)
    encoder = DeepAVFusion(mcfg)
    if cfg.init == "pretrained":
        load_strict(encoder, _encoder_keys(state), source)
    set_drop_path(encoder, cfg.drop_path)
    return LoadedEncoder(encoder, mcfg, run_id if cfg.init == "pretrained" else None, source)


def encoder_config(cfg: EncoderConfig) -> AVMAEConfig | None:
    """The architecture :func:`load_encoder` builds, from the source's stored config alone (no
    weights are read); None for an official file without ``encoder.preset`` (its preset is
    detected from the weights). A missing or unusable source raises one error naming it."""
    if not cfg.checkpoint:
        return architecture(cfg, {}, "random")
    path = Path(cfg.checkpoint)
    if not path.exists():
        raise FileNotFoundError(
            f"encoder.checkpoint: {path}: no such file or folder (expected a pretraining run's "
            "output_dir or its checkpoints/, an exported .safetensors or an official .pth)"
        )
    if path.is_dir():
        tag_dir, config = newest_intact(
            checkpoint_candidates(_checkpoint_root(path)), stored_config, warn=False
        )
        return architecture(cfg, _model_section(config), str(tag_dir))
    if path.suffix == ".safetensors":
        return architecture(cfg, _model_section(_safetensors_metadata(path)[0]), str(path))
    return architecture(cfg, {}, str(path)) if cfg.preset else None


def architecture(
    cfg: EncoderConfig, stored: dict, source: str, state: dict | None = None
) -> AVMAEConfig:
    """``encoder.preset`` (which must agree with the source's stored one), else the stored
    preset, else the one ``state`` fits; the stored fields and ``encoder.fusion_*`` on top."""
    if cfg.preset and stored.get("preset") and cfg.preset != stored["preset"]:
        raise CheckpointError(
            f"encoder.preset: {cfg.preset!r}, but {source} was written by model preset "
            f"{stored['preset']!r} (its stored config); leave encoder.preset unset or set it "
            f"to {stored['preset']!r}"
        )
    overrides = {k: v for k, v in stored.items() if k != "preset"}
    overrides.update(
        {
            k: v
            for k, v in (
                ("fusion_arch", cfg.fusion_arch),
                ("fusion_mlp_ratio", cfg.fusion_mlp_ratio),
                ("fusion_attn_ratio", cfg.fusion_attn_ratio),
            )
            if v is not None
        }
    )
    preset = (
        cfg.preset or stored.get("preset") or (_detect_preset(state, source) if state else None)
    )
    if preset is None:
        raise CheckpointError(f"{source}: cannot tell the model preset; set encoder.preset")
    return get_model_config(preset, **overrides)


def set_drop_path(encoder: DeepAVFusion, rate: float) -> None:
    """Stochastic depth rising linearly 0 → ``rate`` over the layers (timm's ``dpr`` rule), the
    same rate for layer i's image, audio and fusion blocks."""
    depth = len(encoder.image.blocks)
    rates = torch.linspace(0, rate, depth).tolist() if depth > 1 else [rate]
    for i in range(depth):
        for block in (encoder.image.blocks[i], encoder.audio.blocks[i], encoder.fusion_blocks[i]):
            if isinstance(block, (Block, FusionBlock)):
                block.drop_path = rates[i]


def _read_source(cfg: EncoderConfig) -> tuple[dict, dict, str | None, str]:
    """(state dict, model-config overrides incl. ``preset``, pretraining run id, source name)."""
    path = Path(cfg.checkpoint)
    if path.is_dir():
        return _training_checkpoint(path)
    if path.suffix == ".safetensors":
        return _safetensors(path)
    state = unwrap_state_dict(read_checkpoint(path, cfg.trust_pickle), str(path))
    return state, {}, None, str(path)


def _checkpoint_root(path: Path) -> Path:
    """A run's ``output_dir`` → its ``checkpoints/``; a checkpoint root or step folder as is."""
    return path / "checkpoints" if (path / "checkpoints" / "latest").is_file() else path


def _training_checkpoint(path: Path) -> tuple[dict, dict, str | None, str]:
    pass


def _training_checkpoint(path: Path) -> tuple[dict, dict, str | None, str]:
    from pipeline.engine.safeload import consolidated_state_dict

    candidates = checkpoint_candidates(_checkpoint_root(path))
    tag_dir, (state, client) = newest_intact(candidates, consolidated_state_dict)
    return (
        state,
        _model_section(client.get("config") or {}),
        client.get("mlflow_run_id"),
        str(tag_dir),
    )


def _safetensors(path: Path) -> tuple[dict, dict, str | None, str]:
    state = unwrap_state_dict(read_checkpoint(path), str(path))
    config, run_id = _safetensors_metadata(path)
    return state, _model_section(config), run_id, str(path)


def _safetensors_metadata(path: Path) -> tuple[dict, str | None]:
    """(training config, pretraining run id) from an export's header (weights not read)."""
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(str(path), "pt") as f:
            meta = f.metadata() or {}
    except SafetensorError as e:
        raise CheckpointError(f"{path}: not a readable safetensors file ({e})") from None
    return yaml.safe_load(meta.get("config") or "{}") or {}, meta.get("mlflow_run_id")


def _model_section(config: dict) -> dict:
    """The training config's architecture fields (``model.preset`` and overrides that exist)."""
    fields = {f.name for f in dataclasses.fields(AVMAEConfig)} | {"preset"}
    skip = {"image_mask_ratio", "audio_mask_ratio", "norm_pix_loss", "activation_checkpointing"}
    return {
        k: v for k, v in (config.get("model") or {}).items() if k in fields - skip and v is not None
    }


def _encoder_keys(state: dict) -> dict:
    """``encoder.*`` with the prefix stripped (a full AVMAE or prefixed encoder dict), else as is."""
    if any(k.startswith(ENCODER_PREFIX) for k in state):
        return {
            k[len(ENCODER_PREFIX) :]: v for k, v in state.items() if k.startswith(ENCODER_PREFIX)
        }
    return state
