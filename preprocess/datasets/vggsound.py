"""VGGSound (Chen et al., ICASSP 2020; github hche11/VGGSound): ``vggsound.csv``.

No header; one clip per line: ``YouTube id, start seconds, label, train/test split`` (labels
with a comma are quoted: ``"bird chirping, tweeting"``). A clip is the 10 s from its start
second. Its id is ``<ytid>_<start:06d>``, the name VGGSound's own files, VGG-SS and the
separation pair list use. The class list is the sorted label set of the whole index (every
split), so separately built train and test sets share one class index.
"""

from __future__ import annotations

import csv
import io

from avbase.errors import AvfusionError
from preprocess.datasets.index import DatasetIndex, Entry, read_text, seconds, where
from preprocess.datasets.records import vggsound_clip_id

CLIP_SECONDS = 10.0


def read(paths: list[str]) -> DatasetIndex:
    index = DatasetIndex()
    labels: set[str] = set()
    for path in paths:
        reader = csv.reader(io.StringIO(read_text(path)))
        for row in reader:
            if not row or not "".join(row).strip() or row[0].lstrip().startswith("#"):
                continue
            at = where(path, reader.line_num)
            if len(row) != 4:
                index.reject(
                    at,
                    None,
                    f"expected 4 fields (YouTube id, start seconds, label, split), got {len(row)}",
                )
                continue
            ytid, start_text, label, split = (field.strip() for field in row)
            if label:
                labels.add(label)
            start = seconds(start_text)
            if not ytid or not label or not split:
                index.reject(at, ytid or None, "empty YouTube id, label or split", split or None)
            elif start is None:
                message = f"start time {start_text!r} is not a number of seconds >= 0"
                index.reject(at, ytid, message, split)
            else:
                index.add(
                    Entry(
                        vggsound_clip_id(ytid, start),
                        at,
                        ytid,
                        label,
                        split,
                        start,
                        start + CLIP_SECONDS,
                    )
                )
    if not index.entries and not index.problems:
        raise AvfusionError(f"--index {' '.join(paths)}: no VGGSound lines")
    index.classes = sorted(labels)
    return index
