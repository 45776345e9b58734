"""Preemption: SIGTERM / SIGINT on any rank stops every rank at the same optimizer-step boundary,
after a complete checkpoint, with exit code 143 (``avbase.errors.EXIT_PREEMPTED``).

A signal only sets a flag (a second one while stopping is logged and ignored, so it can never
cut a checkpoint save short). The ranks agree on the flag without a device sync: after every
optimizer step each rank starts an asynchronous all-reduce of its flag on a host-side (gloo)
group and collects the previous step's result before deciding — every rank reads the same sum at
the same boundary, one step after the first signal.
"""

from __future__ import annotations

import logging
import signal
import threading

import torch
import torch.distributed as dist

from avbase.errors import Preempted

log = logging.getLogger("avfusion.train")
SIGNALS = (signal.SIGTERM, signal.SIGINT)


class StopSignal:
    """Installed for the duration of ``Engine.fit`` (``with``); ``check(engine)`` per step."""

    def __init__(self):
        self.flag, self.work, self.group, self._saved = 0, None, None, {}
        self.stopped = False  # the ranks agreed to stop (this rank may have had no signal)
        self.buf = torch.zeros(1, dtype=torch.int32)
        self.signum: int | None = None

    def __enter__(self) -> StopSignal:
        if threading.current_thread() is threading.main_thread():
            for s in SIGNALS:
                self._saved[s] = signal.signal(s, self._on_signal)
        if dist.is_initialized() and dist.get_world_size() > 1:
            self.group = dist.new_group(backend="gloo")  # host tensors: never waits on a device
        return self

    def __exit__(self, exc_type, *_) -> None:
        if self.work is not None and exc_type is None:
            self.work.wait()  # every rank has one in flight: complete it before the group goes
        if not (self.flag or self.stopped):  # after a stop the handler stays on every rank:
            for s, handler in self._saved.items():  # the launcher's own SIGTERM to the ranks
                signal.signal(s, handler)  # must not cut their exit (tracking, teardown) short
        self._saved = {}

    def _on_signal(self, signum: int, _frame) -> None:
        name = signal.Signals(signum).name
        if self.flag:
            log.warning("%s again: already stopping (a checkpoint save is not cut short)", name)
            return
        self.flag, self.signum = 1, signum
        log.warning("%s: stopping at the next step boundary with a checkpoint", name)

    def agreed(self) -> bool:
        """Whether any rank had the flag set one step ago (starts this step's reduction)."""
        if self.group is None:
            return bool(self.flag)
        if self.work is not None:
            self.work.wait()
            self.work = None
            if self.buf.item():
                return True  # no new reduction: every rank stops here
        self.buf.fill_(self.flag)
        self.work = dist.all_reduce(self.buf, group=self.group, async_op=True)
        return False

    def check(self, engine) -> None:
        """At a step boundary: when the ranks agree to stop, save and raise :class:`Preempted`."""
        if not self.agreed():
            return
        self.stopped, self.flag = True, self.flag or 1
        engine.save()
        raise Preempted(
            f"stopped by a signal at step {engine.progress.step}; checkpoint saved in "
            f"{engine.checkpoints.root} — run the same command to resume"
        )

    @staticmethod
    def status(e: BaseException) -> str:
        """The MLflow status a run ends with after ``e``."""
        return "KILLED" if isinstance(e, Preempted | KeyboardInterrupt) else "FAILED"
