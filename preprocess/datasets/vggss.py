"""VGG-SS, VGG-Sound Source (Chen et al., CVPR 2021; github hche11/Localizing-Visual-Sounds-
the-Hard-Way, ``metadata/vggss.json``; read the same way by stoneMo/EZ-VSL).

One JSON list; per test clip ``{"file": "<ytid>_<start:06d>", "class": "<VGGSound label>",
"bbox": [[xmin, ymin, xmax, ymax], ...]}`` with coordinates as fractions of the frame (one or
several boxes). The clip is the VGGSound clip: 10 s from its start second. The boxes mark the
annotated frame, the clip's centre frame (LVS / EZ-VSL pair its picture with the centre 3 s of
the sound), and become one binary mask of the stored frame nearest the clip's centre: the
union of the boxes (EZ-VSL ``bbox2gtmap``, format ``vggss``).
A coordinate outside [0, 1] or a box whose max is below its min is a problem of that entry.
"""

from __future__ import annotations

import json
import re

from preprocess.datasets.index import DatasetIndex, Entry, read_text, where
from preprocess.datasets.records import Regions
from preprocess.datasets.vggsound import CLIP_SECONDS
from preprocess.errors import AvfusionError

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
            boxes, problem = _boxes(item.get("bbox"))
            if problem:
                index.reject(at, file, problem, "test")
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


def _boxes(value) -> tuple[tuple, str | None]:
    """(boxes clipped to [0, 1] within the tolerance, problem)."""
    if not isinstance(value, list) or not value:
        return (), "expected 'bbox': a list of [xmin, ymin, xmax, ymax] boxes"
    boxes = []
    for k, box in enumerate(value, start=1):
        ok = (
            isinstance(box, list)
            and len(box) == 4
            and all(isinstance(v, int | float) and not isinstance(v, bool) for v in box)
        )
        if not ok:
            return (), f"box {k} {box!r}: expected [xmin, ymin, xmax, ymax]"
        if any(not -TOLERANCE <= v <= 1 + TOLERANCE for v in box):
            return (), f"box {k} {box}: outside the frame (coordinates are fractions in [0, 1])"
        x0, y0, x1, y1 = (min(max(float(v), 0.0), 1.0) for v in box)
        if x1 < x0 or y1 < y0:
            return (), f"box {k} {box}: max below min"
        boxes.append((x0, y0, x1, y1))
    return tuple(boxes), None
