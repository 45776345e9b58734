"""Boxes of a dataset index → the mask member of the annotated frame (build worker side).

The mask is drawn at the stored frame's size: a box ``(x0, y0, x1, y1)`` in units of ``scale``
covers the pixel columns ``floor(x0 / scale · W) .. floor(x1 / scale · W) - 1`` and the rows
likewise (LVS / EZ-VSL draw ``map[ymin:ymax, xmin:xmax]`` on integer coordinates of their
224-px grid; this is the same rule on the stored frame's grid). Binary boxes (VGG-SS): their
union. Consensus (Flickr-SoundNet): each box adds 1, the sum is halved and capped at 1, so the
values are 0, 0.5 and 1 (stored as grey 0 / 128 / 255).
"""

from __future__ import annotations

import io

import numpy as np
from PIL import Image

from avbase.members import mask_ext, mask_png
from preprocess.datasets.records import Regions


def region_members(
    regions: Regions, frames: list[tuple[float, bytes]], at: float
) -> list[tuple[str, bytes]]:
    """``[(fNN.mask.png, png)]`` for the frame (video time, JPEG) nearest ``at`` (the earlier
    one on a tie)."""
    i = min(range(len(frames)), key=lambda j: (abs(frames[j][0] - at), j))
    size = Image.open(io.BytesIO(frames[i][1])).size
    return [(mask_ext(i), mask_png(region_mask(regions, size)))]


def region_mask(regions: Regions, size: tuple[int, int]) -> np.ndarray:
    """Float32 ``[H, W]`` mask of ``regions`` on a ``size = (W, H)`` frame."""
    width, height = size
    count = np.zeros((height, width), np.float32)
    for x0, y0, x1, y1 in regions.boxes:
        cols = slice(int(x0 / regions.scale * width), int(x1 / regions.scale * width))
        rows = slice(int(y0 / regions.scale * height), int(y1 / regions.scale * height))
        count[rows, cols] += 1
    return np.minimum(count / 2, 1) if regions.consensus else (count > 0).astype(np.float32)
