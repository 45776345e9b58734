"""Ordered process pool with a per-item wall-clock timeout.

Each worker is a process with its own pipe, so one wedged or crashed worker can be killed
and replaced without touching the others (``concurrent.futures`` cannot kill a single task).
Results come back in input order whatever the worker timing; at most ``window`` items are
in flight or waiting to be yielded, so memory stays flat. Workers are forked from a
``forkserver`` that has pre-imported the worker function's module: no thread or s3fs event
loop of the parent is ever forked, and the parent never imports that (heavy) module — the
function is named as ``"package.module:function"``.
"""

from __future__ import annotations

import functools
import importlib
import multiprocessing as mp
import os
import time
import traceback
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from multiprocessing.connection import Connection, wait
from typing import Any

from avbase.errors import AvfusionError


def available_cores() -> int:
    """Cores this process may run on (its CPU affinity, where the OS reports it)."""
    affinity = getattr(os, "sched_getaffinity", None)
    return len(affinity(0)) if affinity else os.cpu_count() or 1


@dataclass
class Failure:
    """An item whose worker did not return: ``stage`` is ``timeout``, ``worker`` or ``internal``."""

    stage: str
    error: str


def _resolve(target: str, args: tuple) -> Callable[[Any], Any]:
    module, _, name = target.partition(":")
    return functools.partial(getattr(importlib.import_module(module), name), *args)


def _worker_main(conn: Connection, target: str, args: tuple) -> None:
    import torch

    torch.set_num_threads(1)  # one core per worker process
    fn = _resolve(target, args)
    while True:
        try:
            msg = conn.recv()
        except (EOFError, OSError):  # the parent is gone
            return
        if msg is None:
            return
        index, item = msg
        try:
            result = fn(item)
        except Exception as e:  # isolate any bug to its one input
            tb = traceback.extract_tb(e.__traceback__)[-1]
            result = Failure(
                "internal", f"{type(e).__name__}: {e} ({os.path.basename(tb.filename)}:{tb.lineno})"
            )
        try:
            conn.send((index, result))
        except (BrokenPipeError, OSError):
            return


class _Worker:
    def __init__(self, ctx, fn: tuple[str, tuple]):
        self.conn, child = ctx.Pipe()
        self.proc = ctx.Process(target=_worker_main, args=(child, *fn), daemon=True)
        self.proc.start()
        child.close()
        self.item: int | None = None
        self.deadline = 0.0

    def submit(self, index: int, item: Any, timeout: float) -> None:
        self.item, self.deadline = index, time.monotonic() + timeout
        self.conn.send((index, item))

    def stop(self, kill: bool = False) -> None:
        if not kill:
            try:
                self.conn.send(None)
            except OSError:
                kill = True
        self.proc.join(timeout=None if not kill else 0)
        if self.proc.is_alive():
            self.proc.kill()
            self.proc.join()
        self.conn.close()


def ordered_map(
    target: str,
    args: tuple,
    items: Sequence[Any],
    *,
    workers: int,
    timeout: float,
    window: int | None = None,
) -> Iterator[tuple[int, Any]]:
    """Yield ``(index, target(*args, item) or Failure)`` for every item, in index order."""
    if not items:
        return
    ctx = mp.get_context("forkserver")
    ctx.set_forkserver_preload([target.partition(":")[0]])
    fn = (target, args)
    window = window or 4 * workers
    pool = [_Worker(ctx, fn) for _ in range(min(workers, len(items)))]
    done: dict[int, Any] = {}
    next_submit = next_yield = 0
    try:
        while next_yield < len(items):
            for i, w in enumerate(pool):  # 1. keep idle workers busy
                if (
                    w.item is None
                    and next_submit < len(items)
                    and next_submit - next_yield < window
                ):
                    pool[i] = _submit(w, ctx, fn, next_submit, items[next_submit], timeout)
                    next_submit += 1
            busy = [w for w in pool if w.item is not None]
            if busy:  # 2. collect results
                wait_s = max(0.0, min(w.deadline for w in busy) - time.monotonic())
                ready = wait([w.conn for w in busy], timeout=wait_s)
                for i, w in enumerate(pool):
                    if w.item is not None and (w.conn in ready or time.monotonic() > w.deadline):
                        index = w.item
                        done[index], pool[i] = _collect(w, ctx, fn, timeout)
            while next_yield in done:  # 3. yield in order
                yield next_yield, done.pop(next_yield)
                next_yield += 1
    finally:
        for w in pool:
            w.stop(kill=w.item is not None)


def _submit(
    w: _Worker, ctx, fn: tuple[str, tuple], index: int, item: Any, timeout: float
) -> _Worker:
    """Hand ``item`` to ``w``; a worker that died while idle is replaced once."""
    for attempt in range(2):
        try:
            w.submit(index, item, timeout)
            return w
        except OSError:
            w.stop(kill=True)
            if attempt:
                raise AvfusionError(
                    f"build worker processes die at start-up (exit code {w.proc.exitcode})"
                ) from None
            w = _Worker(ctx, fn)
    return w


def _collect(w: _Worker, ctx, fn: tuple[str, tuple], timeout: float) -> tuple[Any, _Worker]:
    """The result of ``w``'s item; a dead or overdue worker is replaced by a fresh one."""
    if w.conn.poll():
        try:
            _, result = w.conn.recv()
            w.item = None
            return result, w
        except (EOFError, OSError):
            pass
    if w.proc.is_alive() and time.monotonic() <= w.deadline:
        w.proc.join(timeout=1.0)  # pipe closed: the process is exiting
    if w.proc.is_alive():
        failure = Failure(
            "timeout", f"no result within {timeout:g} s (decoder wedged?); worker killed"
        )
    else:
        failure = Failure("worker", f"worker process died (exit code {w.proc.exitcode})")
    w.stop(kill=True)
    return failure, _Worker(ctx, fn)
