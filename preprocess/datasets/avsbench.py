"""AVSBench-S4, single-source segmentation (Zhou et al., ECCV 2022; github OpenNLPLab/AVSBench).

Index: ``s4_meta_data.csv``, a CSV with a header; the columns used are ``name``, ``category``
and ``split`` (``train`` / ``val`` / ``test``; the release's readers select rows by
``df['split']`` and read ``name`` and ``category``). Media, under ``--media`` (the release's
``s4_data/``), per split and category:

- ``visual_frames/<split>/<category>/<name>/<name>_<k>.png``, k = 1..5: one picture per second
  of the 5-s video, taken 15/16 s into second k (``preprocess_s4.py``: the 16th of 16 samples
  per second), so stored at ``k - 1/16`` s;
- ``audio_wav/<split>/<category>/<name>.wav`` (the release's folder name; ``audio_wavs`` is
  accepted too) — the VGGish ``audio_log_mel`` pickles cannot be used;
- ``gt_masks/<split>/<category>/<name>/<name>_<k>.png``: the mask of picture k; train has the
  first picture's mask only, val and test all five.

Without the picture folder a video ``<name>.<ext>`` anywhere under ``--media`` (the
release's ``raw_videos/``) is used with the same masks. Labels are the categories (23), the
class list their sorted set over the whole index.
"""

from __future__ import annotations

import csv
import io

from avbase.errors import AvfusionError
from preprocess.datasets.index import DatasetIndex, Entry, read_text, where

COLUMNS = ("name", "category", "split")
FRAMES = 5
FRAME_OFFSET = 15 / 16  # seconds into its second where picture k was taken


def read(paths: list[str]) -> DatasetIndex:
    index = DatasetIndex()
    categories: set[str] = set()
    for path in paths:
        reader = csv.DictReader(io.StringIO(read_text(path)))
        fields = [f.strip() for f in reader.fieldnames or []]
        if not set(COLUMNS) <= set(fields):
            raise AvfusionError(
                f"{path}: expected an s4_meta_data.csv header with the columns "
                f"{', '.join(COLUMNS)} (got: {', '.join(fields) or 'nothing'})"
            )
        for row in reader:
            row = {k.strip(): (v or "").strip() for k, v in row.items() if isinstance(k, str)}
            name, category, split = (row[c] for c in COLUMNS)
            if not any(row.values()):
                continue
            at = where(path, reader.line_num)
            if not name or not category or not split:
                index.reject(at, name or None, "empty name, category or split", split or None)
                continue
            categories.add(category)
            index.add(Entry(name, at, name, category, split, category=category))
    index.classes = sorted(categories)
    return index


def frame_paths(entry: Entry) -> list[tuple[float, str]]:
    """(time in seconds, path under the media root) of the clip's pictures."""
    folder = f"visual_frames/{entry.split}/{entry.category}/{entry.name}"
    return [(k - 1 + FRAME_OFFSET, f"{folder}/{entry.name}_{k}.png") for k in range(1, FRAMES + 1)]


def sound_paths(entry: Entry) -> list[str]:
    return [
        f"{d}/{entry.split}/{entry.category}/{entry.name}.wav" for d in ("audio_wav", "audio_wavs")
    ]


def mask_folder(entry: Entry) -> str:
    return f"gt_masks/{entry.split}/{entry.category}/{entry.name}"
