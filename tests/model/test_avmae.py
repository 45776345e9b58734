"""AVMAE on the debug preset: masking, decoding, gradients, checkpointing, precision."""

from __future__ import annotations

import pytest
import torch

from model import AVMAE
from model.masking import random_masking

from .conftest import debug_model


def _masks(model: AVMAE, seed: int, batch: int = 2) -> dict:
    g = torch.Generator().manual_seed(seed)
    out = {}
    for m, shape in (("image", (batch, 3, 64, 64)), ("audio", (batch, 1, 128, 192))):
        drawn = model.masks_for(m, torch.empty(shape), None, g)
        out[m] = {"ids_keep": drawn.ids_keep, "ids_restore": drawn.ids_restore, "mask": drawn.mask}
    return out


def test_forward_shapes_and_mask_counts(model, inputs):
    out = model(*inputs, generator=torch.Generator().manual_seed(0))
    assert out.pred_image.shape == (2, 16, 16 * 16 * 3) and out.pred_audio.shape == (2, 96, 256)
    # int(L (1 - r)) kept: 16 * 0.25 = 4 image patches, int(96 * 0.2) = 19 audio patches
    assert out.mask_image.sum(1).tolist() == [12, 12] and out.mask_audio.sum(1).tolist() == [77, 77]
    assert out.loss.dtype == torch.float32 and out.loss.ndim == 0
    assert torch.equal(out.loss, out.loss_image + out.loss_audio)


def test_random_masking_convention():
    m = random_masking(3, 96, 0.8, "cpu", torch.Generator().manual_seed(5))
    assert m.ids_keep.shape == (3, 19)
    assert torch.equal(
        torch.gather(m.ids_restore, 1, torch.argsort(m.ids_restore, 1)),
        torch.arange(96).expand(3, -1),
    )
    assert (m.mask.gather(1, m.ids_keep) == 0).all() and m.mask.sum(1).tolist() == [77] * 3
    assert any(not torch.equal(r, r.sort().values) for r in m.ids_keep)  # shuffled, not sorted


def test_generator_makes_masks_reproducible(model, inputs):
    a = model(*inputs, generator=torch.Generator().manual_seed(7))
    b = model(*inputs, generator=torch.Generator().manual_seed(7))
    c = model(*inputs, generator=torch.Generator().manual_seed(8))
    assert torch.equal(a.mask_audio, b.mask_audio) and torch.equal(a.loss, b.loss)
    assert not torch.equal(a.mask_audio, c.mask_audio)


def test_given_masks_and_ids_shuffle_agree(model, inputs):
    masks = _masks(model, 11)
    shuffle = {m: {"ids_shuffle": torch.argsort(v["ids_restore"], 1)} for m, v in masks.items()}
    a, b = model(*inputs, masks=masks), model(*inputs, masks=shuffle)
    assert torch.equal(a.mask_image, masks["image"]["mask"])
    assert torch.equal(a.pred_image, b.pred_image) and torch.equal(a.loss, b.loss)


