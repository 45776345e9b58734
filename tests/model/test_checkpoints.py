"""Official checkpoint loading (strict, key sets, parameter counts) and MAE/AudioMAE towers."""

from __future__ import annotations

import argparse

import pytest
import torch

from model import build_avmae
from model.checkpoints import (
    CheckpointError,
    adapt_keys,
    load_official,
    load_tower_weights,
    official_state_dict,
)
from model.vit import ViT

from .conftest import PARITY_DIR, debug_model

# REFERENCE.md §4.2
COUNTS = {
    "vggsound": (320_563_712, 320_339_456, 268_660_224),
    "as2m": (378_997_760, 378_773_504, 327_094_272),
}
# REFERENCE.md §4.1: the fusion-block shapes that differ in the AS-2M release (d = 768, h = 3072)
AS2M_SHAPES = {
    "attn.q.weight": [768, 768],
    "attn.q.bias": [768],
    "attn.k.weight": [768, 1536],
    "attn.k.bias": [768],
    "mlp.fc1.weight": [3072, 768],
    "mlp.fc1.bias": [3072],
    "mlp.fc2.weight": [768, 3072],
}


def _meta(preset: str):
    with torch.device("meta"):
        return build_avmae(preset)


def _official_keys(preset: str) -> dict[str, list[int]]:
    """The official key set from the published fixture (VGGSound), AS-2M shapes per REFERENCE."""
    fixture = torch.load(PARITY_DIR / "vggsound_factorized_mmi.pt", weights_only=True)
    keys = {k: shape for k, shape, _ in fixture["state_dict_keys"]}
    if preset == "as2m":
        for key in keys:
            if key.startswith("encoder.fusion_blocks."):
                keys[key] = AS2M_SHAPES.get(key.split(".", 3)[3], keys[key])
    return keys


@pytest.mark.parametrize("preset", COUNTS)
def test_parameter_counts(preset):
    model = _meta(preset)
    total, trainable, encoder = COUNTS[preset]
    assert sum(p.numel() for p in model.parameters()) == total
    assert sum(p.numel() for p in model.parameters() if p.requires_grad) == trainable
    assert sum(p.numel() for p in model.encoder.parameters()) == encoder


@pytest.mark.parametrize("preset", COUNTS)
def test_official_key_set_loads_strictly(preset):
    keys = _official_keys(preset)
    assert len(keys) == 893
    state = {k: torch.empty(shape, device="meta") for k, shape in keys.items()}
    model = _meta(preset)
    assert load_official({"state_dict": state}, model=model) is model
    other = "as2m" if preset == "vggsound" else "vggsound"
    with pytest.raises(CheckpointError, match=r"shape mismatch 84 \(encoder.fusion_blocks"):
        load_official(state, model=_meta(other))


def test_round_trip_through_file_with_preset_detection(tmp_path, inputs):
    model = debug_model(seed=3).eval()
    path = tmp_path / "checkpoint_latest.pth"
    torch.save({"state_dict": model.state_dict(), "epoch": 4, "n_steps": torch.tensor([9])}, path)
    loaded = load_official(path).eval()  # preset found from the shapes
    assert loaded.config == model.config
    masks = {"audio": {"ids_shuffle": torch.arange(96).expand(2, -1)}}
    with torch.no_grad():
        a = model(*inputs, masks=masks, generator=torch.Generator().manual_seed(0))
        b = loaded(*inputs, masks=masks, generator=torch.Generator().manual_seed(0))
    assert torch.equal(a.pred_image, b.pred_image) and torch.equal(a.loss, b.loss)


def test_safetensors_file_loads(tmp_path):
    from safetensors.torch import save_file

    src = debug_model(seed=8)
    save_file(src.state_dict(), tmp_path / "model.safetensors")
    loaded = load_official(tmp_path / "model.safetensors")
    assert torch.equal(loaded.image_decoder.pos_embed, src.image_decoder.pos_embed)
    (tmp_path / "bad.safetensors").write_bytes(b"\x00" * 16)
    with pytest.raises(CheckpointError, match="bad.safetensors: not a readable"):
        load_official(tmp_path / "bad.safetensors")


