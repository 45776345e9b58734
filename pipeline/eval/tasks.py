"""Task registry: ``EvalConfig.task`` → ``run(cfg, info) -> metrics dict`` (see the package docstring).

Entries import their module on first call, so `avfusion eval` loads only the task it runs.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable

from pipeline.engine.distributed import DistInfo
from pipeline.eval.config import EvalConfig

Task = Callable[[EvalConfig, DistInfo], dict]


def _lazy(module: str, function: str = "run") -> Task:
    def task(cfg: EvalConfig, info: DistInfo) -> dict:
        return getattr(importlib.import_module(module), function)(cfg, info)

    task.__qualname__ = f"{module}.{function}"
    return task


TASKS: dict[str, Task] = {
    "linear": _lazy("pipeline.eval.classification"),
    "finetune": _lazy("pipeline.eval.classification"),
    "avs": _lazy("pipeline.eval.avs"),
    "separation": _lazy("pipeline.eval.separation"),
    "localization": _lazy("pipeline.eval.localization"),
}