def test_prediction_depends_only_on_kept_set(model, inputs):
    """Reordering ids_keep (same kept set) permutes encoder outputs but not the reconstruction."""
    masks = _masks(model, 12)
    model.eval()
    with torch.no_grad():
        a = model(*inputs, masks=masks)
        for spec in masks.values():
            keep = spec["ids_keep"].flip(1)
            rest = torch.argsort(spec["ids_restore"], 1)[:, keep.shape[1] :]
            spec["ids_keep"], spec["ids_restore"] = (
                keep,
                torch.argsort(torch.cat((keep, rest), 1), 1),
            )
        b = model(*inputs, masks=masks)
    torch.testing.assert_close(b.pred_image, a.pred_image, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(b.loss, a.loss)


@pytest.mark.parametrize(
    "bad,match",
    [
        ({"ids_shuffle": torch.zeros(2, 96, dtype=torch.long)}, "permutation"),
        ({"ids_keep": torch.zeros(2, 19, dtype=torch.long)}, "missing ids_restore, mask"),
        ("wrong_mask", "mask"),
        ("wrong_keep", "ids_keep"),
    ],
)
def test_invalid_masks_are_rejected(model, inputs, bad, match):
    spec = _masks(model, 13)["audio"]
    if bad == "wrong_mask":
        bad = {**spec, "mask": 1 - spec["mask"]}
    elif bad == "wrong_keep":
        bad = {**spec, "ids_keep": spec["ids_keep"].roll(1, dims=1)}
    with pytest.raises(ValueError, match=match):
        model(*inputs, masks={"audio": bad})


def test_patchify_layout_and_inverse(model, inputs):
    image, audio = inputs
    patches = model.patchify(image, "image")
    b, c, r, col, i, j = 1, 2, 3, 1, 5, 9  # channel fastest within a patch
    assert patches[b, r * 4 + col, (i * 16 + j) * 3 + c] == image[b, c, r * 16 + i, col * 16 + j]
    f, t = 7, 11  # audio rows = frequency
    assert model.patchify(audio, "audio")[0, f * 12 + t, 0] == audio[0, 0, f * 16, t * 16]
    assert torch.equal(model.unpatchify(patches, "image"), image)
    assert torch.equal(model.unpatchify(model.patchify(audio, "audio"), "audio"), audio)
    with pytest.raises(ValueError, match="expected"):
        model.patchify(audio, "image")


def test_encoder_only_forward(model, inputs):
    model.eval()
    with torch.no_grad():
        enc = model.forward_encoder(*inputs)
        identity = model.encoder(
            *inputs, torch.arange(16).expand(2, -1), torch.arange(96).expand(2, -1)
        )
    assert (
        enc.image.shape == (2, 16, 64)
        and enc.audio.shape == (2, 96, 64)
        and enc.fusion.shape == (2, 8, 64)
    )
    assert torch.equal(enc.fusion, identity.fusion) and torch.equal(enc.audio, identity.audio)
    for name in ("image", "audio", "fusion"):
        torch.testing.assert_close(enc.pooled[name], getattr(enc, name).mean(1))


def _grads(model: AVMAE, inputs, masks) -> tuple[torch.Tensor, dict]:
    model.zero_grad()
    loss = model(*inputs, masks=masks).loss
    loss.backward()
    return loss.detach(), {
        n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None
    }


def test_gradients_reach_every_trainable_parameter(model, inputs):
    _, grads = _grads(model, inputs, _masks(model, 14))
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert set(grads) == trainable
    assert all(g.abs().sum() > 0 for g in grads.values())
    frozen = {n for n, p in model.named_parameters() if not p.requires_grad}
    assert frozen == {"encoder.image.pos_embed", "encoder.audio.pos_embed"}


def test_activation_checkpointing_changes_nothing(model, inputs):
    masks = _masks(model, 15)
    loss_a, grads_a = _grads(model, inputs, masks)
    model.set_grad_checkpointing(True)
    loss_b, grads_b = _grads(model, inputs, masks)
    assert torch.equal(loss_a, loss_b)
    for name, g in grads_a.items():
        torch.testing.assert_close(grads_b[name], g, rtol=1e-6, atol=1e-8, msg=name)
    ckpt = debug_model(activation_checkpointing=True)
    assert ckpt.grad_checkpointing and ckpt.encoder.grad_checkpointing


def test_naive_attention_matches_sdpa(model, inputs):
    naive = debug_model(attn_impl="naive")
    naive.load_state_dict(model.state_dict())
    masks = _masks(model, 16)
    with torch.no_grad():
        a, b = model(*inputs, masks=masks), naive(*inputs, masks=masks)
    torch.testing.assert_close(b.pred_audio, a.pred_audio, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(b.loss, a.loss, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("arch", ["token", "dense_mmi"])
def test_other_fusion_archs_train(arch, inputs):
    model = debug_model(fusion_arch=arch)
    loss, grads = _grads(model, inputs, _masks(model, 17))
    assert torch.isfinite(loss) and set(grads) == {
        n for n, p in model.named_parameters() if p.requires_grad
    }


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_autocast_losses_finite_and_close_to_fp32(model, inputs, dtype):
    masks = _masks(model, 18)
    with torch.no_grad():
        ref = model(*inputs, masks=masks)
        with torch.autocast("cpu", dtype=dtype):
            low = model(*inputs, masks=masks)
    assert low.loss.dtype == torch.float32 and torch.isfinite(low.loss)
    for name in ("loss_image", "loss_audio"):
        torch.testing.assert_close(getattr(low, name), getattr(ref, name), rtol=2e-2, atol=0)


def test_parameter_groups(model):
    no_wd = model.no_weight_decay()
    names = {n for n, p in model.named_parameters() if p.requires_grad}
    assert no_wd <= names and "encoder.fusion_norm.weight" in no_wd
    assert "encoder.image.blocks.0.attn.qkv.bias" in no_wd
    # official: tokens and decoder pos-embeds are decayed (ndim > 1, not a bias)
    assert (
        not {"encoder.fusion_tokens", "image_decoder.mask_token", "audio_decoder.pos_embed"} & no_wd
    )
    towers = model.tower_parameter_names()
    assert towers["image"] == {n for n in names if n.startswith("encoder.image.")}
    assert towers["audio"] == {n for n in names if n.startswith("encoder.audio.")}
    assert "encoder.image.pos_embed" not in towers["image"]
