"""The build pool turns a crashing or buggy input into its documented error stage and goes on."""

from __future__ import annotations

import os

import pytest

from preprocess.pool import Failure, ordered_map

pytestmark = [pytest.mark.slow, pytest.mark.multiproc]


def work(item):
    """A worker target: ``raise`` is a bug in our code, ``exit`` a decoder that kills its process."""
    if item == "raise":
        raise ValueError("bad item")
    if item == "exit":
        os._exit(3)
    return item * 10


def test_internal_and_worker_failures_keep_order_and_the_pool_going():
    items = [1, "raise", "exit", 2, 3]
    results = list(ordered_map(f"{__name__}:work", (), items, workers=2, timeout=60))
    assert [i for i, _ in results] == list(range(len(items)))
    values = dict(results)
    assert (values[0], values[3], values[4]) == (10, 20, 30)
    assert isinstance(values[1], Failure) and values[1].stage == "internal"
    assert values[1].error.startswith("ValueError: bad item (test_pool.py:")
    assert values[2] == Failure("worker", "worker process died (exit code 3)")
