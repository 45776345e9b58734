"""A dataset index + a media folder → the builder's source list (``preprocess.inputs.Source``).

Each listed clip becomes one source: its media file (a pre-cut clip, or a full-length video with
the segment to cut), label, split, masks / boxes and clip id. A clip without media, and an index
line that could not be used, become a source that fails at once in the build worker (stage
``missing`` / ``index``): it is one ``errors.jsonl`` line and counts in ``num_failed``, through
the same ordered, part-split, resumable path as a broken video. Nothing found at all is an
error before any work.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace

from avbase.errors import AvfusionError
from avbase.urls import redact
from preprocess.datasets import NAMES, audioset, avsbench, flickr, vggsound, vggss
from preprocess.datasets.index import DatasetIndex, Entry
from preprocess.datasets.media import MediaRoot
from preprocess.datasets.records import ClipInfo, Still
from preprocess.inputs import Source
from preprocess.labels import split_label

READERS = dict(  # in NAMES order
    zip(NAMES, (vggsound.read, audioset.read, avsbench.read, vggss.read, flickr.read), strict=True)
)


@dataclass(frozen=True)
class DatasetSpec:
    """``--dataset NAME --index FILE... --media ROOT [--split S] [--name-pattern P]``."""

    name: str
    index: tuple[str, ...]
    media: str
    split: str | None = None
    name_pattern: str | None = None

    def record(self) -> dict:
        return {
            "name": self.name,
            "index": [redact(i) for i in self.index],
            "media": redact(self.media),
            "split": self.split,
            "name_pattern": self.name_pattern,
        }


@dataclass
class DatasetSources:
    sources: list[Source]  # sorted by clip id
    classes: list[str]  # empty: an unlabelled dataset
    multi_label: bool
    record: dict = field(default_factory=dict)  # the manifest's ``dataset`` facts


def dataset_sources(spec: DatasetSpec, classes: tuple[str, ...] | None = None) -> DatasetSources:
    """The sources of ``spec``. ``classes`` (``--classes``) replaces the index's class list
    and selects the clips whose classes are all in it (e.g. VGGSound's music classes); the
    others are left out, counted as ``excluded``."""
    if spec.name not in READERS:
        raise AvfusionError(f"--dataset {spec.name}: expected one of {', '.join(READERS)}")
    index = READERS[spec.name](list(spec.index))
    entries = _in_split(index, spec)
    names = list(classes) if classes is not None else index.classes or []
    listed = len(entries)
    entries = [e for e in entries if all(c in names for c in split_label(e.label or ""))]
    if not entries:
        raise AvfusionError(f"--classes: none of the {listed} listed clips has those classes")
    media = MediaRoot(spec.media, spec.name_pattern)
    sources = [_problem(p.where, p.id, p.message) for p in index.problems if _wanted(p, spec)]
    sources += [_locate(entry, media, spec.name) for entry in entries]
    if entries and all(s.clip.problem for s in sources):
        example = entries[0]
        raise AvfusionError(
            f"--media {spec.media}: none of the {len(entries)} listed clips was found "
            f"(clip {example.id}: looked for {media.tried(example)}; see --name-pattern)"
        )
    record = {**spec.record(), **index.record, "excluded": listed - len(entries)}
    return DatasetSources(
        sorted(sources, key=lambda s: s.clip.id), names, index.multi_label, record
    )


def _in_split(index: DatasetIndex, spec: DatasetSpec) -> list[Entry]:
    entries = [e for e in index.entries if spec.split is None or e.split == spec.split]
    if not entries:
        splits = sorted({e.split for e in index.entries if e.split})
        raise AvfusionError(
            f"--index {' '.join(spec.index)}: no usable clip"
            + (f" of split {spec.split!r} (splits: {', '.join(splits)})" if spec.split else "")
        )
    return entries


def _wanted(problem, spec: DatasetSpec) -> bool:
    return spec.split is None or problem.split in (None, spec.split)


def _problem(where: str, clip_id: str | None, message: str) -> Source:
    text = f"clip {clip_id}: {message}" if clip_id and clip_id not in message else message
    return Source(where, clip=ClipInfo(where, where, problem=("index", text)))


def _locate(entry: Entry, media: MediaRoot, dataset: str) -> Source:
    """The found clip, or a source failing with stage ``missing``."""
    times = None if entry.start is None else (entry.start, entry.end)
    info = ClipInfo(entry.id, entry.where, entry.split, times=times, regions=entry.regions)
    masks = None
    if dataset == "avsbench-s4":
        masks = avsbench.mask_folder(entry)
        if not media.has_folder(masks):
            return _missing(entry, info, f"no mask folder {masks}/ under {media.root}")
        masks = media.full(masks)
    found = media.find(entry) if dataset == "vggss" else None  # VGG-SS: videos first
    still = _still(entry, media, dataset) if found is None else None
    if still is not None:
        sound, pictures = still
        return Source(sound, entry.label, masks, replace(info, still=Still(pictures)))
    found = found or media.find(entry)
    if found is None:
        return _missing(
            entry, info, f"no media file under {media.root} (looked for {media.tried(entry)})"
        )
    segment = None if found.precut or entry.start is None else (entry.start, entry.end or math.inf)
    return Source(found.path, entry.label, masks, replace(info, segment=segment))


def _still(entry: Entry, media: MediaRoot, dataset: str):
    """(sound path, ((time, picture path), ...)) of a frames-and-sound clip, or None."""
    if dataset == "avsbench-s4":
        pictures = [(t, rel) for t, rel in avsbench.frame_paths(entry) if media.has(rel)]
        sounds = [rel for rel in avsbench.sound_paths(entry) if media.has(rel)]
    elif dataset in ("flickr", "vggss"):
        pictures = [(None, f"frames/{entry.id}.jpg")] if media.has(f"frames/{entry.id}.jpg") else []
        sounds = [f"audio/{entry.id}.wav"] if media.has(f"audio/{entry.id}.wav") else []
    else:
        return None
    if not pictures or not sounds:
        return None
    return media.full(sounds[0]), tuple((t, media.full(rel)) for t, rel in pictures)


def _missing(entry: Entry, info: ClipInfo, message: str) -> Source:
    return Source(entry.id, entry.label, clip=replace(info, problem=("missing", message)))
