"""Per-sample independence: in a batch, sample b's outputs depend only on sample b's inputs and mask.

Guards against batch-mixing bugs (e.g. unshuffling every sample with sample 0's ids_restore, or
gathering every sample's kept tokens with sample 0's ids_keep), which the batch-1 parity fixtures
cannot see.
"""

from __future__ import annotations

import pytest
import torch

from .conftest import debug_model

BATCH = 3
PATCHES = {"image": 16, "audio": 96}  # debug preset: 4×4 image patches, 8×12 audio patches


def _inputs(seed: int, batch: int = BATCH) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(batch, 3, 64, 64, generator=g), 2 * torch.randn(
        batch, 1, 128, 192, generator=g
    ) - 4


def _masks(seed: int, batch: int = BATCH) -> dict:
    """A different random permutation per sample and modality (``ids_shuffle``)."""
    g = torch.Generator().manual_seed(seed)
    return {
        m: {"ids_shuffle": torch.stack([torch.randperm(n, generator=g) for _ in range(batch)])}
        for m, n in PATCHES.items()
    }


def _sample(masks: dict, b: int) -> dict:
    return {m: {k: v[b : b + 1] for k, v in spec.items()} for m, spec in masks.items()}


@pytest.fixture(params=["factorized_mmi", "token", "dense_mmi"])
def model(request):
    return debug_model(seed=2, fusion_arch=request.param).eval()


@torch.no_grad()
def test_batch_outputs_equal_each_sample_run_alone(model):
    image, audio = _inputs(1)
    masks = _masks(2)
    for m, spec in masks.items():  # the masks really differ per sample
        assert len({tuple(row.tolist()) for row in spec["ids_shuffle"]}) == BATCH, m
    out = model(image, audio, masks=masks)
    alone = [
        model(image[b : b + 1], audio[b : b + 1], masks=_sample(masks, b)) for b in range(BATCH)
    ]
    for b, single in enumerate(alone):
        assert torch.equal(out.mask_image[b], single.mask_image[0])
        assert torch.equal(out.mask_audio[b], single.mask_audio[0])
        torch.testing.assert_close(out.pred_image[b], single.pred_image[0], rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(out.pred_audio[b], single.pred_audio[0], rtol=1e-5, atol=1e-5)
    # Every sample removes the same number of patches, so the batch loss is the mean of theirs.
    for name in ("loss_image", "loss_audio"):
        per_sample = torch.stack([getattr(single, name) for single in alone])
        torch.testing.assert_close(getattr(out, name), per_sample.mean(), rtol=1e-5, atol=1e-6)


@torch.no_grad()
def test_perturbing_sample_0_leaves_the_others_unchanged(model):
    image, audio = _inputs(3)
    masks = _masks(4)
    before = model(image, audio, masks=masks)
    new_image, new_audio = _inputs(5, batch=1)
    new_masks = _masks(6, batch=1)
    image[0], audio[0] = new_image[0], new_audio[0]
    for m in masks:
        masks[m]["ids_shuffle"][0] = new_masks[m]["ids_shuffle"][0]
    after = model(image, audio, masks=masks)
    assert not torch.allclose(after.pred_image[0], before.pred_image[0])  # the change matters
    assert not torch.equal(after.mask_audio[0], before.mask_audio[0])
    for name in ("pred_image", "pred_audio", "mask_image", "mask_audio"):
        torch.testing.assert_close(
            getattr(after, name)[1:], getattr(before, name)[1:], rtol=1e-6, atol=1e-6, msg=name
        )
