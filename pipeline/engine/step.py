"""The optimizer step on a DeepSpeed engine, free of host synchronisation (every task's).

Each micro-step runs the task's forward (``step_fn``), backward and step, and adds the task's
loss components to a device-side window; nothing is read back. :meth:`TrainStep.totals` is the
only host read: one all-reduce of the window (loss components, a non-finite flag, data-wait
seconds, data errors), done on log steps and before every checkpoint, where a non-finite loss on
any rank stops every rank.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import torch
import torch.distributed as dist

# step_fn(engine, batch, generator) → (loss to backpropagate, its components [K], detached or not)
StepFn = Callable[[torch.nn.Module, dict, torch.Generator], tuple[torch.Tensor, torch.Tensor]]


class NonFiniteLoss(FloatingPointError):
    """The loss became NaN/inf; the message names the steps and the batch keys."""


def micro_seed(seed: int, index: int, world_size: int, rank: int) -> int:
    """Seed of micro-step ``index`` (all steps × accumulation, 0-based) on ``rank``: the same at
    any resume point, different on every rank and micro-step."""
    return seed * 1_000_003 + index * world_size + rank


class Window:
    """Loss components summed on the device over the micro-steps since the last read; the batch
    keys and the step range on the host (named when a loss is non-finite).

    losses ``[K]`` float64, one per component name.
    """

    def __init__(self, names: tuple[str, ...], device: torch.device):
        self.names = names
        self.losses = torch.zeros(len(names), dtype=torch.float64, device=device)
        self.reset()

    def reset(self) -> None:
        self.losses.zero_()
        self.count, self.data_s, self.keys, self.steps = 0, 0.0, [], (0, 0)
        self.t0 = time.perf_counter()

    def add(self, parts: torch.Tensor, keys, step: int) -> None:
        self.losses += parts.detach().reshape(-1).double()
        self.keys.extend(keys)
        self.steps = (self.steps[0] or step, step)
        self.count += 1


class TrainStep:
    """Micro-steps of one rank: a generator seeded by (seed, micro-step index, rank) for the
    task's random draws (masks, mixup), the task's forward, backward and step, its loss
    components into :attr:`window`."""

    def __init__(
        self,
        engine,
        step_fn: StepFn,
        names: tuple[str, ...],
        *,
        seed: int,
        accum: int,
        rank: int,
        world_size: int,
        device: torch.device,
    ):
        self.engine, self.step_fn, self.seed, self.accum = engine, step_fn, seed, accum
        self.rank, self.world_size, self.device = rank, world_size, device
        self.window = Window(names, device)

    def micro(self, batch: dict, step: int, micro: int) -> torch.Tensor:
        """Forward/backward/step micro-batch ``micro`` of optimizer step ``step`` (0-based);
        returns the loss (on the device, not read)."""
        index = step * self.accum + micro
        gen = torch.Generator(device=self.device).manual_seed(
            micro_seed(self.seed, index, self.world_size, self.rank)
        )
        loss, parts = self.step_fn(self.engine, batch, gen)
        self.engine.backward(loss)
        self.engine.step()
        self.window.add(parts, batch["key"], step + 1)
        return loss

    def totals(self, errors: int, epoch: int, counts: tuple[float, ...] = ()) -> list[float]:
        """[components…, non-finite ranks, data_s, errors, counts…] summed over ranks (one
        all-reduce, one host read). Raises NonFiniteLoss on every rank if any rank saw one."""
        w, k = self.window, len(self.window.names)
        local = torch.cat(
            [
                w.losses,
                (~torch.isfinite(w.losses).all()).double().reshape(1),
                torch.tensor([w.data_s, errors, *counts], dtype=torch.float64, device=self.device),
            ]
        )
        totals = local.clone()
        dist.all_reduce(totals)  # nccl reduces device tensors only
        totals = totals.tolist()
        if totals[k]:
            lo, hi = w.steps
            values = ", ".join(
                f"{n}={v:.4g}" for n, v in zip(w.names, local[:k].tolist(), strict=True)
            )
            where = (
                f"on rank {self.rank}; batch keys: {w.keys}"
                if local[k]
                else f"on another rank than {self.rank}"
            )
            raise NonFiniteLoss(
                f"non-finite loss ({values}) at "
                f"{f'step {hi}' if lo == hi else f'steps {lo}–{hi}'} (epoch {epoch}) {where}"
            )
        return totals
