"""Config sections of the dense tasks (``avs:``, ``separation:``, ``localization:`` in the YAML).

Layer lists index the encoder's layers (negative: from the end), so the recipes' ViT-B lists
([0, 3, 7, 11], [11, 8, 5, 2, 0]) and the 2-layer debug model's lists are written the same way.
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class AVSConfig:
    layers: list[int] = field(
        default_factory=lambda: [0, 3, 7, 11]
    )  # image layers feeding the UNet (first = top)
    channels: list[int] = field(
        default_factory=lambda: [768, 384, 192, 128]
    )  # UNet widths per scale (REFERENCE §8)
    oversample: int = 10  # passes over the training set per epoch
    audio_jitter: float = 0.99  # training: audio window centre ± seconds
    prior_sigma: float = 0.25  # centred Gaussian baseline (fraction of side)
    artifacts: int = 8  # overlays logged (predicted vs true mask)


@dataclass
class SeparationConfig:
    layers: list[int] = field(
        default_factory=lambda: [11, 8, 5, 2, 0]
    )  # audio layers, finest scale first (release: deepest → finest, the last at the UNet bottom)
    frozen: bool = False  # train the heads only (the release fine-tunes the encoder too)
    silence: float = 1e-5  # skip a pair when a reference or estimate has energy Σx² below this
    artifacts: int = 4  # spectrogram panels logged


@dataclass
class LocalizationConfig:
    layer: int = -1  # image layer whose patch tokens are compared
    embedding: str = "audio"  # audio | fusion: the clip's query embedding
    trained: str = "none"  # none | contrastive | masks (docs/EVAL.md)
    prior_sigma: float = 0.25
    artifacts: int = 8  # heatmaps on frames logged