@pytest.mark.parametrize("layout", ["model", "bare", "encoder_prefixed", "encoder_stripped"])
def test_accepted_layouts(layout):
    src = debug_model(seed=4)
    full = src.state_dict()
    state = {
        "model": {"model": full},
        "bare": full,
        "encoder_prefixed": {k: v for k, v in full.items() if k.startswith("encoder.")},
        "encoder_stripped": src.encoder.state_dict(),
    }[layout]
    dst = debug_model(seed=5)
    load_official(state, model=dst)
    assert torch.equal(
        dst.encoder.fusion_blocks[1].attn.k.weight, src.encoder.fusion_blocks[1].attn.k.weight
    )
    decoder_loaded = torch.equal(dst.audio_decoder.pred.weight, src.audio_decoder.pred.weight)
    assert decoder_loaded == (layout in ("model", "bare"))


def test_encoder_model_takes_encoder_keys_of_full_checkpoint():
    src = debug_model(seed=6)
    encoder = debug_model(seed=7).encoder
    load_official(src.state_dict(), model=encoder)  # official downstream behaviour
    assert torch.equal(encoder.fusion_tokens, src.encoder.fusion_tokens)


def test_strict_errors_name_keys(tmp_path):
    state = debug_model().state_dict()
    state.pop("encoder.fusion_norm.bias")
    state["encoder.extra.weight"] = torch.zeros(1)
    with pytest.raises(
        CheckpointError,
        match=r"missing 1 \(encoder.fusion_norm.bias\); unexpected 1 \(encoder.extra.weight\)",
    ):
        load_official(state, model=debug_model())
    with pytest.raises(CheckpointError, match="matches no model preset"):
        load_official(state)
    with pytest.raises(CheckpointError, match="not found"):
        load_official(tmp_path / "missing.pth")
    (tmp_path / "junk.pth").write_text("not a checkpoint")
    with pytest.raises(CheckpointError, match="not a readable PyTorch checkpoint"):
        load_official(tmp_path / "junk.pth")


def test_official_state_dict_unwraps_wrappers():
    model = debug_model()
    wrapper = torch.nn.Module()
    wrapper.module = model
    official = official_state_dict(wrapper)
    assert official.keys() == official_state_dict(model).keys()
    assert {
        "image_decoder_embed.weight",
        "audio_decoder_blocks.0.attn.qkv.weight",
        "audio_decoder_mask_token",
        "encoder.fusion_tokens",
    } <= official.keys()
    assert not any(k.startswith(("image_decoder.", "audio_decoder.")) for k in official)


@pytest.mark.parametrize("preset", COUNTS)
def test_key_adapter_maps_both_ways(preset):
    """Official keys → ours is our model's key set (decoders only renamed), and back again."""
    official = set(_official_keys(preset))
    ours = set(adapt_keys(dict.fromkeys(official), "ours"))
    assert ours == set(_meta(preset).state_dict())
    assert len(official - ours) == 2 * (
        8 + 8 * 12
    )  # per decoder: 2 tokens, embed/norm/pred, 8 blocks
    assert set(adapt_keys(dict.fromkeys(ours), "official")) == official
    assert set(adapt_keys(dict.fromkeys(ours), "ours")) == ours  # already in layout: unchanged
    assert set(official_state_dict(_meta(preset))) == official


def test_official_export_reloads_to_the_same_model(tmp_path, inputs):
    from safetensors.torch import save_file

    src = debug_model(seed=9).eval()
    save_file(official_state_dict(src), tmp_path / "official.safetensors")
    loaded = load_official(tmp_path / "official.safetensors", preset="debug").eval()
    masks = {
        m: {
            "ids_shuffle": torch.randperm(n, generator=torch.Generator().manual_seed(n)).expand(
                2, -1
            )
        }
        for m, n in (("image", 16), ("audio", 96))
    }
    with torch.no_grad():
        a, b = src(*inputs, masks=masks), loaded(*inputs, masks=masks)
    assert torch.equal(a.pred_audio, b.pred_audio) and torch.equal(a.pred_image, b.pred_image)


# --------------------------------------------------------------------------------------------
# Tower initialisation from MAE / AudioMAE pre-training files (REFERENCE §5), here at debug size
# --------------------------------------------------------------------------------------------


