"""CUDA checks of the loader (skipped without a GPU): batches arrive on the device, normalised
there, equal to the CPU loader's; frames decoded on the device (nvJPEG) within a small tolerance."""

from itertools import islice

import pytest
import torch

from avbase.features import FRONTENDS, ImageSpec
from pipeline.config import DataConfig
from pipeline.data.loader import build_loader

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device"),
]


def first_batches(root, device: str, count: int = 3, decode: str = "worker") -> list[dict]:
    cfg = DataConfig(shards=str(root), batch_size=4, workers=1, shuffle_buffer=8, decode=decode)
    loader = build_loader(
        cfg,
        audio=FRONTENDS["deepavfusion"],
        image=ImageSpec(size=32),
        rank=0,
        world_size=1,
        seed=0,
        labels=True,
        device=device,
    )
    loader.set_epoch(0)
    batches = list(islice(loader, count))
    loader.close()
    return batches


def test_loader_batches_on_cuda_equal_the_cpu_ones(shard_set):
    cpu, gpu = first_batches(shard_set, "cpu"), first_batches(shard_set, "cuda")
    assert len(gpu) == len(cpu) == 3
    for c, g in zip(cpu, gpu, strict=True):
        assert g["image"].is_cuda and g["audio"].is_cuda and g["image"].dtype == torch.float32
        assert g["key"] == c["key"] and torch.equal(g["label"], c["label"])
        assert torch.equal(g["audio"].cpu(), c["audio"])
        torch.testing.assert_close(g["image"].cpu(), c["image"], rtol=1e-6, atol=1e-6)


def test_frames_decoded_on_the_device_match_the_cpu_path(shard_set):
    cpu, gpu = first_batches(shard_set, "cpu"), first_batches(shard_set, "cuda", decode="auto")
    for c, g in zip(cpu, gpu, strict=True):
        assert g["image"].is_cuda and g["key"] == c["key"]
        assert torch.equal(g["audio"].cpu(), c["audio"])
        # nvJPEG's IDCT and the float resize differ from libjpeg-turbo + uint8 by a few levels
        diff = (g["image"].cpu() - c["image"]).abs() * 0.225 * 255  # in uint8 levels
        assert diff.mean() < 1.0 and diff.max() < 12
