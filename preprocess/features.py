"""Stored features: 16-kHz waveform → log-mel of the preset; video frame → resized JPEG.

Audio parameters come from ``avbase.features.AudioFrontend`` (one place for them). Transforms
are built once per process and reused for every clip.
"""

from __future__ import annotations

from functools import lru_cache

import av
import numpy as np
import torch
import torchaudio
from PIL import Image

from avbase.features import AudioFrontend
from avbase.members import jpeg_bytes

_ROTATE = {
    1: Image.Transpose.ROTATE_90,
    2: Image.Transpose.ROTATE_180,
    3: Image.Transpose.ROTATE_270,
}  # counter-clockwise quarter turns


def resample(wave: np.ndarray, rate: int, target: int) -> np.ndarray:
    """``[n]`` float32 at ``rate`` → ``[m]`` at ``target`` (torchaudio default windowed sinc,
    as the official loader; REFERENCE.md §6.1)."""
    if rate == target:
        return wave
    return torchaudio.functional.resample(torch.from_numpy(wave), rate, target).numpy()


@lru_cache(maxsize=4)
def _melspec(fe: AudioFrontend) -> torchaudio.transforms.MelSpectrogram:
    return torchaudio.transforms.MelSpectrogram(
        sample_rate=fe.sample_rate,
        n_fft=fe.n_fft,
        win_length=fe.win_length,
        hop_length=fe.hop_length,
        f_min=fe.f_min,
        f_max=fe.f_max,
        n_mels=fe.n_mels,
        power=2.0,
        center=True,
        pad_mode="reflect",
        norm=None,
        mel_scale="htk",
    )


def log_mel(wave: np.ndarray, fe: AudioFrontend) -> np.ndarray:
    """``[n]`` waveform at ``fe.sample_rate`` → float16 ``[n_mels, fe.clip_frames(n / sr)]``.

    ``melspec``: log10(mel power + offset), no normalisation (REFERENCE.md §6.2).
    ``kaldi_fbank``: Kaldi log fbank of the mean-removed clip, not normalised (§6.6; the
    loader applies the AudioSet statistics).
    """
    x = torch.from_numpy(np.ascontiguousarray(wave, dtype=np.float32))
    with torch.no_grad():
        if fe.kind == "melspec":
            mel = torch.log10(_melspec(fe)(x) + fe.log_offset)
        elif fe.kind == "kaldi_fbank":
            from torchaudio.compliance import kaldi

            mel = kaldi.fbank(
                (x - x.mean())[None],
                htk_compat=True,
                sample_frequency=fe.sample_rate,
                use_energy=False,
                window_type="hanning",
                num_mel_bins=fe.n_mels,
                dither=0.0,
                frame_length=1000.0 * fe.win_length / fe.sample_rate,
                frame_shift=1000.0 * fe.hop_length / fe.sample_rate,
                low_freq=fe.f_min,
                high_freq=fe.f_max,
            ).T
        else:
            raise ValueError(f"audio front end {fe.name!r}: unknown kind {fe.kind!r}")
    return mel.to(torch.float16).numpy()


def display_size(width: int, height: int, sar: float, short_side: int) -> tuple[int, int]:
    """(width, height) of the displayed picture (pixel aspect ratio applied) scaled so that
    its short side is ``short_side``; quarter-turn rotations keep the short side."""
    w, h = width * (sar or 1.0), float(height)
    scale = short_side / min(w, h)
    return max(1, round(w * scale)), max(1, round(h * scale))


def encode_frame(frame: av.VideoFrame, short_side: int, quality: int, sar: float = 1.0) -> bytes:
    """Decoded frame → RGB, resized (area filter) to short side ``short_side``, upright per
    the display matrix, JPEG at ``quality`` with optimised Huffman tables (lossless)."""
    quarter_turns = round((frame.rotation or 0) / 90) % 4
    w, h = display_size(frame.width, frame.height, sar, short_side)
    image = frame.reformat(width=w, height=h, format="rgb24", interpolation="AREA").to_image()
    if quarter_turns:
        image = image.transpose(_ROTATE[quarter_turns])
    return jpeg_bytes(image, quality)
