"""Training and evaluation transforms of one stored sample (REFERENCE.md §6), and batching.

Training (§6.1 "project equivalent for stored frames"), all draws from the sample's own RNG:
  1. frame: a stored frame f ~ U{0..n-1} at time τ; decode only that JPEG.
  2. window: centre τ + u, u ~ U(−w/2, w/2) (w = the front end's window, 3 s), clamped to
     [w/2, dur − w/2]; cut ``window_frames`` frames of the stored whole-clip log-mel from the
     frame nearest the window start (the official 193 frames minus the dropped last one = 192).
  3. RandomVol: g ~ U(−6, 6) dB applied exactly in the log-mel domain (§6.3). NOTE: applied for
     the ``audiomae`` preset too (it is part of the DeepAVFusion recipe, not of AudioMAE's).
  4. short clips are padded as the reference does (§6.2 / §6.6), then the preset's
     normalisation and layout: ``[1, 128, 192]`` (``audiomae``: normalised, ``[1, 1024, 128]``).
  5. image: RandomResizedCrop(size, scale (0.5, 1), ratio (3/4, 4/3), bilinear, antialiased;
     torchvision semantics) → horizontal flip p=0.5 → ImageNet normalisation (§6.4).
Evaluation: the centre window, the stored frame nearest its centre, no RandomVol,
Resize(short side size/0.875) → CenterCrop(size) — deterministic (NOTE: the official evaluation
draws a random frame; REFERENCE.md §9 B.15). Multi-clip evaluation asks for other views
(:class:`EvalView`): window k of K evenly spaced over the clip, frame j of J inside the window,
and optionally the release's test-time RandomVol (a gain drawn from the key and view).

Per-sample work stays in uint8 / float16 views; images cross the worker boundary as uint8 and are
normalised once per batch by the receiving process (``normalise``). With ``defer_image`` (training
on a GPU) the worker does not decode the frame: it draws the same crop/flip from the JPEG header's
size and hands over the JPEG bytes with them (:mod:`pipeline.data.jpeg`).
"""

from __future__ import annotations

import json
import math
import random
from dataclasses import dataclass
from typing import Protocol

import torch
import torch.nn.functional as NF
from torchvision.transforms.v2 import functional as TF

from avbase import members
from avbase.features import AudioFrontend, ImageSpec
from avbase.members import MEL_EXT, META_EXT, frame_ext
from pipeline.data.jpeg import decode, jpeg_size, pack, resize_uint8

RANDOM_VOL_DB = 6.0  # §6.2: gain ~ U(−6, +6) dB
CROP_RATIO = (3 / 4, 4 / 3)  # torchvision RandomResizedCrop default ratio (§6.4)
KALDI_LOG_FLOOR = float(torch.finfo(torch.float32).eps)  # kaldi fbank: log(max(E, eps))


class SampleError(Exception):
    """A sample cannot be used; ``stage`` names the failing part (meta | audio | image)."""

    def __init__(self, stage: str, message: str):
        super().__init__(message)
        self.stage = stage


def parse_mel(buf: bytearray) -> torch.Tensor:
    """float16 ``[n_mels, T]`` tensor view of a stored ``mel.npy`` (no copy)."""
    try:
        return torch.from_numpy(members.parse_mel(buf))
    except members.MemberError as e:
        raise SampleError("audio", f"{MEL_EXT}: {e}") from None


def crop_params(
    height: int,
    width: int,
    scale: tuple[float, float],
    ratio: tuple[float, float],
    rng: random.Random,
) -> tuple[int, int, int, int]:
    """(top, left, h, w) of torchvision's RandomResizedCrop (``get_params``, same procedure and
    distributions: ≤ 10 tries of area ~ U(scale)·H·W, log-aspect ~ U(log ratio), then a centre
    crop), drawn from a Python RNG — one torch call per draw costs more than the crop itself."""
    area = height * width
    log_lo, log_hi = math.log(ratio[0]), math.log(ratio[1])
    for _ in range(10):
        target_area = area * rng.uniform(scale[0], scale[1])
        aspect = math.exp(rng.uniform(log_lo, log_hi))
        w = int(round(math.sqrt(target_area * aspect)))
        h = int(round(math.sqrt(target_area / aspect)))
        if 0 < w <= width and 0 < h <= height:
            return rng.randint(0, height - h), rng.randint(0, width - w), h, w
    in_ratio = width / height  # fallback: central crop
    if in_ratio < min(ratio):
        w, h = width, int(round(width / min(ratio)))
    elif in_ratio > max(ratio):
        h, w = height, int(round(height * max(ratio)))
    else:
        w, h = width, height
    return (height - h) // 2, (width - w) // 2, h, w


