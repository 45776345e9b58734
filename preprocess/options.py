"""What a build worker is told: the sample options and one input (no heavy imports, so the
parent process of a build never loads torch or PyAV)."""

from __future__ import annotations

from dataclasses import asdict, dataclass

from avbase import shardformat as fmt
from avbase.features import get_frontend
from avbase.members import JPEG_QUALITY
from preprocess.datasets.records import ClipInfo


@dataclass(frozen=True)
class SampleOptions:
    """Everything that determines a sample's bytes (recorded in the manifest)."""

    preset: str = "deepavfusion"
    clip_seconds: float = 10.0
    min_clip_seconds: float = 2.0
    frame_rate: float = 1.0
    frame_size: int = 256
    jpeg_quality: int = JPEG_QUALITY
    keep_waveform: bool = False  # <key>.flac: the clip's mono waveform (separation)

    def problems(self) -> list[str]:
        """Unusable values, one line each (empty when all is well)."""
        out = []
        try:
            get_frontend(self.preset)
        except fmt.FormatError as e:
            out.append(f"--preset: {e}")
        if not self.clip_seconds > 0:
            out.append(f"--clip-seconds must be > 0 (got {self.clip_seconds})")
        if not 0 < self.min_clip_seconds <= self.clip_seconds:
            out.append(
                f"--min-clip-seconds must be in (0, --clip-seconds] (got {self.min_clip_seconds})"
            )
        if not self.frame_rate > 0 or self.min_clip_seconds * self.frame_rate < 0.5:
            out.append(
                f"--frame-rate must give every clip a frame: frame_rate * min_clip_seconds "
                f">= 0.5 (got {self.frame_rate})"
            )
        if not 16 <= self.frame_size <= 4096:
            out.append(f"--frame-size must be in [16, 4096] (got {self.frame_size})")
        return out

    def preset_record(self) -> dict:
        """The manifest's ``preset`` entry (docs/FORMAT.md)."""
        record = asdict(self)
        del record["preset"], record["keep_waveform"]  # declared in the manifest's members
        return {"audio": get_frontend(self.preset).as_dict(), **record}


@dataclass(frozen=True)
class Task:
    path: str
    source_id: str
    label: str | None = None
    label_index: int | None = None
    masks: str | None = None  # folder of per-second mask PNGs
    clip: ClipInfo | None = None  # a clip of a dataset index (segment, boxes, pictures, split)

    @property
    def name(self) -> str:
        """Unique in a build: the dataset clip's id, else the path."""
        return self.clip.id if self.clip else self.path
