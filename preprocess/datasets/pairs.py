"""The separation test pairs in the DeepAVFusion release's layout (``metadata/vggmusic_eval_ss.csv``
of stoneMo/DeepAVFusion, read by its ``get_vggsound_music``).

A CSV with the header ``source_1,source_2,class_1,class_2,sep_type``; one pair per line, each
source a VGGSound clip id ``<ytid>_<start:06d>`` (the ytid may begin with ``-`` and contain
``_``), the classes the VGGSound labels without ``playing `` and with ``_`` for spaces
(quoted when they hold a comma: ``"violin,_fiddle"``), ``sep_type`` ``Easy`` (two classes) or
``Hard`` (one class twice). The release's 1,201 pairs (910 Easy, 291 Hard) mix the two sources' centre 3-s windows.

:func:`read_pairs` returns the pairs as sample keys of shard sets built with
``avfusion shards build --dataset vggsound`` (or ``vggss``): ``<source-id>_<clip-index>``,
the source id of a VGGSound clip being its clip id.
"""

from __future__ import annotations

import csv
import io
from dataclasses import dataclass

from avbase.errors import AvfusionError
from preprocess.datasets.index import read_text, where
from preprocess.datasets.records import clip_source_id

HEADER = ("source_1", "source_2", "class_1", "class_2", "sep_type")


@dataclass(frozen=True)
class Pair:
    first: str  # sample key of source_1
    second: str  # sample key of source_2
    classes: tuple[str, str]  # (class_1, class_2) as the file writes them
    kind: str  # sep_type: Easy | Hard


def read_pairs(path: str, clip_index: int = 0) -> list[Pair]:
    """The pairs of ``path`` (local or URL) in file order; each source's key is that of its
    clip ``clip_index`` (0: the 10-s clip of a build with the default ``--clip-seconds``).
    ``AvfusionError`` naming the file and line for a wrong header or line."""
    reader = csv.reader(io.StringIO(read_text(path)))
    header = tuple(c.strip() for c in next(reader, []))
    if header != HEADER:
        raise AvfusionError(f"{path}: expected the header {','.join(HEADER)}, got {header}")
    pairs = []
    for row in reader:
        if not "".join(row).strip():
            continue
        fields = [c.strip() for c in row]
        if len(fields) != len(HEADER) or not fields[0] or not fields[1]:
            raise AvfusionError(
                f"{where(path, reader.line_num)}: expected {len(HEADER)} fields "
                f"({','.join(HEADER)}), got {row}"
            )
        first, second, class_1, class_2, kind = fields
        pairs.append(
            Pair(_key(first, clip_index), _key(second, clip_index), (class_1, class_2), kind)
        )
    if not pairs:
        raise AvfusionError(f"{path}: no pairs")
    return pairs


def _key(clip_id: str, clip_index: int) -> str:
    return f"{clip_source_id(clip_id)}_{clip_index}"
