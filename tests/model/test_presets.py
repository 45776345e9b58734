"""Model preset registry: release ratios, debug constraints, preprocessing facts, validation."""

from __future__ import annotations

import dataclasses

import pytest

from avbase.features import FRONTENDS
from model import MODEL_PRESETS, get_model_config
from model.presets import ModelConfigError


def test_release_presets():
    vgg, as2m = get_model_config("vggsound"), get_model_config("as2m")
    assert (vgg.fusion_mlp_ratio, vgg.fusion_attn_ratio) == (1.0, 0.25)
    assert (as2m.fusion_mlp_ratio, as2m.fusion_attn_ratio) == (4.0, 1.0)
    for cfg in (vgg, as2m):
        assert cfg.fusion_arch == "factorized_mmi" and cfg.num_fusion_tkns == (16, 8, 8)
        assert cfg.image_grid == (14, 14) and cfg.audio_grid == (8, 12)
        assert cfg.image.size == cfg.image_size == 224


def test_every_preset_carries_consistent_preprocessing_facts():
    for name, cfg in MODEL_PRESETS.items():
        fe = cfg.frontend
        assert cfg.audio_size == (fe.n_mels, fe.window_frames), name
        assert cfg.image.size == cfg.image_size, name
        assert (
            fe.sample_rate and fe.n_fft and fe.hop_length and fe.window_seconds and cfg.image.mean
        )


def test_debug_preset_is_small_and_feeds_default_shards():
    cfg = get_model_config("debug")
    assert cfg.audio_frontend == "deepavfusion" and cfg.audio_size == (128, 192)
    assert FRONTENDS["deepavfusion"].window_frames == cfg.audio_size[1]
    assert (cfg.embed_dim, cfg.depth, cfg.num_heads, cfg.decoder_dim, cfg.decoder_depth) == (
        64,
        2,
        4,
        32,
        1,
    )
    assert cfg.fusion_arch == "factorized_mmi" and cfg.fusion_attn_dim < cfg.embed_dim


def test_overrides_and_errors():
    cfg = get_model_config("debug", image_size=96, fusion_arch="token", audio_size=[128, 192])
    assert cfg.image.size == 96 and cfg.fusion_arch == "token" and cfg.audio_size == (128, 192)
    with pytest.raises(ValueError, match="unknown model preset 'vit'"):
        get_model_config("vit")
    with pytest.raises(ValueError, match="unknown model config field 'width'"):
        get_model_config("debug", width=3)
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.depth = 3


def test_plain_data_overrides_and_the_field_at_fault():
    """Overrides as YAML / a checkpoint hold them; errors name the field (the config layer's key)."""
    cfg = get_model_config("debug", num_fusion_tkns=[4, 2, 2], image={"mean": [0.5, 0.5, 0.5]})
    assert (
        cfg.num_fusion_tkns == (4, 2, 2)
        and cfg.image.mean == (0.5, 0.5, 0.5)
        and cfg.image.size == 64
    )
    for overrides, field in (
        ({"image_mask_ratio": 1.0}, "image_mask_ratio"),
        ({"width": 3}, "width"),
        ({"audio_size": (128, 256)}, "audio_size"),
        ({"fusion_arch": "x"}, "fusion_arch"),
    ):
        with pytest.raises(ModelConfigError) as info:
            get_model_config("debug", **overrides)
        assert info.value.field == field


@pytest.mark.parametrize(
    "overrides,match",
    [
        ({"embed_dim": 66}, "embed_dim 66 must be divisible"),
        ({"fusion_attn_ratio": 0.3}, "multiple of fusion_num_heads"),
        ({"num_fusion_tkns": (4, 0, 2)}, "num_fusion_tkns"),
        ({"image_size": 72}, "multiples of patch_size"),
        ({"audio_size": (128, 256)}, "does not match the 'deepavfusion' front end"),
        ({"fusion_arch": "cross"}, "fusion_arch 'cross'"),
        ({"attn_impl": "flash"}, "attn_impl 'flash'"),
        ({"image_mask_ratio": 1.0}, "image_mask_ratio"),
        ({"fusion_layers": "0-5"}, "fusion_layers"),
        ({"decoder_num_heads": 5}, "decoder_dim 32"),
    ],
)
def test_constraints(overrides, match):
    with pytest.raises(ValueError, match=match):
        get_model_config("debug", **overrides)


def test_partial_fusion_layers_keep_official_indices(inputs):
    from model import AVMAE

    model = AVMAE(get_model_config("debug", fusion_layers="1"))
    keys = {k for k in model.state_dict() if k.startswith("encoder.fusion_blocks.")}
    assert keys and all(k.startswith("encoder.fusion_blocks.1.") for k in keys)
    assert model.forward_encoder(*inputs).fusion.isfinite().all()
