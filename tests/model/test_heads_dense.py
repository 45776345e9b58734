"""The separation head: the release's size, shapes, and what the picture changes."""

from __future__ import annotations

import torch

from model.heads_dense import SeparationHead


def test_separation_head_has_the_release_parameter_count_at_vit_b():
    head = SeparationHead(768, (8, 12))
    assert sum(p.numel() for p in head.parameters()) == 46_926_241  # REFERENCE.md §8


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
        assert torch.allclose(head(layers, swapped)[0], seen[0])  # its own picture only


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