def random_vol(x: torch.Tensor, gain_db: float, fe: AudioFrontend) -> torch.Tensor:
    """Apply a waveform gain of ``gain_db`` to a stored log-mel ``x`` (float32, in place).

    melspec: S = 10^L − c, L' = log10(k·S + c) with k = 10^(g/10), c = log_offset (§6.3).
    NOTE: S is floored at 0 — fp16 storage can put L a hair below log10(c). The official
    waveform clamp to [−1, 1] is not modelled (it matters only near full scale).
    kaldi_fbank: E = e^L, L' = log(max(k·E, eps)); bins stored at the eps floor (fp16 rounds
    it by < 0.4 %) are taken as E = 0. NOTE: their true energy (≤ eps) is unknown.
    """
    k = 10.0 ** (gain_db / 10.0)
    if fe.kind == "melspec":
        c = fe.log_offset
        return x.mul_(math.log(10.0)).exp_().mul_(k).add_(c * (1.0 - k)).clamp_(min=c).log10_()
    energy = x.exp_()
    energy.masked_fill_(energy <= KALDI_LOG_FLOOR * 1.01, 0.0)
    return energy.mul_(k).clamp_(min=KALDI_LOG_FLOOR).log_()


def pad_frames(x: torch.Tensor, n: int, fe: AudioFrontend) -> torch.Tensor:
    """Extend ``x`` ``[F, t]`` to ``n`` frames as the reference pads short clips.

    melspec (§6.2): the waveform is extended by appending its time-reversed copy while short,
    i.e. it becomes periodic [w, rev(w), w, ...]; its power-spectrum frames are the stored frames
    mirrored at both ends: 0, 1, ..., t−1, t−2, ..., 1, 0, 1, ... NOTE: an approximation — a
    mirrored frame is centred one sample off the stored one and frames straddling a junction
    mix both sides; for real (correlated) audio the difference is small.
    kaldi_fbank (§6.6, AudioMAE): zeros appended to the log-fbank.
    """
    t = x.shape[-1]
    if fe.kind != "melspec":
        return NF.pad(x, (0, n - t))
    period = max(2 * (t - 1), 1)
    r = torch.arange(n) % period
    return x[:, torch.where(r < t, r, period - r)]


class Transform(Protocol):
    """What the loader's workers apply to a raw sample (:class:`Augment`, the dense tasks'
    :class:`pipeline.data.dense.DenseTransform`): ``(raw, rng) → item`` whose last element is the
    label; ``batch(items, shared)`` stacks items into the batch's tensors (uint8 images under
    ``"image"``, which the receiving process normalises with ``normalise``)."""

    image: ImageSpec

    def __call__(self, raw: dict, rng: random.Random | None) -> tuple: ...

    def batch(self, items: list[tuple], shared: bool) -> dict: ...

    def normalise(self, image: torch.Tensor) -> torch.Tensor: ...


@dataclass(frozen=True)
class EvalView:
    """One evaluation view: window ``clip`` of ``clips`` (centres evenly spaced over the clip),
    stored frame ``frame`` of ``frames`` (evenly spaced among the frames inside that window),
    test-time gain ~ U(−vol_db, vol_db) dB seeded by (key, clip, frame). The default is the
    centre window and its nearest frame."""

    clip: int = 0
    clips: int = 1
    frame: int = 0
    frames: int = 1
    vol_db: float = 0.0


