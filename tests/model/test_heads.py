"""The dense-task heads: the release's sizes, names, shapes and wiring facts (the numbers they
compute are checked against the official code by the head parity fixtures, test_parity.py)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from model.heads import (
    AVSHead,
    SeparationHead,
    adapt_head_keys,
    release_avs_channels,
    release_layers,
)


def _count(m: nn.Module) -> int:
    return sum(p.numel() for p in m.parameters())


def test_heads_have_the_release_parameter_counts_at_vit_b():
    assert _count(AVSHead(768, 14)) == 37_795_201  # official AVSegmSimple minus its encoder
    assert _count(SeparationHead(768, (8, 12))) == 46_926_241  # official AVSrcSepUNet


def test_release_widths_and_layers():
    assert release_avs_channels(768) == (768, 384, 192, 128)  # max(128, D // s)
    assert release_layers(12, 4) == [0, 3, 7, 11]
    assert release_layers(12, 5)[::-1] == [11, 8, 5, 2, 0]  # separation, finest scale first
    with pytest.raises(ValueError, match="the first equal to D = 64"):
        AVSHead(64, 4)  # the release's rule gives (128, …): its top block would not fit


def test_head_layernorms_use_eps_1e5():
    for head in (AVSHead(64, 4, (64, 32, 16, 16)), SeparationHead(64, (8, 12))):
        eps = {m.eps for m in head.modules() if isinstance(m, nn.LayerNorm)}
        assert eps == {1e-5}


def test_release_init_conv_biases_zero_in_avs_only():
    torch.manual_seed(0)
    avs, sep = AVSHead(64, 4, (64, 32, 16, 16)), SeparationHead(64, (8, 12))
    assert all(
        not m.bias.any()
        for m in avs.modules()
        if isinstance(m, nn.Conv2d | nn.ConvTranspose2d) and m.bias is not None
    )
    assert sep.pred.bias.any()  # left at PyTorch's draw, as released
    for head in (avs, sep):
        linears = [m for m in head.modules() if isinstance(m, nn.Linear)]
        assert linears and all(not m.bias.any() for m in linears)


def test_avs_head_shapes_and_per_sample_independence():
    """4 image layers on a 4 × 4 grid + audio tokens → [B, 1, 64, 64]; in eval mode one sample's
    logits do not depend on the other samples of the batch."""
    torch.manual_seed(0)
    head = AVSHead(64, 4, (64, 32, 16, 16)).eval()
    layers = [torch.randn(2, 16, 64) for _ in range(4)]
    audio = torch.randn(2, 12, 64)
    with torch.no_grad():
        out = head(layers, audio)
        alone = head([x[:1] for x in layers], audio[:1])
        other = head([torch.cat((x[:1], torch.randn(1, 16, 64))) for x in layers], audio)
        moved = head(layers, torch.cat((torch.randn(1, 12, 64), audio[1:])))
    assert out.shape == (2, 1, 64, 64)
    assert torch.allclose(alone[0], out[0], atol=1e-5, rtol=1e-5)
    assert torch.allclose(other[0], out[0], atol=1e-5, rtol=1e-5)
    assert not torch.allclose(moved[0], out[0])  # the audio changes the mask
    assert torch.allclose(moved[1], out[1], atol=1e-5, rtol=1e-5)


def test_avs_head_num_classes():
    head = AVSHead(64, 4, (64, 32, 16, 16), num_classes=3).eval()
    with torch.no_grad():
        out = head([torch.randn(1, 16, 64) for _ in range(4)], torch.randn(1, 5, 64))
    assert out.shape == (1, 3, 64, 64)


def test_separation_head_maps_token_grids_to_a_full_mask_and_the_picture_changes_it():
    torch.manual_seed(0)
    head = SeparationHead(64, (8, 12)).eval()
    layers = [torch.randn(2, 96, 64) for _ in range(5)]
    image = torch.randn(2, 16, 64)
    with torch.no_grad():
        seen, blind = head(layers, image), head(layers)
        other = head(layers, image.flip(0))
    assert seen.shape == blind.shape == (2, 1, 128, 192)
    assert not torch.allclose(seen, blind)
    assert not torch.allclose(seen[0], other[0])  # another picture, another mask
    swapped = torch.stack([image[0], torch.randn(16, 64)])
    with torch.no_grad():
        assert torch.allclose(
            head(layers, swapped)[0], seen[0], atol=1e-5, rtol=1e-5
        )  # its own picture


def test_separation_visual_is_the_mean_of_normalised_tokens():
    """The release takes mean(LayerNorm(tokens)), not LayerNorm(mean(tokens)): two token sets
    with the same mean give different masks, a permutation of the tokens the same one."""
    torch.manual_seed(0)
    head = SeparationHead(64, (8, 12)).eval()
    layers = [torch.randn(1, 96, 64) for _ in range(5)]
    tokens = torch.randn(1, 16, 64)
    spread = tokens + torch.randn(1, 16, 64) * 3
    spread = spread - spread.mean(1, keepdim=True) + tokens.mean(1, keepdim=True)  # same mean
    with torch.no_grad():
        base = head(layers, tokens)
        assert torch.allclose(head(layers, tokens.flip(1)), base, atol=1e-5, rtol=1e-5)
        assert not torch.allclose(head(layers, spread), base, atol=1e-4)


def test_each_token_decodes_its_own_block_of_mel_bins():
    """A change in one token of the finest-scale layer moves the mask only near that token's
    16 × 16 block (transposed convolutions, then three 3×3 convs at full size: ≤ 5 bins of
    spill), while a token of the bottom layer reaches far across the map."""
    torch.manual_seed(0)
    head = SeparationHead(64, (8, 12)).eval()
    layers = [torch.randn(1, 96, 64) for _ in range(5)]
    changed = [x.clone() for x in layers]
    changed[0][0, 5 * 12 + 6] = torch.randn(64)  # token (row 5, column 6), finest-scale layer
    with torch.no_grad():
        diff = (head(changed) - head(layers)).abs()[0, 0]
    rows, cols = diff.gt(1e-6).nonzero(as_tuple=True)
    assert rows.numel() > 0
    assert rows.min() >= 5 * 16 - 5 and rows.max() < 6 * 16 + 5
    assert cols.min() >= 6 * 16 - 5 and cols.max() < 7 * 16 + 5
    bottom = [x.clone() for x in layers]
    bottom[4][0, 5 * 12 + 6] = torch.randn(64)
    with torch.no_grad():
        rows, _ = (head(bottom) - head(layers)).abs()[0, 0].gt(1e-6).nonzero(as_tuple=True)
    assert rows.max() - rows.min() > 3 * 16


@pytest.mark.parametrize(
    "task,ours,official",
    [
        ("avs", "lat.0.up.weight", "lat.0.up.weight"),
        ("avs", "predictor.2.bias", "predictor.2.bias"),
        ("separation", "cond.0.weight", "avss_decoder.cond5.weight"),
        ("separation", "cond.4.bias", "avss_decoder.cond1.bias"),
        (
            "separation",
            "lat.0.conv.double_conv.1.running_var",
            "avss_decoder.lat4.conv.double_conv.1.running_var",
        ),
        ("separation", "up.3.up.weight", "avss_decoder.up1.up.weight"),
        ("separation", "xa_norm.4.weight", "avss_decoder.xa_norm.4.weight"),
        ("separation", "top.double_conv.0.weight", "avss_decoder.top.double_conv.0.weight"),
    ],
)
def test_head_key_adapter_both_ways(task, ours, official):
    x = torch.zeros(1)
    assert list(adapt_head_keys({ours: x}, task, "official")) == [official]
    assert list(adapt_head_keys({official: x}, task, "ours")) == [ours]


def test_key_adapter_round_trips_every_head_key():
    for task, head in (
        ("avs", AVSHead(64, 4, (64, 32, 16, 16))),
        ("separation", SeparationHead(64, (8, 12))),
    ):
        state = head.state_dict()
        official = adapt_head_keys(state, task, "official")
        assert len(official) == len(state)
        assert list(adapt_head_keys(official, task, "ours")) == list(state)
