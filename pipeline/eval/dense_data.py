"""Dense-task items from a shard set: one item per (sample, frame) with what a task asks for.

Steps per sample: read the raw members (the format's tar reader, samples of this rank only:
global index ``% world_size == rank``) → pick frames (every frame with a mask for scoring; one
random frame for training) → image: the whole frame resized to ``size × size`` (AVSBench
protocol: no crop, so the mask stays aligned) → mask: the same resize, nearest → audio: the
log-mel window centred on the frame time (+ jitter when training) → waveform window at the same
place when asked (separation).
"""

from __future__ import annotations

import json
import random
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as NF
from torchvision.io import ImageReadMode, decode_jpeg

from model.presets import AudioFrontend
from pipeline.augment import pad_frames, parse_mel
from pipeline.shardio import join, open_url, read_manifest
from preprocess.dense_members import read_flac, read_mask
from preprocess.shardformat import MEL_EXT, META_EXT, WAVE_EXT, frame_ext, mask_ext, tar_samples


@dataclass(frozen=True)
class DenseSpec:
    """What the task needs: masks (segmentation, localization) and/or waveforms (separation)."""

    size: int  # model image side
    audio: AudioFrontend
    masks: bool = False
    waveform: bool = False
    train: bool = False  # one random frame per sample (else every frame, or the centre one)
    centre_frame: bool = False  # scoring: only the frame nearest the clip centre
    jitter_seconds: float = 0.0  # training: audio window centre ± this (REFERENCE §8: 0.99 s)


def check_members(root: str, spec: DenseSpec) -> dict:
    """The manifest, after checking it declares the members ``spec`` needs."""
    return require_members(root, masks=spec.masks, waveform=spec.waveform)


def require_members(root: str, masks: bool = False, waveform: bool = False) -> dict:
    """The manifest, after checking it declares mask and/or waveform members."""
    manifest = read_manifest(root)
    needed = [m for m, on in (("mask", masks), ("flac", waveform)) if on]
    missing = [m for m in needed if m not in manifest.get("members", [])]
    if missing:
        raise ValueError(
            f"{join(root, 'manifest.json')}: the set has no {' or '.join(missing)} "
            f"members (build it from a list with a 'masks' column / with --keep-waveform)"
        )
    return manifest


def dense_items(
    root: str, spec: DenseSpec, rank: int = 0, world_size: int = 1, seed: int = 0
) -> Iterator[dict]:
    """Items ``{"key", "frame", "image" uint8 [3,S,S], "audio" float32 [1,F,T], "mask" bool [S,S]?,
    "wave" float32 [n]?}`` of this rank, in shard order."""
    manifest = check_members(root, spec)
    g = 0
    for shard in manifest["shards"]:
        n = shard["num_samples"]
        mine = [i for i in range(n) if (g + i) % world_size == rank]
        g += n
        if not mine:
            continue
        with open_url(join(root, shard["name"])) as f:
            for _, raw in tar_samples(f, set(mine).__contains__, mine[-1]):
                rng = random.Random(f"{seed}:{raw['__key__']}")
                yield from _items(raw, spec, rng)


def _items(raw: dict, spec: DenseSpec, rng: random.Random) -> Iterator[dict]:
    meta = json.loads(raw[META_EXT])
    times = meta["frame_times"]
    frames = [i for i in range(len(times)) if not spec.masks or mask_ext(i) in raw]
    if spec.train and frames:
        frames = [rng.choice(frames)]
    elif spec.centre_frame and frames:
        frames = [min(frames, key=lambda i: abs(times[i] - meta["clip_seconds"] / 2))]
    mel = parse_mel(raw[MEL_EXT]).float()
    wave = read_flac(bytes(raw[WAVE_EXT]))[0] if spec.waveform else None
    for i in frames:
        centre = times[i] + (
            rng.uniform(-spec.jitter_seconds, spec.jitter_seconds) if spec.train else 0.0
        )
        start = _window_start(centre, meta["clip_seconds"], spec.audio.window_seconds)
        item = {
            "key": raw["__key__"],
            "frame": i,
            "image": _image(raw[frame_ext(i)], spec.size),
            "audio": _mel_window(mel, start, spec.audio)[None],
        }
        if spec.masks:
            item["mask"] = _mask(raw[mask_ext(i)], spec.size)
        if wave is not None:
            item["wave"] = _wave_window(wave, start, spec.audio)
        yield item


def _window_start(centre: float, duration: float, window: float) -> float:
    return max(0.0, min(centre - window / 2, duration - window))


def _mel_window(mel: torch.Tensor, start: float, fe: AudioFrontend) -> torch.Tensor:
    s = min(round(start * fe.frames_per_second), max(0, mel.shape[1] - fe.window_frames))
    x = mel[:, s : s + fe.window_frames]
    return x if x.shape[1] == fe.window_frames else pad_frames(x, fe.window_frames, fe)


def _wave_window(wave: np.ndarray, start: float, fe: AudioFrontend) -> torch.Tensor:
    """The waveform under the mel window (zero-padded when the clip is shorter)."""
    n = round(fe.window_seconds * fe.sample_rate)
    s = round(start * fe.sample_rate)
    out = torch.zeros(n)
    piece = torch.from_numpy(wave[s : s + n].copy())
    out[: len(piece)] = piece
    return out


def _image(jpeg: bytearray, size: int) -> torch.Tensor:
    img = decode_jpeg(torch.frombuffer(jpeg, dtype=torch.uint8), mode=ImageReadMode.RGB)
    return (
        NF.interpolate(
            img[None].float(),
            size=(size, size),
            mode="bilinear",
            antialias=True,
            align_corners=False,
        )[0]
        .round()
        .clamp(0, 255)
        .to(torch.uint8)
    )


def _mask(png: bytearray, size: int) -> torch.Tensor:
    m = torch.from_numpy(read_mask(bytes(png)))[None, None].float()
    return NF.interpolate(m, size=(size, size), mode="nearest")[0, 0] > 0.5


def batches(items: Iterator[dict], batch_size: int) -> Iterator[dict]:
    """Stack items into batches (the last one may be smaller); keys/frames stay lists."""
    buf = []
    for item in items:
        buf.append(item)
        if len(buf) == batch_size:
            yield _stack(buf)
            buf = []
    if buf:
        yield _stack(buf)


def _stack(items: list[dict]) -> dict:
    return {
        k: [it[k] for it in items]
        if k in ("key", "frame")
        else torch.stack([it[k] for it in items])
        for k in items[0]
    }
