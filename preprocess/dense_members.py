"""Building the optional dense-task members of a sample (docs/FORMAT.md; codecs in
:mod:`avbase.members`): per-frame masks and the waveform.

- ``<key>.fNN.mask.png``: 8-bit grey PNG the size of the stored frame ``fNN``: 255 = the
  sounding object, 0 = not, 128 = half (a consensus map's 0.5: Flickr-SoundNet, where one of two
  annotators marked the pixel). Masks come from the list's ``masks`` column: a folder of PNGs,
  one per second of the video (AVSBench layout ``<name>_<s>.png``; ordered by the last number in
  the name; local or URL); the frame taken at video time ``t`` gets mask number ``floor(t)``
  (nearest-neighbour resized, made binary). Frames past the last mask get none. Boxes of a
  dataset index become masks in ``preprocess.datasets.regions``.
- ``<key>.flac``: the clip's mono waveform at the preset rate (16-bit FLAC, lossless).
"""

from __future__ import annotations

import io
import math
import os
import posixpath
import re

import fsspec
import numpy as np
from PIL import Image

from avbase.members import MEMBERS, OPTIONAL, mask_ext
from avbase.shardformat import is_url
from preprocess.clips import EPS
from preprocess.decode import MediaError

_NUMBER = re.compile(r"(\d+)(?!.*\d)")


def mask_files(folder: str) -> list[str]:
    """The folder's PNGs in time order (by the last number in each name)."""
    try:
        fs, root = fsspec.core.url_to_fs(folder)
        names = [posixpath.basename(p) for p in fs.ls(root, detail=False)]
    except OSError as e:
        raise MediaError("masks", f"{folder}: {e.strerror or e}") from None
    names = [n for n in names if n.lower().endswith(".png") and _NUMBER.search(n)]
    names.sort(key=lambda n: int(_NUMBER.search(n)[1]))
    return [
        f"{folder.rstrip('/')}/{n}" if is_url(folder) else os.path.join(folder, n) for n in names
    ]


def mask_members(files: list[str], frames: list[tuple[float, bytes]]) -> list[tuple[str, bytes]]:
    """``[(fNN.mask.png, png)]`` for the frames (video time, JPEG) that have a mask."""
    members = []
    for i, (t, jpeg) in enumerate(frames):
        s = math.floor(t + EPS)
        if 0 <= s < len(files):
            size = Image.open(io.BytesIO(jpeg)).size
            members.append((mask_ext(i), _mask_png(files[s], size)))
    return members


def _mask_png(path: str, size: tuple[int, int]) -> bytes:
    """The mask image at ``path``, nearest-resized to ``size``, as the stored member."""
    try:
        with fsspec.open(path, "rb") as f, Image.open(f) as im:
            grey = np.array(im.convert("L").resize(size, Image.Resampling.NEAREST))
    except OSError as e:
        raise MediaError("masks", f"{path}: {e}") from None
    return MEMBERS["mask"].encode((grey > 127).astype(np.float32))


def declared_members(has_masks: bool, keep_waveform: bool) -> list[str]:
    """The manifest's ``members``: optional member kinds the set may hold."""
    return [name for name, on in zip(OPTIONAL, (has_masks, keep_waveform), strict=True) if on]
