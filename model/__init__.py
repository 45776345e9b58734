"""DeepAVFusion encoder and AVMAE pre-training model: pure ``nn.Module`` code.

``build_avmae("debug")`` for CPU runs and tests, ``"vggsound"`` / ``"as2m"`` for the released
architectures; ``model.checkpoints`` loads official checkpoints and MAE / AudioMAE towers.
"""

from __future__ import annotations

from .avmae import AVMAE, AVMAEOutput
from .deepavfusion import DeepAVFusion, EncoderOutput
from .presets import MODEL_PRESETS, AVMAEConfig, get_model_config


def build_avmae(preset: str = "debug", **overrides) -> AVMAE:
    """AVMAE of the registry preset ``preset`` with config ``overrides`` (see ``AVMAEConfig``)."""
    return AVMAE(get_model_config(preset, **overrides))


__all__ = [
    "AVMAE",
    "AVMAEConfig",
    "AVMAEOutput",
    "DeepAVFusion",
    "EncoderOutput",
    "MODEL_PRESETS",
    "build_avmae",
    "get_model_config",
]
