"""DeepAVFusion encoder, AVMAE pre-training model and task heads: pure ``nn.Module`` code.

``build_avmae("debug")`` for CPU runs and tests, ``"vggsound"`` / ``"as2m"`` for the released
architectures. Modules: :mod:`~model.vit` (towers, blocks), :mod:`~model.fusion` (the fusion
variants' registry), :mod:`~model.deepavfusion` (the encoder), :mod:`~model.masking`,
:mod:`~model.avmae`, :mod:`~model.heads` (every task head), :mod:`~model.presets`,
:mod:`~model.keys` (official ↔ our key names), :mod:`~model.checkpoints` (official files, MAE /
AudioMAE towers), :mod:`~model.parity` (official-code fixtures). Imports only :mod:`avbase`.
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
