"""Counting host reads of device tensors (``.item()``, ``bool()``, ``.tolist()``, …) made by our
own code: the sync-free step is checked with it (tests) and measured with it (benchmarks)."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[2]
OWN_CODE = tuple(str(REPO / d) + os.sep for d in ("model", "pipeline"))
HOST_READS = ("item", "__bool__", "tolist", "cpu", "numpy", "__float__", "__int__", "__index__")


class HostReadCounter:
    """Counts Tensor → host conversions whose caller is a file under model/ or pipeline/."""

    def __init__(self):
        self.count, self._saved = 0, {}

    def __enter__(self):
        for name in HOST_READS:
            original = self._saved[name] = getattr(torch.Tensor, name)
            setattr(torch.Tensor, name, self._wrap(original))
        return self

    def __exit__(self, *exc):
        for name, original in self._saved.items():
            setattr(torch.Tensor, name, original)

    def _wrap(self, original):
        def counted(tensor, *args, **kwargs):
            if sys._getframe(1).f_code.co_filename.startswith(OWN_CODE):
                self.count += 1
            return original(tensor, *args, **kwargs)

        return counted
