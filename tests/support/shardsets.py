"""Shard sets for the loader tests, written exactly as docs/FORMAT.md specifies.

``write_shard_set`` is a small stand-in for ``avfusion shards build`` (webdataset.TarWriter,
float16 log-mel ``[n_mels, T]`` of the whole clip, JPEG frames, JSON metadata, manifest.json
last). Contents are a deterministic function of the sample number, so tests can recompute what a
sample holds (``sample_mel``) and recognise it in a batch.
"""

from __future__ import annotations

import hashlib
import io
import json
from pathlib import Path

import numpy as np
import webdataset as wds
from PIL import Image

from avbase.features import FRONTENDS, AudioFrontend
from avbase.members import frame_ext
from avbase.shardformat import FORMAT_NAME, FORMAT_VERSION, MANIFEST, shard_name

LABELS = ("bird", "cat", "dog")


def sample_key(i: int) -> str:
    return f"vid{i:05d}-{i * 7919 % 65536:04x}_0"


def sample_mel(i: int, frames: int, fe: AudioFrontend) -> np.ndarray:
    """float16 [n_mels, frames]: a log-mel-like ramp of +1 per second, offset per sample and bin."""
    t = np.arange(frames, dtype=np.float32)[None, :] / fe.frames_per_second
    f = np.arange(fe.n_mels, dtype=np.float32)[:, None]
    return (-6.0 + (i % 17) * 0.05 + f * 0.005 + t).astype(np.float16)


def _jpeg(i: int, k: int, size: int) -> bytes:
    h, w = size, size * 3 // 2
    y, x = np.mgrid[0:h, 0:w]
    rgb = np.stack(
        [
            (x * 255 // w + i * 13) % 256,
            (y * 255 // h + k * 40) % 256,
            np.full_like(x, (i * 37) % 256),
        ],
        axis=-1,
    ).astype(np.uint8)
    buf = io.BytesIO()
    Image.fromarray(rgb).save(buf, format="JPEG", quality=90)
    return buf.getvalue()


def _npy(a: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, a)
    return buf.getvalue()


def make_sample(
    i: int,
    fe: AudioFrontend,
    *,
    clip_seconds: float,
    frame_size: int,
    n_frames: int,
    labelled: bool,
) -> dict:
    times = [clip_seconds * (k + 0.5) / n_frames for k in range(n_frames)]
    meta = {
        "source": f"videos/v{i}.mp4",
        "source_id": sample_key(i).rsplit("_", 1)[0],
        "clip_index": 0,
        "clip_start": 0.0,
        "clip_seconds": clip_seconds,
        "frame_times": times,
        "sample_rate": fe.sample_rate,
        "mel_fps": fe.frames_per_second,
        "n_frames": n_frames,
    }
    if labelled:
        meta.update(label=LABELS[i % len(LABELS)], label_index=i % len(LABELS))
    sample = {
        "__key__": sample_key(i),
        "json": json.dumps(meta).encode(),
        "mel.npy": _npy(sample_mel(i, fe.clip_frames(clip_seconds), fe)),
    }
    sample.update({frame_ext(k): _jpeg(i, k, frame_size) for k in range(n_frames)})
    return sample


def write_shard_set(
    dest: Path,
    num_samples: int,
    per_shard: int,
    *,
    preset: str = "deepavfusion",
    clip_seconds=lambda i: 10.0,
    frame_size: int = 48,
    n_frames: int = 3,
    labelled: bool = True,
    damage=lambda i, sample: sample,
    first: int = 0,
) -> dict:
    """Write ``num_samples`` samples, ``per_shard`` per tar, then manifest.json; return it.

    ``damage(i, sample)`` may alter a sample's members before writing (corrupt-sample tests).
    Samples are numbered from ``first`` (sets with distinct keys: mixture tests).
    """
    fe = FRONTENDS[preset]
    dest.mkdir(parents=True, exist_ok=True)
    shards = []
    for s, lo in enumerate(range(0, num_samples, per_shard)):
        path = dest / shard_name(s)
        with wds.TarWriter(str(path), encoder=False) as tw:
            for i in range(lo, min(lo + per_shard, num_samples)):
                tw.write(
                    damage(
                        i,
                        make_sample(
                            first + i,
                            fe,
                            clip_seconds=clip_seconds(i),
                            frame_size=frame_size,
                            n_frames=n_frames,
                            labelled=labelled,
                        ),
                    )
                )
        data = path.read_bytes()
        shards.append(
            {
                "name": path.name,
                "num_samples": min(per_shard, num_samples - lo),
                "bytes": len(data),
                "sha256": hashlib.sha256(data).hexdigest(),
            }
        )
    manifest = {
        "format": FORMAT_NAME,
        "format_version": FORMAT_VERSION,
        "preset": {
            "audio": fe.as_dict(),
            "clip_seconds": 10.0,
            "min_clip_seconds": 2.0,
            "frame_rate": n_frames / 10.0,
            "frame_size": frame_size,
            "jpeg_quality": 90,
        },
        "num_samples": num_samples,
        "shards": shards,
        "num_failed": 0,
        "created_by": {"version": "test", "config": {}, "created": "2026-01-01T00:00:00Z"},
    }
    if labelled:
        manifest["labels"] = list(LABELS)
    (dest / MANIFEST).write_text(json.dumps(manifest, indent=1))
    return manifest
