"""Shard-set format v1 constants — the contract between the builder and the loader.

See docs/FORMAT.md. ``pipeline`` imports only this module (and ``model.presets``) from here.
"""
from __future__ import annotations

FORMAT_NAME = "avfusion-shards"
FORMAT_VERSION = 1

MANIFEST = "manifest.json"          # written last: its presence marks a complete set
ERRORS = "errors.jsonl"             # one line per failed input {source, stage, error}
SHARD_NAME = "shard-{index:06d}.tar"

MEL_EXT = "mel.npy"                 # float16 [n_mels, T] log-mel of the whole clip
META_EXT = "json"                   # {source, clip_start, clip_seconds, frame_times, ...}
FRAME_EXT = "f{index:02d}.jpg"      # frames in time order, short side = frame_size


def shard_name(index: int) -> str:
    return SHARD_NAME.format(index=index)


def frame_ext(index: int) -> str:
    return FRAME_EXT.format(index=index)

JPEG_QUALITY = 90                   # stored frames (the preset records it)
PROGRESS_DIR = ".progress"          # resume records of an unfinished build; removed when complete


def progress_record(index: int) -> str:
    """Completion record of shard ``index``: written right after its tar, before the next one."""
    return f"{PROGRESS_DIR}/{shard_name(index)}.json"
