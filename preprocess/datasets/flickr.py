"""Flickr-SoundNet sound-source test set (Senocak et al., CVPR 2018; the 250-clip test split of
LVS, github hche11/Localizing-Visual-Sounds-the-Hard-Way, ``metadata/flickr_test.csv``).

Index: the ``Annotations/`` folder (or its ``<id>.xml`` files): one XML file per clip holding
the boxes of several annotators; optionally a list CSV whose first column names the clips to
take (LVS's ``flickr_test.csv``: ``<id>,<n>``, no header). Boxes are read as LVS, EZ-VSL and
DeepAVFusion read them: every ``bbox`` element two levels below the root, its first child
skipped, the next four ``xmin, ymin, xmax, ymax`` on the 256 × 256 grid the annotators saw.
The ground truth is their consensus map: each box adds 1 inside it, the sum is divided by 2
and capped at 1 (values 0, 0.5, 1). A box outside the grid (or with a max below its min) is
dropped with one problem line for its file. Media: ``frames/<id>.jpg`` + ``audio/<id>.wav``
(the picture is paired with the sound's centre), or a video ``<id>.<ext>``. No labels.
"""

from __future__ import annotations

import csv
import io
import posixpath
import xml.etree.ElementTree as ET

import fsspec

from avbase.errors import AvfusionError
from preprocess.datasets.index import DatasetIndex, Entry, box_problems, check_box, read_text, where
from preprocess.datasets.records import Regions

GRID = 256.0  # the annotation grid


def read(paths: list[str]) -> DatasetIndex:
    files, lists = _expand(paths)
    wanted = _wanted(lists) if lists else None
    index = DatasetIndex()
    for path in files:
        name = posixpath.basename(path)[: -len(".xml")]
        if wanted is not None and name not in wanted:
            continue
        boxes, problem = _boxes(path, read_text(path))
        if problem:
            index.reject(problem[0], name, problem[1], "test")
        if boxes:
            regions = Regions(tuple(boxes), GRID, consensus=True)
            index.add(Entry(name, where(path, 1), name, None, "test", regions=regions))
    for name, at in sorted((wanted or {}).items()):
        if name not in index.first_line and not any(p.id == name for p in index.problems):
            index.reject(at, name, f"no annotation file {name}.xml among the --index files", "test")
    return index


def _expand(paths: list[str]) -> tuple[list[str], list[str]]:
    """(XML files, list files): folders give their ``*.xml`` files."""
    files, lists = [], []
    for path in paths:
        fs, root = fsspec.core.url_to_fs(path)
        if fs.isdir(root):
            found = sorted(p for p in fs.ls(root, detail=False) if p.lower().endswith(".xml"))
            files += [path.rstrip("/") + "/" + posixpath.basename(p) for p in found]
        elif path.lower().endswith(".xml"):
            files.append(path)
        else:
            lists.append(path)
    if not files:
        raise AvfusionError(
            f"--index {' '.join(paths)}: no Flickr-SoundNet annotation (.xml) files"
        )
    return files, lists


def _wanted(lists: list[str]) -> dict[str, str]:
    """Clip id → where it is listed (first column of each list file)."""
    wanted: dict[str, str] = {}
    for path in lists:
        reader = csv.reader(io.StringIO(read_text(path)))
        for row in reader:
            if row and row[0].strip() and not row[0].startswith("#"):
                wanted.setdefault(row[0].strip(), where(path, reader.line_num))
    return wanted


def _boxes(path: str, text: str) -> tuple[list, tuple[str, str] | None]:
    """(usable boxes, None or (where, problem)): one problem for the file's unusable boxes
    (dropped), where the first of them is."""
    try:
        root = ET.fromstring(text)
    except ET.ParseError as e:
        return [], (where(path, e.position[0]), f"not XML ({e})")
    lines = _tag_lines(text, "bbox")
    boxes, problems, first = [], [], None
    elements = [node for child in root for node in child if node.tag == "bbox"]
    for k, node in enumerate(elements):
        values = [(ch.text or "").strip() for ch in list(node)[1:5]]
        try:
            box, problem = check_box([float(v) for v in values], GRID)
        except ValueError:
            problem = f"{values}: expected 4 numbers after its first child"
        if problem:
            problems.append(f"bbox {k + 1} {problem}")
            first = first or where(path, lines[k] if k < len(lines) else 1)
        else:
            boxes.append(box)
    if not elements:
        return [], (where(path, 1), "no bbox element")
    return boxes, (first, box_problems(problems, len(boxes))) if problems else None


def _tag_lines(text: str, tag: str) -> list[int]:
    """The line of each ``<tag>`` start, in document order."""
    lines, pos = [], text.find(f"<{tag}")
    while pos >= 0:
        after = text[pos + len(tag) + 1 : pos + len(tag) + 2]
        if after in (">", " ", "/", "\t", "\n", "\r"):
            lines.append(text.count("\n", 0, pos) + 1)
        pos = text.find(f"<{tag}", pos + 1)
    return lines
