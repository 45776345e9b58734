"""The build workers' entry point: one input (a file, or a dataset clip) → its samples.

Clips of videos go through :func:`preprocess.samples.make_samples`; a dataset's picture-and-
sound clips (AVSBench, Flickr-SoundNet) through :func:`preprocess.datasets.stills.still_samples`.
"""

from __future__ import annotations

from avbase import shardformat as fmt
from preprocess.datasets.stills import still_samples
from preprocess.decode import MediaError
from preprocess.options import SampleOptions, Task
from preprocess.pool import Failure
from preprocess.samples import make_samples


def run_task(opts: SampleOptions, threads: int, task: Task) -> list[fmt.Sample] | Failure:
    """Build-worker entry: the input's samples, or a ``Failure`` with its stage and reason
    (at once for a dataset clip that was missing or rejected by its index)."""
    if task.clip is not None and task.clip.problem is not None:
        return Failure(*task.clip.problem)
    try:
        if task.clip is not None and task.clip.still is not None:
            return still_samples(task, opts)
        return make_samples(task, opts, threads)
    except MediaError as e:
        return Failure(e.stage, str(e))
