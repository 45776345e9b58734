"""CUDA checks (skipped without a GPU): fp32 parity on the device, bf16 through fused SDPA kernels."""

import pytest
import torch
from torch.nn.attention import SDPBackend, sdpa_kernel

from model import build_avmae
from model.avmae import AVMAE
from model.parity.rule import (
    apply_weight_rule,
    compute_outputs,
    config_from_fixture,
    flatten_tensors,
    load_fixture,
)

from .conftest import PARITY_FIXTURES

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device"),
]


def _to(tree, device):
    if isinstance(tree, dict):
        return {k: _to(v, device) for k, v in tree.items()}
    return tree.to(device) if isinstance(tree, torch.Tensor) else tree


@pytest.mark.parametrize("path", PARITY_FIXTURES, ids=lambda p: p.stem)
def test_parity_on_cuda_fp32(path, monkeypatch):
    monkeypatch.setattr(torch.backends.cuda.matmul, "allow_tf32", False)
    monkeypatch.setattr(torch.backends.cudnn, "allow_tf32", False)
    fixture = load_fixture(path)
    model = AVMAE(config_from_fixture(fixture["config"])).eval()
    apply_weight_rule(model)
    model.cuda()
    with torch.no_grad():
        ours = compute_outputs(
            model,
            {
                **fixture,
                "inputs": _to(fixture["inputs"], "cuda"),
                "masking": _to(fixture["masking"], "cuda"),
            },
        )
    for name, ref in flatten_tensors(fixture["outputs"]).items():
        err = (ours[name].detach().float().cpu() - ref.float()).abs().max().item()
        assert err <= 1e-5, (name, err)


def test_bf16_fused_attention_matches_fp32():
    """vggsound preset, batch 4: bf16 autocast with only fused SDPA kernels (no math fallback)."""
    torch.manual_seed(0)
    model = build_avmae("vggsound").cuda()
    g = torch.Generator().manual_seed(1)
    image = torch.randn(4, 3, 224, 224, generator=g).cuda()
    audio = (2 * torch.randn(4, 1, 128, 192, generator=g) - 4).cuda()
    masks = lambda: torch.Generator(device="cuda").manual_seed(3)  # noqa: E731
    ref = model(image, audio, generator=masks()).loss.item()
    with (
        sdpa_kernel([SDPBackend.FLASH_ATTENTION, SDPBackend.EFFICIENT_ATTENTION]),
        torch.autocast("cuda", dtype=torch.bfloat16),
    ):
        out = model(image, audio, generator=masks())
    assert out.loss.dtype == torch.float32
    assert torch.isfinite(out.loss)
    assert out.loss.item() == pytest.approx(ref, rel=2e-2)
    out.loss.backward()
    grads = [p.grad for p in model.parameters() if p.requires_grad]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)
