"""Optional dense-task members of a sample (docs/FORMAT.md): per-frame masks and the waveform.

- ``<key>.fNN.mask.png``: 8-bit grey PNG the size of the stored frame ``fNN``: 255 = the
  sounding object, 0 = not, 128 = half (a consensus map's 0.5: Flickr-SoundNet, where one of two
  annotators marked the pixel). Masks come from the list's ``masks`` column: a folder of PNGs,
  one per second of the video (AVSBench layout ``<name>_<s>.png``; ordered by the last number in
  the name; local or URL); the frame taken at video time ``t`` gets mask number ``floor(t)``
  (nearest-neighbour resized, made binary). Frames past the last mask get none. Boxes of a
  dataset index become masks in ``preprocess.datasets.regions``.
- ``<key>.flac``: the clip's mono waveform at the preset rate (16-bit FLAC, lossless).
"""

from __future__ import annotations

import io
import math
import os
import posixpath
import re

import av
import fsspec
import numpy as np
from PIL import Image

from preprocess.clips import EPS
from preprocess.decode import MediaError
from preprocess.shardformat import MEMBERS, WAVE_EXT, frame_ext, is_url, mask_ext

_NUMBER = re.compile(r"(\d+)(?!.*\d)")


LEVELS = {0.0: 0, 0.5: 128, 1.0: 255}  # mask value -> stored grey level


def mask_files(folder: str) -> list[str]:
    """The folder's PNGs in time order (by the last number in each name)."""
    try:
        fs, root = fsspec.core.url_to_fs(folder)
        names = [posixpath.basename(p) for p in fs.ls(root, detail=False)]
    except OSError as e:
        raise MediaError("masks", f"{folder}: {e.strerror or e}") from None
    names = [n for n in names if n.lower().endswith(".png") and _NUMBER.search(n)]
    names.sort(key=lambda n: int(_NUMBER.search(n)[1]))
    return [
        f"{folder.rstrip('/')}/{n}" if is_url(folder) else os.path.join(folder, n) for n in names
    ]


def mask_members(files: list[str], frames: list[tuple[float, bytes]]) -> list[tuple[str, bytes]]:
    """``[(fNN.mask.png, png)]`` for the frames (video time, JPEG) that have a mask."""
    members = []
    for i, (t, jpeg) in enumerate(frames):
        s = math.floor(t + EPS)
        if 0 <= s < len(files):
            size = Image.open(io.BytesIO(jpeg)).size
            members.append((mask_ext(i), _mask_png(files[s], size)))
    return members


def _mask_png(path: str, size: tuple[int, int]) -> bytes:
    try:
        with fsspec.open(path, "rb") as f, Image.open(f) as im:
            grey = np.array(im.convert("L").resize(size, Image.Resampling.NEAREST))
    except OSError as e:
        raise MediaError("masks", f"{path}: {e}") from None
    return mask_png((grey > 127).astype(np.float32))


def mask_png(mask: np.ndarray) -> bytes:
    """Float ``[H, W]`` of 0 / 0.5 / 1 → the stored PNG (grey 0 / 128 / 255)."""
    grey = np.select([mask >= 0.75, mask >= 0.25], [LEVELS[1.0], LEVELS[0.5]], LEVELS[0.0])
    buf = io.BytesIO()
    Image.fromarray(grey.astype(np.uint8), mode="L").save(buf, format="PNG")
    return buf.getvalue()


def flac_bytes(wave: np.ndarray, rate: int) -> bytes:
    """float ``[n]`` in [-1, 1] → mono 16-bit FLAC."""
    pcm = (np.clip(wave, -1, 1) * 32767).round().astype(np.int16)
    buf = io.BytesIO()
    with av.open(buf, "w", format="flac") as container:
        stream = container.add_stream("flac", rate=rate, layout="mono")
        frame = av.AudioFrame.from_ndarray(pcm[None], format="s16", layout="mono")
        frame.sample_rate = rate
        container.mux(stream.encode(frame))
        container.mux(stream.encode())
    return buf.getvalue()


def read_flac(data: bytes) -> tuple[np.ndarray, int]:
    """FLAC bytes → (float32 ``[n]`` in [-1, 1], sample rate)."""
    with av.open(io.BytesIO(data)) as container:
        stream = container.streams.audio[0]
        chunks = [f.to_ndarray().reshape(-1) for f in container.decode(stream)]
        rate = stream.rate
    pcm = np.concatenate(chunks) if chunks else np.zeros(0, np.int16)
    return pcm.astype(np.float32) / 32767, rate


def read_mask(data: bytes) -> np.ndarray:
    """PNG bytes → float32 ``[H, W]`` of 0 / 0.5 / 1 (grey 0 / 128 / 255; other greys are
    taken to the nearest of these — ``verify`` reports them)."""
    with Image.open(io.BytesIO(data)) as im:
        grey = np.array(im.convert("L"))
    return np.select([grey >= 192, grey >= 64], [1.0, 0.5], 0.0).astype(np.float32)


def mask_level_problem(data: bytes) -> str | None:
    """Why a stored mask is not made of the grey levels 0 / 128 / 255, or None."""
    with Image.open(io.BytesIO(data)) as im:
        odd = set(np.unique(np.array(im.convert("L"))).tolist()) - set(LEVELS.values())
    return f"grey levels {sorted(odd)[:5]} besides 0 / 128 / 255" if odd else None


def declared_members(has_masks: bool, keep_waveform: bool) -> list[str]:
    """The manifest's ``members``: optional member kinds the set may hold."""
    return [name for name, on in zip(MEMBERS, (has_masks, keep_waveform), strict=True) if on]


def check_members(
    files: dict[str, bytes], meta: dict, declared: list[str]
) -> tuple[list[str], int]:
    """(problems, number of optional members) of one sample's mask / flac members."""
    masks = {n: d for n, d in files.items() if n.endswith(".mask.png")}
    problems = []
    if masks and "mask" not in declared or WAVE_EXT in files and "flac" not in declared:
        problems.append(f"optional members not declared in the manifest's members {declared}")
    for i in range(meta.get("n_frames", 0)):
        data = masks.get(mask_ext(i))
        if data is None:
            continue
        try:
            mask = read_mask(data)
            size = Image.open(io.BytesIO(files[frame_ext(i)])).size
            levels = mask_level_problem(data)
        except Exception as e:  # PIL raises many kinds
            problems.append(f"{mask_ext(i)}: undecodable ({type(e).__name__})")
            continue
        if levels:
            problems.append(f"{mask_ext(i)}: {levels}")
        if (mask.shape[1], mask.shape[0]) != size:
            problems.append(
                f"{mask_ext(i)}: {mask.shape[1]}x{mask.shape[0]}, frame is {size[0]}x{size[1]}"
            )
    if len(masks) != sum(mask_ext(i) in masks for i in range(meta.get("n_frames", 0))):
        problems.append(f"mask members without a frame: {sorted(masks)}")
    if WAVE_EXT in files:
        try:
            wave, rate = read_flac(files[WAVE_EXT])
        except (av.FFmpegError, ValueError) as e:
            return problems + [f"{WAVE_EXT}: undecodable ({e})"], len(masks) + 1
        want = round(meta["clip_seconds"] * meta["sample_rate"])
        if rate != meta["sample_rate"] or abs(len(wave) - want) > 1:
            problems.append(
                f"{WAVE_EXT}: {len(wave)} samples at {rate} Hz, expected {want} at "
                f"{meta['sample_rate']} Hz"
            )
    return problems, len(masks) + (WAVE_EXT in files)
