"""VGG-SS, VGG-Sound Source (Chen et al., CVPR 2021; github hche11/Localizing-Visual-Sounds-
the-Hard-Way, ``metadata/vggss.json``; read the same way by stoneMo/EZ-VSL).

One JSON list; per test clip ``{"file": "<ytid>_<start:06d>", "class": "<VGGSound label>",
"bbox": [[xmin, ymin, xmax, ymax], ...]}`` with coordinates as fractions of the frame (one or
several boxes). The clip is the VGGSound clip: 10 s from its start second. The boxes mark the
annotated frame, the clip's centre frame (LVS / EZ-VSL pair its picture with the centre 3 s of
the sound), and become one binary mask of the stored frame nearest the clip's centre: the
union of the boxes (EZ-VSL ``bbox2gtmap``, format ``vggss``). A box with a coordinate outside
[0, 1] or a max below its min is dropped with one problem line for its entry; the clip keeps
its other boxes (12 of the published 5,158 entries hold such a box, a coordinate of
-2.88e16; EZ-VSL's clipping to [0, 1] leaves those boxes empty, so the maps agree).
"""

from __future__ import annotations

import json
import re

from avbase.errors import AvfusionError
from preprocess.datasets.index import (
    DatasetIndex,
    Entry,
    box_problems,
    check_box,
    read_text,
    where,
)
from preprocess.datasets.records import Regions
from preprocess.datasets.vggsound import CLIP_SECONDS

TOLERANCE = 1e-6  # the JSON's own rounding (0.9937499999999999)
_FILE = re.compile(r"(.+)_(\d+)")


def read(paths: list[str]) -> DatasetIndex:
    index = DatasetIndex()
    classes: set[str] = set()
    for path in paths:
        for k, (line, item) in enumerate(_items(path, read_text(path)), start=1):
            at = f"{where(path, line)} entry {k}"  # unique: the list may be on one line
            file = item.get("file") if isinstance(item, dict) else None
            if not isinstance(file, str) or not file.strip():
                index.reject(at, None, "expected an object with a 'file' name", "test")
                continue
            file = file.strip()
            label = item.get("class")
            if isinstance(label, str) and label.strip():
                classes.add(label.strip())
            boxes, problems = _boxes(item.get("bbox"))
            if problems:
                index.reject(at, file, box_problems(problems, len(boxes)), "test")
            if not boxes:
                continue
            match = _FILE.fullmatch(file)
            start = float(match[2]) if match else None
            index.add(
                Entry(
                    file,
                    at,
                    match[1] if match else file,
                    label.strip() if isinstance(label, str) and label.strip() else None,
                    "test",
                    start,
                    None if start is None else start + CLIP_SECONDS,
                    Regions(boxes, 1.0, consensus=False),
                )
            )
    index.classes = sorted(classes)
    return index


def _items(path: str, text: str):
    """``(line, element)`` of the top-level JSON list, element by element."""
    decoder = json.JSONDecoder()
    pos = _skip(text, 0)
    if text[pos : pos + 1] != "[":
        raise AvfusionError(f"{path}: expected a JSON list of clips")
    pos = _skip(text, pos + 1)
    while text[pos : pos + 1] != "]":
        try:
            item, end = decoder.raw_decode(text, pos)
        except json.JSONDecodeError as e:
            raise AvfusionError(f"{where(path, e.lineno)}: not JSON ({e.msg})") from None
        yield text.count("\n", 0, pos) + 1, item
        pos = _skip(text, end)
        if text[pos : pos + 1] == ",":
            pos = _skip(text, pos + 1)
        elif text[pos : pos + 1] != "]":
            raise AvfusionError(f"{where(path, text.count(chr(10), 0, pos) + 1)}: expected , or ]")


def _skip(text: str, pos: int) -> int:
    while pos < len(text) and text[pos].isspace():
        pos += 1
    return pos


def _boxes(value) -> tuple[tuple, list[str]]:
    """(the usable boxes, a problem per unusable one)."""
    if not isinstance(value, list) or not value:
        return (), ["expected 'bbox': a list of [xmin, ymin, xmax, ymax] boxes"]
    boxes, problems = [], []
    for k, values in enumerate(value, start=1):
        box, problem = check_box(values, 1.0, TOLERANCE)
        if problem:
            problems.append(f"box {k} {problem}")
        else:
            boxes.append(box)
    return tuple(boxes), problems
