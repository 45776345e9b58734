"""Mix-and-separate signal path (REFERENCE.md §8): waveforms → log-mel, ratio-mask targets, and
the inverse route from a mel mask to a waveform.

Forward: STFT (n_fft 800, hop 250, Hann, centred, reflect padding: the stored features' front
end) → power → non-normalised HTK mel filterbank → log10(· + 1e-7); the model sees the first 192
of the 193 frames of a 3-s window. Inverse: mask ``[128, 192]`` → pad to 193 frames (the last
repeated) → mapped to the 401 STFT bins through the same filterbank (``fb @ mask``) → × the
mixture's complex STFT → iSTFT.
"""

from __future__ import annotations

from functools import lru_cache

import torch
import torchaudio
from torch import Tensor

from avbase.features import AudioFrontend


@lru_cache(maxsize=4)
def filterbank(fe: AudioFrontend) -> Tensor:
    """``[n_fft/2 + 1, n_mels]`` non-normalised HTK triangles."""
    return torchaudio.functional.melscale_fbanks(
        fe.n_fft // 2 + 1, fe.f_min, fe.f_max, fe.n_mels, fe.sample_rate, norm=None, mel_scale="htk"
    )


def stft(wave: Tensor, fe: AudioFrontend) -> Tensor:
    """``[B, n]`` → complex ``[B, n_fft/2 + 1, 1 + n // hop]``."""
    window = torch.hann_window(fe.win_length, device=wave.device)
    return torch.stft(
        wave,
        fe.n_fft,
        fe.hop_length,
        fe.win_length,
        window,
        center=True,
        pad_mode="reflect",
        return_complex=True,
    )


def log_mel(wave: Tensor, fe: AudioFrontend) -> Tensor:
    """``[B, n]`` → ``[B, n_mels, frames]`` log10 mel power (the stored features' transform)."""
    power = stft(wave, fe).abs().pow(2)
    return torch.log10(
        torch.einsum("bft,fm->bmt", power, filterbank(fe).to(wave.device)) + fe.log_offset
    )


def model_input(wave: Tensor, fe: AudioFrontend) -> Tensor:
    """``[B, n]`` window → the model's ``[B, 1, n_mels, window_frames]`` (last frame dropped)."""
    return log_mel(wave, fe)[:, None, :, : fe.window_frames]


def mix(a: Tensor, b: Tensor) -> Tensor:
    """The mixture of two waveforms: their exact sum."""
    return a + b


def ratio_target(source_mel: Tensor, mixture_mel: Tensor) -> tuple[Tensor, Tensor]:
    """(target, weight) of the weighted BCE from log-mels: S = 10^L,
    target clamp(S / (S + S_mix + 1e-5), 0, 1), weight clamp(log1p(S_mix), 1e-3, 10).

    NOTE: the release's formula as written (REFERENCE §8): the target is S / (S + S_mix), not
    S / S_mix, so a bin held by the source alone scores 0.5; the inverse path keeps it, and the
    BSS Eval metrics allow that gain.
    """
    s, s_mix = 10**source_mel, 10**mixture_mel
    return (s / (s + s_mix + 1e-5)).clamp(0, 1), torch.log1p(s_mix).clamp(1e-3, 10)


def mask_to_stft(mask: Tensor, fe: AudioFrontend, frames: int) -> Tensor:
    """``[B, n_mels, T]`` mel mask → ``[B, n_fft/2 + 1, frames]`` (time padded by repeating the last)."""
    if mask.shape[-1] < frames:
        mask = torch.cat(
            [mask, mask[..., -1:].expand(*mask.shape[:-1], frames - mask.shape[-1])], -1
        )
    return torch.einsum("fm,bmt->bft", filterbank(fe).to(mask.device), mask[..., :frames])


def separate(mask: Tensor, mixture: Tensor, fe: AudioFrontend) -> Tensor:
    """Mel mask ``[B, n_mels, T]`` and mixture waveform ``[B, n]`` → estimated waveform ``[B, n]``."""
    spec = stft(mixture, fe)
    est = mask_to_stft(mask, fe, spec.shape[-1]) * spec
    window = torch.hann_window(fe.win_length, device=mixture.device)
    return torch.istft(
        est, fe.n_fft, fe.hop_length, fe.win_length, window, center=True, length=mixture.shape[-1]
    )