def _mae_file(
    path, in_chans: int, grid, dim: int = 64, extra: dict | None = None, wrap: str = "model"
):
    """A file laid out like MAE / AudioMAE pre-training checkpoints (cls, pos + cls slot, decoder)."""
    torch.manual_seed(21)
    vit = ViT(grid, in_chans, dim, depth=2, num_heads=4, mlp_ratio=4.0, patch_size=16)
    state = {k: v for k, v in vit.state_dict().items() if k != "pos_embed"}
    n = grid[0] * grid[1] + 1
    state.update(
        {
            "cls_token": torch.randn(1, 1, dim),
            "pos_embed": torch.randn(1, n, dim),
            "mask_token": torch.randn(1, 1, 32),
            "decoder_embed.weight": torch.randn(32, dim),
            "decoder_pos_embed": torch.randn(1, n, 32),
        }
    )
    torch.save({wrap: state, **(extra or {})}, path)
    return state


def test_tower_weights_load_and_keep_sincos(tmp_path):
    model = debug_model()
    pos_before = model.encoder.image.pos_embed.clone()
    audio_before = model.encoder.audio.blocks[0].attn.qkv.weight.clone()
    state = _mae_file(tmp_path / "mae.pth", 3, (4, 4))
    load_tower_weights(model, image_path=tmp_path / "mae.pth")
    tower = model.encoder.image
    assert torch.equal(tower.blocks[1].mlp.fc2.weight, state["blocks.1.mlp.fc2.weight"])
    assert torch.equal(tower.patch_embed.proj.bias, state["patch_embed.proj.bias"])
    assert torch.equal(tower.pos_embed, pos_before)  # file's pos_embed discarded
    assert torch.equal(model.encoder.audio.blocks[0].attn.qkv.weight, audio_before)


def test_audiomae_namespace_needs_trust_pickle(tmp_path):
    path = tmp_path / "audiomae.pth"
    state = _mae_file(path, 1, (8, 12), extra={"args": argparse.Namespace(model="mae_vit_base")})
    model = debug_model()
    with pytest.raises(CheckpointError, match="trust_pickle=True"):
        load_tower_weights(model, audio_path=path)
    load_tower_weights(model, audio_path=path, trust_pickle=True)
    assert torch.equal(
        model.encoder.audio.patch_embed.proj.weight, state["patch_embed.proj.weight"]
    )


def test_wrong_or_missing_tower_file(tmp_path):
    _mae_file(tmp_path / "wide.pth", 3, (4, 4), dim=128)
    with pytest.raises(
        CheckpointError, match=r"\(image tower\).*shape mismatch.*expected an MAE ViT-B/16"
    ):
        load_tower_weights(debug_model(), image_path=tmp_path / "wide.pth")
    torch.save({"state_dict": debug_model().state_dict()}, tmp_path / "avmae.pth")
    with pytest.raises(
        CheckpointError, match=r"\(audio tower\).*missing 28 .*unexpected 165 \(audio_decoder"
    ):
        load_tower_weights(debug_model(), audio_path=tmp_path / "avmae.pth")
    with pytest.raises(CheckpointError, match="not found"):
        load_tower_weights(debug_model(), image_path=tmp_path / "absent.pth")


def test_plain_load_state_dict_takes_the_official_decoder_layout():
    """Checkpoints written before the decoders became submodules (and official files) hold
    ``image_decoder_blocks.…`` keys; ``load_state_dict`` (DeepSpeed resume) must take them."""
    from model import AVMAE, get_model_config
    from model.keys import adapt_keys

    torch.manual_seed(0)
    src = AVMAE(get_model_config("debug"))
    official = adapt_keys(src.state_dict(), "official")
    assert any(k.startswith("image_decoder_blocks.") for k in official)
    dst = AVMAE(get_model_config("debug"))
    dst.load_state_dict(official, strict=True)
    assert all(
        torch.equal(a, b)
        for a, b in zip(src.state_dict().values(), dst.state_dict().values(), strict=True)
    )
    wrapped = torch.nn.Sequential(AVMAE(get_model_config("debug")))  # a prefix, as under a wrapper
    wrapped.load_state_dict({f"0.{k}": v for k, v in official.items()}, strict=True)
