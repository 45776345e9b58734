"""Model presets: the AVMAE architecture configurations (REFERENCE.md §1, §2.7, §3).

The fusion variants are :mod:`model.fusion`'s registry. The audio front ends and image spec a preset names are the
feature specs of :mod:`avbase.features` (shared with the shard builder, which never imports the
model).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, fields, is_dataclass, replace

from avbase.features import FRONTENDS, AudioFrontend, ImageSpec, get_frontend

from .fusion import FUSION_ATTENTION

__all__ = [
    "AVMAEConfig",
    "MODEL_PRESETS",
    "ModelConfigError",
    "get_model_config",
]

# --------------------------------------------------------------------------------------------
# Architecture presets (REFERENCE.md §1, §2.7, §3)
# --------------------------------------------------------------------------------------------

ATTN_IMPLS = ("sdpa", "naive")


class ModelConfigError(ValueError):
    """An unknown preset or field, or a value AVMAEConfig rejects; ``field`` names it."""

    def __init__(self, field: str, problem: str):
        super().__init__(f"AVMAEConfig: {problem}")
        self.field, self.problem = field, problem


@dataclass(frozen=True)
class AVMAEConfig:
    """Everything that fixes the AVMAE(DeepAVFusion) architecture and its inputs.

    Image input ``[B, image_in_chans, image_size, image_size]``; audio input
    ``[B, audio_in_chans, F, T]`` with ``audio_size = (F, T)`` (frequency rows, time columns).
    NOTE (deliberate difference): no dropout / drop-path options; official pre-training sets
    them to 0, and only the downstream fine-tuning (not part of this project) uses drop-path.
    """

    # ViT towers (image and audio share the width/depth/heads, as in every release)
    embed_dim: int = 768
    depth: int = 12
    num_heads: int = 12
    mlp_ratio: float = 4.0
    patch_size: int = 16
    image_size: int = 224
    audio_size: tuple[int, int] = (128, 192)
    image_in_chans: int = 3
    audio_in_chans: int = 1
    # fusion (REFERENCE §2)
    fusion_arch: str = "factorized_mmi"
    fusion_layers: str = "all"  # "all" | "none" | "0-4-8" (layers with a fusion block)
    # NOTE: the official encoder class defaults to (4, 8, 4); every official script, config and
    # release uses (16, 8, 8), which is the default here.
    num_fusion_tkns: tuple[int, int, int] = (16, 8, 8)  # fusion | visual-aggr | audio-aggr
    fusion_mlp_ratio: float = 1.0
    fusion_attn_ratio: float = 0.25
    fusion_num_heads: int = 12
    # plain MAE decoders (REFERENCE §3.3)
    decoder_dim: int = 512
    decoder_depth: int = 8
    decoder_num_heads: int = 16
    decoder_mlp_ratio: float = 4.0
    # pre-training objective (REFERENCE §3.1, §3.5)
    image_mask_ratio: float = 0.75
    audio_mask_ratio: float = 0.8
    norm_pix_loss: bool = True
    # execution (no effect on the state dict)
    attn_impl: str = "sdpa"  # "sdpa" | "naive" softmax(q kᵀ) v (benchmark baseline)
    activation_checkpointing: bool = False
    # preprocessing facts the inputs must follow
    audio_frontend: str = "deepavfusion"
    image: ImageSpec = ImageSpec()

    def __post_init__(self) -> None:
        problem = next(_config_problems(self), None)
        if problem:
            raise ModelConfigError(*problem)

    @property
    def image_grid(self) -> tuple[int, int]:
        """Patch grid (rows, columns) of the image."""
        return (self.image_size // self.patch_size,) * 2

    @property
    def audio_grid(self) -> tuple[int, int]:
        """Patch grid (frequency rows, time columns) of the spectrogram."""
        return (self.audio_size[0] // self.patch_size, self.audio_size[1] // self.patch_size)

    @property
    def fusion_attn_dim(self) -> int:
        """d = int(D · attn_ratio): q/k width of the fusion attention (REFERENCE §2.3)."""
        return int(self.embed_dim * self.fusion_attn_ratio)

    @property
    def fusion_layer_ids(self) -> frozenset[int]:
        if self.fusion_layers == "all":
            return frozenset(range(self.depth))
        if self.fusion_layers == "none":
            return frozenset()
        return frozenset(int(i) for i in self.fusion_layers.split("-"))

    @property
    def frontend(self) -> AudioFrontend:
        return get_frontend(self.audio_frontend)


def _config_problems(c: AVMAEConfig):
    """Yield (field, problem) for the constraints of REFERENCE §2.7 (and input-layout facts) ``c`` violates."""
    if c.fusion_arch not in FUSION_ATTENTION:
        yield (
            "fusion_arch",
            f"fusion_arch {c.fusion_arch!r} is not one of {', '.join(FUSION_ATTENTION)}",
        )
    if c.attn_impl not in ATTN_IMPLS:
        yield "attn_impl", f"attn_impl {c.attn_impl!r} is not one of {', '.join(ATTN_IMPLS)}"
    if c.embed_dim % 4 or c.embed_dim % c.num_heads or c.embed_dim % c.fusion_num_heads:
        yield (
            "embed_dim",
            (
                f"embed_dim {c.embed_dim} must be divisible by 4, num_heads ({c.num_heads}) "
                f"and fusion_num_heads ({c.fusion_num_heads})"
            ),
        )
    if c.fusion_attn_dim == 0 or c.fusion_attn_dim % c.fusion_num_heads:
        yield (
            "fusion_attn_ratio",
            (
                f"fusion attention width int(embed_dim * fusion_attn_ratio) = "
                f"{c.fusion_attn_dim} must be a positive multiple of fusion_num_heads "
                f"({c.fusion_num_heads})"
            ),
        )
    if c.decoder_dim % 4 or c.decoder_dim % c.decoder_num_heads:
        yield (
            "decoder_dim",
            f"decoder_dim {c.decoder_dim} must be divisible by 4 and decoder_num_heads ({c.decoder_num_heads})",
        )
    if len(c.num_fusion_tkns) != 3 or min(c.num_fusion_tkns) < 1:
        yield (
            "num_fusion_tkns",
            f"num_fusion_tkns {c.num_fusion_tkns} must be 3 group sizes >= 1 (fusion, visual, audio)",
        )
    sides = (c.image_size, *c.audio_size)
    if any(s % c.patch_size for s in sides) or min(sides) < c.patch_size:
        yield (
            "patch_size",
            f"image_size {c.image_size} and audio_size {c.audio_size} must be multiples of patch_size {c.patch_size}",
        )
    for name, ratio in (
        ("image_mask_ratio", c.image_mask_ratio),
        ("audio_mask_ratio", c.audio_mask_ratio),
    ):
        if not 0.0 <= ratio < 1.0:
            yield name, f"{name} must be in [0, 1), got {ratio}"
    if c.fusion_layers not in ("all", "none") and not all(
        p.isdigit() and int(p) < c.depth for p in c.fusion_layers.split("-")
    ):
        yield (
            "fusion_layers",
            f"fusion_layers {c.fusion_layers!r}: expected 'all', 'none' or layer ids like '0-4-8' below depth {c.depth}",
        )
    if c.image.size != c.image_size:
        yield "image", f"image.size {c.image.size} must equal image_size {c.image_size}"
    if c.audio_frontend not in FRONTENDS:
        yield (
            "audio_frontend",
            f"audio_frontend {c.audio_frontend!r} is not one of {', '.join(FRONTENDS)}",
        )
    else:
        fe = c.frontend
        expected = (fe.window_frames, fe.n_mels) if fe.time_major else (fe.n_mels, fe.window_frames)
        if tuple(c.audio_size) != expected:
            yield (
                "audio_size",
                f"audio_size {tuple(c.audio_size)} does not match the {fe.name!r} front end's model input {expected}",
            )


MODEL_PRESETS: dict[str, AVMAEConfig] = {
    # Released VGGSound-200ep model: 320,563,712 parameters (REFERENCE §4.2).
    "vggsound": AVMAEConfig(fusion_mlp_ratio=1.0, fusion_attn_ratio=0.25),
    # Released AudioSet-2M-200ep model: 378,997,760 parameters.
    "as2m": AVMAEConfig(fusion_mlp_ratio=4.0, fusion_attn_ratio=1.0),
    # Tiny model for CPU runs and tests; same code paths (factorized fusion with d < D, decoders,
    # norm-pix loss) and the default audio front end's [1, 128, 192] input.
    "debug": AVMAEConfig(
        embed_dim=64,
        depth=2,
        num_heads=4,
        image_size=64,
        num_fusion_tkns=(4, 2, 2),
        fusion_mlp_ratio=1.0,
        fusion_attn_ratio=0.25,
        fusion_num_heads=4,
        decoder_dim=32,
        decoder_depth=1,
        decoder_num_heads=4,
        image=ImageSpec(size=64),
    ),
}


def get_model_config(name: str, **overrides) -> AVMAEConfig:
    """The preset ``name`` with ``overrides`` of AVMAEConfig fields applied.

    Overrides may be plain data as YAML or a checkpoint holds them (lists for tuples, a partial
    mapping for ``image``); an ``image_size`` override also resizes ``image``.
    Raises ``ModelConfigError`` naming the preset or field at fault.
    """
    if name not in MODEL_PRESETS:
        raise ModelConfigError(
            "preset", f"unknown model preset {name!r} (known: {', '.join(MODEL_PRESETS)})"
        )
    base = MODEL_PRESETS[name]
    known = {f.name for f in fields(AVMAEConfig)}
    unknown = sorted(set(overrides) - known)
    if unknown:
        raise ModelConfigError(
            unknown[0],
            f"unknown model config field {unknown[0]!r} (known: {', '.join(sorted(known))})",
        )
    if "image_size" in overrides:
        size = overrides["image_size"]
        base = replace(base, image_size=size, image=replace(base.image, size=size))
    return replace(base, **{k: _typed(v, getattr(base, k)) for k, v in overrides.items()})


def _typed(value, current):
    """Plain data as the field's type: a list → tuple, a mapping → ``current`` with its keys replaced."""
    if isinstance(value, Mapping) and is_dataclass(current):
        return replace(current, **{k: _typed(v, getattr(current, k)) for k, v in value.items()})
    return tuple(value) if isinstance(value, list) else value
