"""Shared fixtures for the model tests: a seeded debug model and sample inputs."""

from __future__ import annotations

import pytest
import torch

from model import build_avmae
from tests.support.media import SHARED

PARITY_DIR = SHARED / "fixtures" / "parity"
PARITY_FIXTURES = sorted(PARITY_DIR.glob("*.pt"))
HEAD_DIR = SHARED / "fixtures" / "heads"
HEAD_FIXTURES = sorted(HEAD_DIR.glob("*.pt"))


def debug_model(seed: int = 0, **overrides):
    torch.manual_seed(seed)
    return build_avmae("debug", **overrides)


@pytest.fixture
def model():
    return debug_model()


@pytest.fixture
def inputs():
    """(image [2, 3, 64, 64], audio [2, 1, 128, 192]) on the scale of real inputs."""
    g = torch.Generator().manual_seed(1)
    return torch.randn(2, 3, 64, 64, generator=g), 2 * torch.randn(2, 1, 128, 192, generator=g) - 4
