"""AudioSet (Gemmeke et al., ICASSP 2017; research.google.com/audioset): segment CSVs and
``class_labels_indices.csv``.

Segment files (``balanced_train_segments.csv``, ``unbalanced_train_segments.csv``,
``eval_segments.csv``): three ``#`` comment lines, then ``YTID, start_seconds, end_seconds,
"mid1,mid2,…"`` (fields separated by ", ", the label MIDs quoted). The split is the file name
without ``_segments.csv``. ``class_labels_indices.csv`` (header ``index,mid,display_name``)
fixes the class order of the 527 classes; class names are the display names, a clip's label
is its classes' names joined by ``;`` (multi-label). The readers of AudioMAE / CAV-MAE / PANNs
and the DeepAVFusion release read the same files this way.
"""

from __future__ import annotations

import csv
import io

from avbase.errors import AvfusionError
from preprocess.datasets.index import DatasetIndex, Entry, read_text, seconds, where
from preprocess.datasets.records import vggsound_clip_id
from preprocess.labels import SEPARATOR

CLASS_HEADER = ["index", "mid", "display_name"]


def read(paths: list[str]) -> DatasetIndex:
    texts = {path: read_text(path) for path in paths}
    maps = [p for p, text in texts.items() if _header(text) == CLASS_HEADER]
    if len(maps) != 1:
        raise AvfusionError(
            f"--dataset audioset: expected exactly one class_labels_indices.csv (header "
            f"{','.join(CLASS_HEADER)}) among the --index files, got {len(maps)}"
        )
    mids, names = _class_map(maps[0], texts[maps[0]])
    index = DatasetIndex(classes=names, multi_label=True, record={"class_ids": mids})
    name_of = dict(zip(mids, names, strict=True))
    segments = [p for p in paths if p not in maps]
    if not segments:
        raise AvfusionError("--dataset audioset: no segment CSV among the --index files")
    for path in segments:
        _read_segments(index, path, texts[path], name_of)
    return index


def split_name(path: str) -> str:
    """``.../balanced_train_segments.csv`` → ``balanced_train``."""
    name = path.rstrip("/").rsplit("/", 1)[-1]
    for suffix in ("_segments.csv", ".csv"):
        if name.endswith(suffix):
            return name[: -len(suffix)]
    return name


def _header(text: str) -> list[str]:
    first = next(csv.reader(io.StringIO(text)), [])
    return [c.strip() for c in first]


def _class_map(path: str, text: str) -> tuple[list[str], list[str]]:
    reader = csv.reader(io.StringIO(text))
    next(reader)  # the header
    mids, names = [], []
    for row in reader:
        line = reader.line_num
        if not "".join(row).strip():
            continue
        if len(row) != 3 or row[0].strip() != str(len(mids)):
            raise AvfusionError(
                f"{where(path, line)}: expected 'index,mid,display_name' with index "
                f"{len(mids)}, got {','.join(row)!r}"
            )
        mid, name = row[1].strip(), row[2].strip()
        if mid in mids or name in names or SEPARATOR in name or not mid or not name:
            raise AvfusionError(
                f"{where(path, line)}: class {mid!r} / {name!r} is empty, listed twice or "
                f"contains {SEPARATOR!r}"
            )
        mids.append(mid)
        names.append(name)
    if not mids:
        raise AvfusionError(f"{path}: no classes")
    return mids, names


def _read_segments(index: DatasetIndex, path: str, text: str, name_of: dict[str, str]) -> None:
    split = split_name(path)
    reader = csv.reader(io.StringIO(text), skipinitialspace=True)
    for row in reader:
        if not row or not "".join(row).strip() or row[0].startswith("#"):
            continue
        at = where(path, reader.line_num)
        if len(row) < 4:
            index.reject(
                at,
                None,
                f"expected 'YTID, start_seconds, end_seconds, \"mids\"', got {len(row)} fields",
                split,
            )
            continue
        ytid, start_text, end_text = (f.strip() for f in row[:3])
        mids = [m.strip() for m in ",".join(row[3:]).split(",") if m.strip()]
        start, end = seconds(start_text), seconds(end_text)
        unknown = [m for m in mids if m not in name_of]
        if not ytid:
            index.reject(at, None, "empty YTID", split)
        elif start is None or end is None or end <= start:
            index.reject(
                at,
                ytid,
                f"bad segment time: start {start_text!r}, end {end_text!r} "
                f"(expected seconds with 0 <= start < end)",
                split,
            )
        elif unknown or not mids:
            index.reject(
                at,
                ytid,
                f"label MID {unknown[0]!r} is not in class_labels_indices.csv"
                if unknown
                else "no label MID",
                split,
            )
        else:
            label = SEPARATOR.join(dict.fromkeys(name_of[m] for m in mids))
            index.add(Entry(vggsound_clip_id(ytid, start), at, ytid, label, split, start, end))
