"""Class lists of labelled shard sets (docs/FORMAT.md "Labels").

A source's ``label`` is one class name or several separated by ``;`` (AudioSet style). The class
list is given (``--classes FILE``: one name per line, or the first CSV column; an optional header
``name`` / ``label`` / ``class`` / ``display_name`` is skipped) so that train and test sets share
one index, or else it is the sorted set of names seen. ``label_index`` is the position of the
class in that list — a list of positions in multi-label sets. The manifest records ``labels``,
``multi_label``, ``labelled_inputs`` and ``label_counts`` (labelled source inputs per class;
failed inputs excluded); the evaluations' class frequencies are ``label_counts / sum(label_counts)``
(the release's ``class_dist``).
"""

from __future__ import annotations

import csv
import io

from avbase.errors import AvfusionError

SEPARATOR = ";"
HEADERS = ("name", "label", "class", "display_name")


def split_label(label: str) -> list[str]:
    """``"a; b"`` → ``["a", "b"]`` (empty parts dropped)."""
    return [p.strip() for p in label.split(SEPARATOR) if p.strip()]


def read_class_file(path: str, text: str) -> list[str]:
    """Class names in file order; errors (:class:`AvfusionError`) name the file."""
    rows = [
        r for r in csv.reader(io.StringIO(text)) if r and r[0].strip() and not r[0].startswith("#")
    ]
    names = [r[0].strip() for r in rows]
    if names and names[0].lower() in HEADERS:
        names = names[1:]
    if not names:
        raise AvfusionError(f"{path}: no class names")
    seen: set[str] = set()
    for name in names:
        if name in seen:
            raise AvfusionError(f"{path}: class {name!r} is listed twice")
        if SEPARATOR in name:
            raise AvfusionError(
                f"{path}: class {name!r} contains the label separator {SEPARATOR!r}"
            )
        seen.add(name)
    return names


def class_list(labels: list[str | None], given: list[str] | None) -> tuple[list[str], bool]:
    """(classes, multi_label) for the sources' labels; ``given`` fixes the list when set."""
    parts = [split_label(lab) for lab in labels if lab is not None]
    multi = any(len(p) > 1 for p in parts)
    return (list(given) if given is not None else sorted({n for p in parts for n in p})), multi


def label_index(label: str, classes: list[str], multi: bool, source: str) -> int | tuple[int, ...]:
    """Position(s) of ``label``'s classes; AvfusionError naming the source and the class."""
    index = {n: i for i, n in enumerate(classes)}
    positions = []
    for name in split_label(label):
        if name not in index:
            raise AvfusionError(
                f"{source}: class {name!r} is not in the class list "
                f"({len(classes)} classes: {', '.join(classes[:5])}{', …' if len(classes) > 5 else ''})"
            )
        positions.append(index[name])
    if not positions:
        raise AvfusionError(f"{source}: empty label {label!r}")
    return tuple(sorted(set(positions))) if multi else positions[0]


def label_counts(indices: list[int | tuple[int, ...] | None], num_classes: int) -> list[int]:
    """Labelled inputs per class (an input counts once for each of its classes)."""
    counts = [0] * num_classes
    for idx in indices:
        for c in idx if isinstance(idx, tuple) else () if idx is None else (idx,):
            counts[c] += 1
    return counts


def label_problem(meta: dict, classes: list[str], multi: bool) -> str | None:
    """Why a sample's ``label`` / ``label_index`` disagree with the manifest's class list, or None."""
    if "label" not in meta:
        return None
    names = split_label(str(meta["label"]))
    index = meta.get("label_index")
    want = [classes.index(n) if n in classes else None for n in names]
    if None in want or not names:
        missing = next((n for n, w in zip(names, want, strict=True) if w is None), meta["label"])
        return f"label class {missing!r} is not in the manifest's labels"
    got = sorted(index) if multi and isinstance(index, list) else index
    expected = sorted(set(want)) if multi else want[0]
    if got != expected or (not multi and len(names) != 1):
        return f"label {meta['label']!r} / label_index {index} disagree with the manifest's labels"
    return None


def remap_index(index: int | list[int] | None, remap: list[int]) -> int | list[int] | None:
    """``label_index`` under a new class order (merge)."""
    if index is None:
        return None
    return sorted(remap[i] for i in index) if isinstance(index, list) else remap[index]
