"""Clip layout: where samples start, how long they last, when their frames are taken.

Times are decoded timestamps in seconds (container durations are never trusted). The usable
span is the overlap of the decoded audio and video spans; it is cut into ``clip_seconds``
pieces and a final partial piece is kept when it lasts at least ``min_clip_seconds``, so a
span of length L yields ``floor(L / C) + (L mod C >= min)`` clips.
"""

from __future__ import annotations

import math

EPS = 1e-6  # a boundary within a microsecond counts as reached


def clip_spans(
    start: float, end: float, clip_seconds: float, min_clip_seconds: float
) -> list[tuple[float, float]]:
    """``[(clip_start, duration)]`` covering ``[start, end)``."""
    spans = []
    k = 0
    while True:
        clip_start = start + k * clip_seconds
        duration = min(clip_seconds, end - clip_start)
        if duration < min_clip_seconds - EPS:
            return spans
        spans.append((clip_start, duration))
        k += 1


def frame_offsets(duration: float, frame_rate: float) -> list[float]:
    """Frame times from the clip start: the centres ``(i + 0.5) / frame_rate`` inside the clip."""
    n = max(0, math.ceil(duration * frame_rate - 0.5 - EPS))
    return [(i + 0.5) / frame_rate for i in range(n)]


def frame_targets(
    start: float, end: float, clip_seconds: float, min_clip_seconds: float, frame_rate: float
) -> list[tuple[float, float, float, tuple[int, int]]]:
    """``[(time, clip_lo, clip_hi, (clip_index, frame_index))]`` in time order.

    ``end`` may be an upper bound (the audio end while the video end is still unknown): the
    clips of the final, shorter span then take a prefix of these targets.
    """
    targets = []
    for k, (lo, duration) in enumerate(clip_spans(start, end, clip_seconds, min_clip_seconds)):
        for i, offset in enumerate(frame_offsets(duration, frame_rate)):
            targets.append((lo + offset, lo, lo + duration, (k, i)))
    return targets