class Augment:
    """Raw shard sample → (image uint8 ``[3, S, S]``, audio float32 ``[F, window_frames]``, label).

    label: ``label_index`` (int, −1 unlabelled) or a tuple of indices (multi-label sets).
    """

    def __init__(
        self,
        audio: AudioFrontend,
        image: ImageSpec,
        train: bool,
        defer_image: bool = False,
        view: EvalView | None = None,
    ):
        self.audio, self.image, self.train, self.view = audio, image, train, view or EvalView()
        self.defer = train and defer_image
        self.half = audio.window_seconds / 2

    def __call__(
        self, raw: dict, rng: random.Random | None
    ) -> tuple[torch.Tensor, torch.Tensor, int]:
        """(image, audio, label_index or -1); raises SampleError naming the failing stage.

        Training draws, in order: frame, window jitter, gain, flip, then the crop (from ``rng``).
        """
        dur, times, label = self._meta(raw)
        if self.train:
            frame = rng.randrange(len(times))
            centre = times[frame] + rng.uniform(-self.half, self.half)
            gain, flip = rng.uniform(-RANDOM_VOL_DB, RANDOM_VOL_DB), rng.random() < 0.5
        else:
            (centre, frame, gain), flip = self._eval_view(raw.get("__key__", ""), dur, times), False
        return self._image(raw, frame, rng, flip), self._audio(raw, dur, centre, gain), label

    def _eval_view(self, key: str, dur: float, times: list[float]) -> tuple[float, int, float]:
        """(window centre, frame index, gain dB) of ``self.view``."""
        v, half = self.view, self.half
        span = max(dur - 2 * half, 0.0)
        centre = half + span * v.clip / (v.clips - 1) if v.clips > 1 and span > 0 else dur / 2
        nearest = sorted(range(len(times)), key=lambda i: (abs(times[i] - centre), i))
        inside = sorted(i for i in nearest if abs(times[i] - centre) <= half) or nearest[:1]
        frame = (
            inside[round(v.frame * (len(inside) - 1) / (v.frames - 1))]
            if v.frames > 1
            else nearest[0]
        )
        gain = (
            random.Random(f"{key}/{v.clip}/{v.frame}").uniform(-v.vol_db, v.vol_db)
            if v.vol_db
            else 0.0
        )
        return centre, frame, gain

    def _meta(self, raw: dict) -> tuple[float, list[float], int]:
        try:
            meta = json.loads(raw[META_EXT])
            dur, times = float(meta["clip_seconds"]), [float(t) for t in meta["frame_times"]]
            index = meta.get("label_index", -1)
            label = tuple(int(i) for i in index) if isinstance(index, list) else int(index)
        except (KeyError, TypeError, ValueError, AttributeError) as e:
            raise SampleError("meta", f"{META_EXT}: {type(e).__name__}: {e}") from None
        if not times or dur <= 0:
            raise SampleError("meta", f"{META_EXT}: no frame_times or clip_seconds <= 0")
        return dur, times, label

    def _audio(self, raw: dict, dur: float, centre: float, gain_db: float) -> torch.Tensor:
        fe, n = self.audio, self.audio.window_frames
        if MEL_EXT not in raw:
            raise SampleError("audio", f"{MEL_EXT} missing")
        mel = parse_mel(raw[MEL_EXT])
        if mel.shape[0] != fe.n_mels:
            raise SampleError(
                "audio", f"{MEL_EXT}: {mel.shape[0]} mel bins, preset {fe.name!r} has {fe.n_mels}"
            )
        centre = min(max(centre, self.half), dur - self.half)
        start = max(0.0, centre - self.half)  # short clips (dur < window): 0
        s = min(round(start * fe.frames_per_second), max(0, mel.shape[1] - n))
        x = mel[:, s : s + n].float()
        if gain_db:
            random_vol(x, gain_db, fe)  # before padding (kaldi zeros stay 0)
        return x if x.shape[1] == n else pad_frames(x, n, fe)

    def _image(self, raw: dict, frame: int, rng: random.Random | None, flip: bool):
        ext, size = frame_ext(frame), self.image.size
        if ext not in raw:
            raise SampleError("image", f"{ext} missing")
        if self.defer:  # decoded later, batched, on the device
            try:
                h, w = jpeg_size(raw[ext])
            except ValueError as e:
                raise SampleError("image", f"{ext}: {e}") from None
            return raw[ext], (*crop_params(h, w, self.image.crop_scale, CROP_RATIO, rng), flip)
        try:
            img = decode(torch.frombuffer(raw[ext], dtype=torch.uint8))
        except RuntimeError as e:
            raise SampleError("image", f"{ext}: {e}") from None
        h, w = img.shape[-2:]
        if self.train:
            top, left, ch, cw = crop_params(h, w, self.image.crop_scale, CROP_RATIO, rng)
            img = resize_uint8(img[:, top : top + ch, left : left + cw], size)
            return img.flip(-1) if flip else img
        if min(h, w) != self.image.eval_resize:
            img = TF.resize(img, [self.image.eval_resize], antialias=True)
        return TF.center_crop(img, [size, size])

    def collate(self, items: list[tuple], shared: bool) -> tuple[torch.Tensor | dict, torch.Tensor]:
        """Stack: image uint8 ``[B, 3, S, S]`` (deferred: :func:`pipeline.data.jpeg.pack` of the JPEGs
        and crops), audio float32 ``[B, 1, F, T]`` (``[B, 1, T, F]`` for a time-major front end,
        normalised when the preset says so). ``shared``: allocate in shared memory (the batch
        crosses a process boundary)."""
        fe, size, b = self.audio, self.image.size, len(items)
        a_shape = (
            (b, 1, fe.window_frames, fe.n_mels)
            if fe.time_major
            else (b, 1, fe.n_mels, fe.window_frames)
        )
        audio = torch.empty(a_shape)
        if self.defer:
            image = pack([im[0] for im, _, _ in items], [im[1] for im, _, _ in items], shared)
        else:
            image = torch.empty(b, 3, size, size, dtype=torch.uint8)
        if shared:
            audio.share_memory_()
            if not self.defer:
                image.share_memory_()
        for i, (im, au, _) in enumerate(items):
            if not self.defer:
                image[i].copy_(im)
            audio[i, 0].copy_(au.T if fe.time_major else au)
        if fe.norm_mean is not None:
            audio.sub_(fe.norm_mean).div_(2 * fe.norm_std)
        return image, audio

    def batch(self, items: list[tuple], shared: bool) -> dict:
        image, audio = self.collate(items, shared)
        return {"image": image, "audio": audio}

    def normalise(self, image: torch.Tensor) -> torch.Tensor:
        return normalise(image, self.image)


def normalise(image: torch.Tensor, spec: ImageSpec) -> torch.Tensor:
    """uint8 ``[B, 3, S, S]`` → float32 (x/255 − mean)/std.

    NOTE: done by the receiving process — a float32 batch is 4× the bytes to move through shared
    memory, whose fresh pages cost more than this conversion.
    """
    std = torch.tensor(spec.std, device=image.device).view(1, 3, 1, 1)
    mean = torch.tensor(spec.mean, device=image.device).view(1, 3, 1, 1)
    return image.float().mul_(1.0 / (255.0 * std)).sub_(mean / std)
