"""``avfusion eval score``: score saved predictions of any system with the dense metrics the
evaluations use (:mod:`pipeline.eval.metrics`), and print one JSON line. The arrays each task
reads and the keys it prints are in ``USAGE`` (also the command's help). For AVS the
probabilities are ``sigmoid(logits)`` in float32, as the release and AVSBench compute them.

Bad input — a missing array, a shape mismatch, a non-numeric array, NaN / infinite values, truth
outside its range — raises :class:`ScoreInputError` naming the file and the array (one
``error:`` line, exit 2).
"""

from __future__ import annotations

import argparse
import json
import zipfile
from pathlib import Path

import numpy as np

TASKS = ("avs", "localization", "separation")
USAGE = """\
Arrays in FILE.npz, per task, and the keys of the JSON line:
  avs           logits [N, H, W] (before the sigmoid), truth [N, H, W] in {0, 1}, optional
                video [N] (ids; without it, consecutive groups of 5 frames)
                -> miou, miou_avsbench, fscore, fscore_avsbench (x100), frames
  localization  heatmaps [N, H, W], truth [N, H, W] in [0, 1] -> ciou, auc (x100), samples
  separation    references [N, S, T], estimates [N, S, T] -> sdr, sir, sar (dB), pairs (scored)
"""
FRAMES_PER_VIDEO = 5  # AVSBench S4: 5 annotated frames per video
# task → (prediction array, truth array, dimensions of both)
ARRAYS = {
    "avs": ("logits", "truth", "[N, H, W]"),
    "localization": ("heatmaps", "truth", "[N, H, W]"),
    "separation": ("estimates", "references", "[N, S, T]"),
}


class ScoreInputError(ValueError):
    """An input file or array cannot be scored; the message names it and what was expected."""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """``--task`` and ``--input`` (on the ``avfusion eval`` parser, used with ``score``)."""
    parser.add_argument("--task", choices=TASKS, help="score: which dense task's metrics")
    parser.add_argument("--input", metavar="FILE.npz", help="score: the saved predictions")


def run(args: argparse.Namespace) -> int:
    print(json.dumps(score(args.task, load_arrays(args.input, args.task))), flush=True)
    return 0


def score(task: str, arrays: dict[str, np.ndarray]) -> dict:
    """``{"task": task, **metrics}`` of checked ``arrays``."""
    import torch

    if task == "avs":
        from pipeline.eval.metrics.segmentation import SegmentationScores

        video = arrays.get("video")
        n = len(arrays["logits"])
        video = np.arange(n) // FRAMES_PER_VIDEO if video is None else video
        order = _grouped(video)
        acc = SegmentationScores()
        prob = torch.sigmoid(torch.from_numpy(arrays["logits"]).float())
        acc.update(
            prob[order], torch.from_numpy(arrays["truth"] != 0)[order], video[order].tolist()
        )
    elif task == "localization":
        from pipeline.eval.metrics.localization import LocalizationScores

        acc = LocalizationScores()
        acc.update(torch.from_numpy(arrays["heatmaps"]), torch.from_numpy(arrays["truth"]))
    else:
        from pipeline.eval.metrics.separation import SeparationScores

        acc = SeparationScores()
        acc.update(arrays["references"], arrays["estimates"])
    return {"task": task, **acc.result()}


def load_arrays(path: str | Path, task: str) -> dict[str, np.ndarray]:
    """The task's arrays from ``path`` (``.npz``), checked (names, shapes, values)."""
    pred_name, truth_name, dims = ARRAYS[task]
    try:
        npz = np.load(path, allow_pickle=False)
    except FileNotFoundError:
        raise ScoreInputError(f"{path}: file not found") from None
    except (OSError, ValueError, zipfile.BadZipFile) as e:
        raise ScoreInputError(f"{path}: not a readable .npz file ({type(e).__name__})") from None
    if not isinstance(npz, np.lib.npyio.NpzFile):
        raise ScoreInputError(f"{path}: not a .npz archive of named arrays (np.savez)")
    with npz:
        names = set(npz.files)
        try:
            arrays = {k: npz[k] for k in (pred_name, truth_name, "video") if k in names}
        except (OSError, ValueError, zipfile.BadZipFile) as e:
            raise ScoreInputError(f"{path}: an array cannot be read ({type(e).__name__})") from None
    for name in (pred_name, truth_name):
        if name not in arrays:
            raise ScoreInputError(
                f"{path}: missing array {name!r} (task {task} needs {pred_name} and "
                f"{truth_name}, both {dims}; found: {', '.join(sorted(names)) or 'none'})"
            )
        _check_values(path, name, arrays[name])
    pred, truth = arrays[pred_name], arrays[truth_name]
    if pred.ndim != 3 or pred.shape != truth.shape:
        raise ScoreInputError(
            f"{path}: array {pred_name!r} {list(pred.shape)} and array {truth_name!r} "
            f"{list(truth.shape)} must have the same shape {dims}"
        )
    _check_range(path, task, truth_name, truth)
    if task == "avs" and "video" in arrays and arrays["video"].shape != (len(pred),):
        raise ScoreInputError(
            f"{path}: array 'video' {list(arrays['video'].shape)} must be [N] = [{len(pred)}]"
        )
    if task != "avs":
        arrays.pop("video", None)
    return arrays


def _check_values(path: str | Path, name: str, x: np.ndarray) -> None:
    if not (np.issubdtype(x.dtype, np.number) or x.dtype == np.bool_):
        raise ScoreInputError(f"{path}: array {name!r} is not numeric (dtype {x.dtype})")
    if np.issubdtype(x.dtype, np.floating) and not np.isfinite(x).all():
        raise ScoreInputError(f"{path}: array {name!r} holds NaN or infinite values")


def _check_range(path: str | Path, task: str, name: str, truth: np.ndarray) -> None:
    if task == "avs" and not np.isin(truth, (0, 1)).all():
        raise ScoreInputError(f"{path}: array {name!r} must hold only 0 and 1")
    if task == "localization" and ((truth < 0) | (truth > 1)).any():
        raise ScoreInputError(f"{path}: array {name!r} must hold values in [0, 1]")


def _grouped(video: np.ndarray) -> np.ndarray:
    """Frame order that brings each video's frames together (videos in first-seen order, frames
    in file order)."""
    _, first, inverse = np.unique(video, return_index=True, return_inverse=True)
    return np.argsort(first[inverse.ravel()], kind="stable")
