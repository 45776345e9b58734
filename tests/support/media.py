"""The shared material (``$AVFUSION_SHARED``, default ``../shared``): real videos and the official
code's fixtures; and the reference feature computation the audio tests compare against."""

from __future__ import annotations

import os
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[2]
SHARED = Path(os.environ.get("AVFUSION_SHARED", REPO / ".." / "shared"))
MEDIA = SHARED / "media"
# 30 s (3 clips), 12.07 s (10 s + a 2.07-s partial clip), 11 s and 10.5 s: 7 samples of 10 s
FOUR_VIDEOS = (
    "bbb_h264_aac16k_mono_426x240.mp4",
    "bbb_mpeg4_mp3_22k_mono_480x270.avi",
    "bbb_h264_vorbis32k_512x288.mkv",
    "bbb_vp8_vorbis11k_mono_352x198_15fps.webm",
)


def kaldi_fbank(wave: torch.Tensor) -> torch.Tensor:
    """REFERENCE §6.6: Kaldi fbank ``[128, T]`` of a 16-kHz ``wave [n]`` (25-ms Hanning window,
    10-ms shift, 128 HTK mel bins from 20 Hz to Nyquist, no dither, no energy), before
    normalisation — torchaudio's, not ours."""
    import torchaudio

    return torchaudio.compliance.kaldi.fbank(
        wave[None],
        htk_compat=True,
        sample_frequency=16000,
        use_energy=False,
        window_type="hanning",
        num_mel_bins=128,
        dither=0.0,
        frame_length=25,
        frame_shift=10,
    ).T
