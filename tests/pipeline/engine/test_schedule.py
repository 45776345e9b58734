"""LR schedule (warm-up + cosine to 0, tower ramp) and AdamW groups — REFERENCE.md §7.2–7.3."""

import math

import pytest
import torch

from pipeline.config import OptimConfig
from pipeline.engine.schedule import LRSchedule, param_groups


def test_lr_from_effective_batch():
    assert LRSchedule.from_config(OptimConfig(), 512).lr == pytest.approx(3.0e-4)
    assert LRSchedule.from_config(OptimConfig(), 2048).lr == pytest.approx(1.2e-3)
    assert LRSchedule.from_config(OptimConfig(lr=0.01), 2048).lr == 0.01


def test_warmup_cosine_and_ramp_values():
    s = LRSchedule.from_config(OptimConfig(), 512)  # 200 epochs, 40 warm-up, ramp over 100
    assert s.base(0.0) == 0.0
    assert s.base(20.0) == pytest.approx(1.5e-4)
    assert s.base(40.0) == pytest.approx(3.0e-4)
    assert s.base(120.0) == pytest.approx(1.5e-4)  # half-way through the cosine
    assert s.base(200.0) == 0.0  # min_lr ignored: exactly 0
    assert s.ramp(0.0) == 0.0 and s.ramp(50.0) == pytest.approx(0.5)
    assert s.ramp(100.0) == 1.0 and s.ramp(150.0) == 1.0
    assert s.ramp(25.0) == pytest.approx(0.5 - 0.5 * math.cos(math.pi / 4))


class _Toy(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.tower = torch.nn.Linear(4, 4)
        self.head = torch.nn.Linear(4, 2)
        self.token = torch.nn.Parameter(torch.zeros(1, 2, 4))
        self.frozen = torch.nn.Parameter(torch.zeros(3), requires_grad=False)

    def no_weight_decay(self):
        return {n for n, p in self.named_parameters() if p.ndim <= 1 or n.endswith(".bias")}


def test_groups_and_apply():
    model = _Toy()
    groups = param_groups(model, 0.05, {"image": {"tower.weight", "tower.bias"}})
    by_name = {g["name"]: g for g in groups}
    assert set(by_name) == {"image/decay", "image/no_decay", "other/decay", "other/no_decay"}
    assert by_name["other/decay"]["weight_decay"] == 0.05
    assert any(p is model.token for p in by_name["other/decay"]["params"])  # tokens are decayed
    assert all(p is not model.frozen for g in groups for p in g["params"])  # frozen left out
    opt = torch.optim.AdamW(groups, lr=1.0)
    s = LRSchedule(lr=1.0, epochs=10, warmup_epochs=2, ramp_epochs=5)
    base = s.apply(opt, 1.0)
    assert base == pytest.approx(0.5)
    lrs = {g["name"]: g["lr"] for g in opt.param_groups}
    assert lrs["other/decay"] == pytest.approx(0.5)
    assert lrs["image/decay"] == pytest.approx(0.5 * s.ramp(1.0))


def test_every_parameter_gets_the_recipes_weight_decay():
    """#19.5: 0.05 on weight matrices, tokens and decoder pos-embeds; exactly 0 on biases and
    1-d parameters (norms); frozen sin-cos tables in no group — read from the real optimizer."""
    from model import AVMAE, get_model_config
    from pipeline.engine.schedule import build_optimizer

    model = AVMAE(get_model_config("debug"))
    towers = model.tower_parameter_names()
    opt = build_optimizer(
        model, OptimConfig(weight_decay=0.05), {"image": towers["image"]}, 1e-3, torch.device("cpu")
    )
    decay_of = {id(p): g["weight_decay"] for g in opt.param_groups for p in g["params"]}
    trainable = {n: p for n, p in model.named_parameters() if p.requires_grad}
    assert len(decay_of) == len(trainable) == sum(len(g["params"]) for g in opt.param_groups)
    for name, p in trainable.items():
        expected = 0.0 if p.ndim <= 1 or name.endswith(".bias") else 0.05
        assert decay_of[id(p)] == expected, name
    assert {0.0, 0.05} == set(decay_of.values())
    assert any(n.endswith("norm.weight") for n in trainable)  # the zero-decay rule is exercised
