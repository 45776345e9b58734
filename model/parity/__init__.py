"""Numeric parity with the official code (REFERENCE.md §10; ``avfusion model parity``).

A fixture file holds the official implementation's outputs under a key-seeded weight rule
(:mod:`model.parity.rule`): pre-training fixtures (:mod:`model.parity.pretrain`) and the dense
tasks' head fixtures (:mod:`model.parity.heads`); :func:`run_fixture` runs either kind.
"""

from __future__ import annotations

from pathlib import Path

from .heads import run_head_fixture
from .pretrain import run_pretrain_fixture
from .rule import (
    HEAD_FORMAT,
    TOLERANCE,
    ParityError,
    apply_weight_rule,
    compute_outputs,
    load_fixture,
    rule_value,
)

__all__ = [
    "TOLERANCE",
    "ParityError",
    "apply_weight_rule",
    "compute_outputs",
    "load_fixture",
    "rule_value",
    "run_fixture",
]


def run_fixture(path: str | Path, tolerance: float | None = None) -> dict:
    """Run the fixture at ``path`` (either kind); its report (``ok``, errors per output)."""
    fixture = load_fixture(path)
    if fixture["format"] == HEAD_FORMAT:
        return run_head_fixture(path, fixture, tolerance)
    return run_pretrain_fixture(path, fixture, tolerance)
