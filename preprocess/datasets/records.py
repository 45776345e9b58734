"""Plain records passed from the index readers to the builder and its workers.

No heavy imports: the build's parent process and ``preprocess.options`` import this module.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass

Box = tuple[float, float, float, float]  # (xmin, ymin, xmax, ymax)


@dataclass(frozen=True)
class Regions:
    """Ground truth given as boxes on the clip's centre frame (VGG-SS, Flickr-SoundNet).

    ``boxes`` are in units of ``scale`` (1.0: fractions of the frame's width and height; 256.0:
    Flickr-SoundNet's 256 × 256 annotation grid). ``consensus``: the mask is the sum of the
    annotators' box maps / 2, capped at 1 (values 0, 0.5, 1 — LVS / EZ-VSL / DeepAVFusion);
    otherwise the union of the boxes (binary). The mask goes to the stored frame nearest the
    centre of the clip's span (a 10-s VGGSound clip: 5 s in; a picture-and-sound clip: its
    picture, which sits at the sound's centre).
    """

    boxes: tuple[Box, ...]
    scale: float = 1.0
    consensus: bool = False


@dataclass(frozen=True)
class Still:
    """A clip given as picture files and a sound file (AVSBench ``visual_frames`` +
    ``audio_wav``, the Flickr-SoundNet test's ``frames`` + ``audio``): each picture at its time
    in seconds from the sound's start (``None``: the sound's centre)."""

    frames: tuple[tuple[float | None, str], ...]


@dataclass(frozen=True)
class ClipInfo:
    """What the builder knows about one index entry beyond its path, label and mask folder."""

    id: str  # the dataset's clip id (VGGSound / VGG-SS: ``<ytid>_<start:06d>``)
    where: str  # ``<index file>:<line>`` of the entry
    split: str | None = None
    segment: tuple[float, float] | None = None  # cut [start, end) of a full-length video
    times: tuple[float, float | None] | None = None  # (start, end) as the index gives them
    regions: Regions | None = None
    still: Still | None = None
    problem: tuple[str, str] | None = None  # (stage, message): this entry yields no sample

    @property
    def source_id(self) -> str:
        return clip_source_id(self.id)


_UNSAFE = re.compile(r"[^A-Za-z0-9_-]")


def clip_source_id(clip_id: str) -> str:
    """The sample keys' ``<source-id>`` of a dataset clip: its id itself when it holds only
    ``[A-Za-z0-9_-]`` (YouTube ids do), else the id with other characters replaced by ``-``
    plus a hash of the id (keys stay unique and free of dots)."""
    if not _UNSAFE.search(clip_id) and clip_id:
        return clip_id
    safe = _UNSAFE.sub("-", clip_id)[:48] or "clip"
    return f"{safe}-{hashlib.sha1(clip_id.encode()).hexdigest()[:10]}"


def vggsound_clip_id(ytid: str, start: float) -> str:
    """``<ytid>_<start:06d>``: the id VGGSound's own files, VGG-SS and the separation pair list
    use; a start with a fraction is written with ``p`` for the point (``<ytid>_12p5``)."""
    if float(start).is_integer():
        return f"{ytid}_{int(start):06d}"
    return f"{ytid}_{format(start, 'g').replace('.', 'p')}"
