"""The optimizer step on a DeepSpeed engine, free of host synchronisation.

Each micro-step runs forward/backward/step and adds its two losses to a device-side window;
nothing is read back. :meth:`TrainStep.totals` is the only host read: one all-reduce of the
window (losses, a non-finite flag, data-wait seconds, data errors), done on log steps and before
every checkpoint, where a non-finite loss on any rank stops every rank.
"""

from __future__ import annotations

import time

import torch
import torch.distributed as dist


class NonFiniteLoss(FloatingPointError):
    """The loss became NaN/inf; the message names the steps and the batch keys."""


class Window:
    """Loss sums on the device over the micro-steps since the last read; the batch keys and the
    step range on the host (named when a loss is non-finite).

    losses ``[2]`` float64 (image, audio), summed over micro-steps.
    """

    def __init__(self, device: torch.device):
        self.losses = torch.zeros(2, dtype=torch.float64, device=device)
        self.reset()

    def reset(self) -> None:
        self.losses.zero_()
        self.count, self.data_s, self.keys, self.steps = 0, 0.0, [], (0, 0)
        self.t0 = time.perf_counter()

    def add(self, loss_image: torch.Tensor, loss_audio: torch.Tensor, keys, step: int) -> None:
        self.losses += torch.stack([loss_image.detach(), loss_audio.detach()]).double()
        self.keys.extend(keys)
        self.steps = (self.steps[0] or step, step)
        self.count += 1


class TrainStep:
    """Micro-steps of one rank: masks seeded by (seed, micro-step index, rank), inputs moved
    with ``non_blocking``, losses into :attr:`window`."""

    def __init__(
        self,
        engine,
        *,
        seed: int,
        accum: int,
        rank: int,
        world_size: int,
        device: torch.device,
        dtype: torch.dtype,
    ):
        self.engine, self.seed, self.accum = engine, seed, accum
        self.rank, self.world_size, self.device, self.dtype = rank, world_size, device, dtype
        self.window = Window(device)

    def micro(self, batch: dict, step: int, micro: int):
        """Forward/backward/step micro-batch ``micro`` of optimizer step ``step`` (0-based);
        returns the model output. image ``[B, 3, S, S]``, audio ``[B, 1, F, T]``."""
        index = step * self.accum + micro
        gen = torch.Generator(device=self.device).manual_seed(
            self.seed * 1_000_003 + index * self.world_size + self.rank
        )
        image = batch["image"].to(self.device, self.dtype, non_blocking=True)
        audio = batch["audio"].to(self.device, self.dtype, non_blocking=True)
        out = self.engine(image, audio, generator=gen)
        self.engine.backward(out.loss)
        self.engine.step()
        self.window.add(out.loss_image, out.loss_audio, batch["key"], step + 1)
        return out

    def totals(self, errors: int, epoch: int) -> list[float]:
        """[loss_image, loss_audio, non-finite ranks, data_s, errors] summed over ranks (one
        all-reduce, one host read). Raises NonFiniteLoss on every rank if any rank saw one."""
        w = self.window
        local = torch.cat(
            [
                w.losses,
                (~torch.isfinite(w.losses).all()).double().reshape(1),
                torch.tensor([w.data_s, errors], dtype=torch.float64, device=self.device),
            ]
        )
        totals = local.clone()
        dist.all_reduce(totals)  # nccl reduces device tensors only
        totals = totals.tolist()
        if totals[2]:
            lo, hi = w.steps
            image, audio, here = local[:3].tolist()
            where = (
                f"on rank {self.rank}; batch keys: {w.keys}"
                if here
                else f"on another rank than {self.rank}"
            )
            raise NonFiniteLoss(
                f"non-finite loss (image={image:.4g}, audio={audio:.4g}) at "
                f"{f'step {hi}' if lo == hi else f'steps {lo}–{hi}'} (epoch {epoch}) {where}"
            )
        return totals
