"""What a training run prints for people reading logs (``kubectl logs``, CI): a start banner, an
ETA on every log line, a rate-limited line when data errors occur, and an end summary."""

from __future__ import annotations

import logging
import time
from datetime import timedelta

log = logging.getLogger("avfusion.train")

ERROR_LINE_EVERY_S = 60.0


def duration(seconds: float) -> str:
    """``3725.2`` → ``1:02:05``."""
    return str(timedelta(seconds=round(max(seconds, 0.0))))


class RunReport:
    """Progress of one run (main rank): ``total_steps`` from epochs × steps per epoch or max_steps."""

    def __init__(self, total_steps: int, start_step: int):
        self.total, self.start_step = total_steps, start_step
        self.t0 = time.monotonic()
        self.errors_shown, self.errors_at = 0, float("-inf")

    def banner(
        self,
        *,
        samples: int,
        steps_per_epoch: int,
        epochs: int,
        batch: int,
        world: int,
        accum: int,
        output_dir: str,
        tracking: str,
        task: str | None = None,
    ) -> None:
        resumed = f", resuming at step {self.start_step}" if self.start_step else ""
        capped = "" if self.total == steps_per_epoch * epochs else ", stopping at train.max_steps"
        log.info(
            "training%s: %d samples, %d steps/epoch × %d epochs, %d steps%s%s; effective batch %d "
            "(%d per rank × %d ranks × %d accumulation); output %s; tracking %s",
            f" {task}" if task else "",
            samples,
            steps_per_epoch,
            epochs,
            self.total,
            capped,
            resumed,
            batch * world * accum,
            batch,
            world,
            accum,
            output_dir,
            tracking,
        )

    def eta(self, step: int) -> str:
        """``step/total (pct) ETA h:mm:ss`` from the mean rate of this process's steps."""
        done = step - self.start_step
        left = (
            (time.monotonic() - self.t0) / done * (self.total - step) if done > 0 else float("nan")
        )
        pct = 100.0 * step / max(self.total, 1)
        return f"{step}/{self.total} ({pct:.0f}%) ETA {duration(left) if done > 0 else '?'}"

    def data_errors(self, total: int, by_stage: dict[str, int]) -> None:
        """One warning when samples were skipped since the last one, at most every minute."""
        now = time.monotonic()
        if total > self.errors_shown and now - self.errors_at >= ERROR_LINE_EVERY_S:
            stages = (
                ", ".join(f"{k} {v}" for k, v in sorted(by_stage.items()) if v) or "on other ranks"
            )
            log.warning(
                "data: %d samples skipped so far (this rank: %s); see data/errors in the metrics",
                total,
                stages,
            )
            self.errors_shown, self.errors_at = total, now

    def summary(self, step: int, epoch: float, samples: int, last: dict, output_dir: str) -> None:
        wall = time.monotonic() - self.t0
        loss = last.get("train/loss")
        log.info(
            "finished: step %d, epoch %.2f, %s wall, %.1f samples/s, last loss %s; checkpoints in "
            "%s/checkpoints",
            step,
            epoch,
            duration(wall),
            samples / wall if wall > 0 else 0.0,
            f"{loss:.4f}" if loss is not None else "n/a",
            output_dir,
        )
