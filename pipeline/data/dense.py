"""The dense tasks' mode of the loader's transform: a sample → frames with what the task needs.

``DenseTransform`` runs in the loader's workers like :class:`~pipeline.data.augment.Augment`
(same epoch plan, shuffle, S3 retries, error policy and resume state). Per sample:

- frames: training — one random stored frame (with a mask when the task needs masks);
  scoring — every frame with a mask (segmentation, localization) or the frame nearest the clip
  centre (separation);
- image: scoring — the whole frame resized to ``size × size`` (no crop, so the mask stays
  aligned); training (``augment``, the release's AVS recipe) — RandomResizedCrop(size, scale
  (0.5, 1)) and a horizontal flip drawn once and applied to the frame and its mask alike;
- mask: the same geometry, nearest-neighbour; float 0 / 0.5 / 1 (0.5: a consensus map's half,
  docs/FORMAT.md);
- audio: the log-mel window centred on the frame time (training: ± ``jitter_seconds``, and
  RandomVol ±6 dB with ``augment``);
- waveform (separation): the window of the clip's stored waveform under the mel window.

Items of a sample are stacked along the first axis; a batch concatenates them, so a scoring
batch has one row per frame and ``"sample"`` names each row's sample (its index in the batch).
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as NF

from avbase.features import AudioFrontend, ImageSpec
from avbase.members import MEL_EXT, META_EXT, WAVE_EXT, frame_ext, mask_ext, read_flac, read_mask
from pipeline.data.augment import (
    CROP_RATIO,
    RANDOM_VOL_DB,
    SampleError,
    crop_params,
    normalise,
    pad_frames,
    parse_mel,
    random_vol,
)
from pipeline.data.jpeg import decode, resize_uint8


@dataclass(frozen=True)
class DenseSpec:
    """What the task needs: masks (segmentation, localization) and/or waveforms (separation)."""

    masks: bool = False
    waveform: bool = False
    centre_frame: bool = False  # scoring: only the frame nearest the clip centre
    jitter_seconds: float = 0.0  # training: audio window centre ± this (REFERENCE §8: 0.99 s)
    augment: bool = False  # training: joint crop + flip, RandomVol (the release's AVS recipe)
    labels: bool = False  # batches carry label_index (separation draws pairs of two classes)

    def members(self) -> list[str]:
        """The optional shard members this spec reads (the manifest must declare them)."""
        return [m for m, on in (("mask", self.masks), ("flac", self.waveform)) if on]


class DenseTransform:
    """Raw sample → ``(fields, label)``: fields ``image`` uint8 ``[n, 3, S, S]``, ``audio``
    float32 ``[n, 1, F, T]``, ``frame`` int64 ``[n]``, ``mask`` float32 ``[n, S, S]`` of
    0 / 0.5 / 1?, ``wave`` float32 ``[n, L]``? (n = 1 when training)."""

    def __init__(self, audio: AudioFrontend, image: ImageSpec, spec: DenseSpec, train: bool):
        self.audio, self.image, self.spec, self.train = audio, image, spec, train

    def __call__(self, raw: dict, rng: random.Random | None) -> tuple[dict, int]:
        try:
            meta = json.loads(raw[META_EXT])
            times, duration = meta["frame_times"], float(meta["clip_seconds"])
            label = meta.get("label_index", -1)
        except (KeyError, TypeError, ValueError) as e:
            raise SampleError("meta", f"{META_EXT}: {type(e).__name__}: {e}") from None
        frames = self._frames(raw, times, duration, rng)
        if not frames:
            raise SampleError("image", "no frame with a mask")
        mel = parse_mel(raw[MEL_EXT]).float()
        wave = self._wave(raw) if self.spec.waveform else None
        rows = [self._item(raw, i, times[i], duration, mel, wave, rng) for i in frames]
        fields = {k: torch.stack([r[k] for r in rows]) for k in rows[0]}
        label = tuple(label) if isinstance(label, list) else int(label)
        return fields, label

    def _frames(self, raw: dict, times: list, duration: float, rng) -> list[int]:
        frames = [i for i in range(len(times)) if not self.spec.masks or mask_ext(i) in raw]
        if self.train and frames:
            return [rng.choice(frames)]
        if self.spec.centre_frame and frames:
            return [min(frames, key=lambda i: (abs(times[i] - duration / 2), i))]
        return frames

    def _item(self, raw, i: int, t: float, duration: float, mel, wave, rng) -> dict:
        jitter = self.spec.jitter_seconds
        centre = t + (rng.uniform(-jitter, jitter) if self.train and jitter else 0.0)
        gain = rng.uniform(-RANDOM_VOL_DB, RANDOM_VOL_DB) if self.train and self.spec.augment else 0
        window = self.audio.window_seconds
        start = max(0.0, min(centre - window / 2, duration - window))
        image, mask = self._picture(raw, i, rng)
        item = {
            "image": image,
            "audio": self._mel_window(mel, start, gain)[None],
            "frame": torch.tensor(i),
        }
        if mask is not None:
            item["mask"] = mask
        if wave is not None:
            item["wave"] = self._wave_window(wave, start)
        return item

    def _picture(self, raw: dict, i: int, rng) -> tuple[torch.Tensor, torch.Tensor | None]:
        """(uint8 ``[3, S, S]``, float32 ``[S, S]`` or None): the frame and its mask, alike."""
        size = self.image.size
        try:
            img = decode(torch.frombuffer(raw[frame_ext(i)], dtype=torch.uint8))
        except (KeyError, RuntimeError) as e:
            raise SampleError("image", f"{frame_ext(i)}: {e}") from None
        mask = None
        if self.spec.masks:
            try:
                mask = torch.from_numpy(read_mask(bytes(raw[mask_ext(i)])))
            except Exception as e:  # PIL raises many kinds
                raise SampleError("image", f"{mask_ext(i)}: {type(e).__name__}") from None
        if self.train and self.spec.augment:
            h, w = img.shape[-2:]
            top, left, ch, cw = crop_params(h, w, self.image.crop_scale, CROP_RATIO, rng)
            img = img[:, top : top + ch, left : left + cw]
            mask = None if mask is None else mask[top : top + ch, left : left + cw]
            if rng.random() < 0.5:
                img, mask = img.flip(-1), None if mask is None else mask.flip(-1)
        img = img if img.shape[-2:] == (size, size) else resize_uint8(img, size)
        if mask is not None:
            mask = NF.interpolate(mask[None, None], size=(size, size), mode="nearest")[0, 0]
        return img, mask

    def _mel_window(self, mel: torch.Tensor, start: float, gain_db: float) -> torch.Tensor:
        fe = self.audio
        s = min(round(start * fe.frames_per_second), max(0, mel.shape[1] - fe.window_frames))
        x = mel[:, s : s + fe.window_frames].clone()
        if gain_db:
            random_vol(x, gain_db, fe)
        return x if x.shape[1] == fe.window_frames else pad_frames(x, fe.window_frames, fe)

    def _wave(self, raw: dict) -> np.ndarray:
        try:
            return read_flac(bytes(raw[WAVE_EXT]))[0]
        except Exception as e:  # av raises many kinds
            raise SampleError("audio", f"{WAVE_EXT}: {type(e).__name__}: {e}") from None

    def _wave_window(self, wave: np.ndarray, start: float) -> torch.Tensor:
        """The waveform under the mel window (zero-padded when the clip is shorter)."""
        fe = self.audio
        n, s = round(fe.window_seconds * fe.sample_rate), round(start * fe.sample_rate)
        out = torch.zeros(n)
        piece = torch.from_numpy(wave[s : s + n].copy())
        out[: len(piece)] = piece
        return out

    def batch(self, items: list[tuple], shared: bool) -> dict:
        """Rows of every item concatenated; ``sample`` int64 ``[rows]`` indexes the batch."""
        fields = [f for f, _ in items]
        out = {k: torch.cat([f[k] for f in fields]) for k in fields[0]}
        out["sample"] = torch.cat(
            [torch.full((len(f["frame"]),), j, dtype=torch.int64) for j, f in enumerate(fields)]
        )
        if shared:
            for v in out.values():
                v.share_memory_()
        return out

    def normalise(self, image: torch.Tensor) -> torch.Tensor:
        return normalise(image, self.image)
