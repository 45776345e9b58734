"""Mix-and-separate signal path: exact mixtures, the stored features' log-mel, and the inverse
path that turns an ideal mel mask back into the source."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from avbase.features import get_frontend
from pipeline.eval.separation_audio import log_mel, mix, model_input, ratio_target, separate
from preprocess.features import log_mel as stored_log_mel

FE = get_frontend("deepavfusion")


def _tones(seconds: float = 3.0) -> tuple[torch.Tensor, torch.Tensor]:
    t = torch.arange(round(seconds * FE.sample_rate), dtype=torch.float64) / FE.sample_rate
    low = 0.3 * torch.sin(2 * math.pi * 440 * t) * (1 + 0.5 * torch.sin(2 * math.pi * 1.5 * t))
    high = 0.3 * torch.sin(2 * math.pi * 3100 * t + 1.0)
    return low.float()[None], high.float()[None]


def _snr_db(ref: torch.Tensor, est: torch.Tensor) -> float:
    return float(10 * torch.log10(ref.pow(2).sum() / (ref - est).pow(2).sum()))


def test_mixture_is_the_exact_sum_and_its_mel_comes_from_the_mixed_waveform():
    a, b = _tones()
    m = mix(a, b)
    assert torch.equal(m, a + b)
    x = model_input(m, FE)
    assert x.shape == (1, 1, 128, 192)
    # the mixture's mel is not the sum of the sources' mels (cross terms), so it must come from m
    summed = torch.log10(10 ** log_mel(a, FE) + 10 ** log_mel(b, FE))
    assert not torch.allclose(log_mel(m, FE), summed, atol=1e-3)


def test_log_mel_matches_the_stored_features():
    a, _ = _tones()
    stored = torch.from_numpy(stored_log_mel(a[0].numpy(), FE).astype(np.float32))
    assert torch.allclose(log_mel(a, FE)[0], stored, atol=2e-2)  # stored as float16


def test_ideal_mel_mask_reconstructs_the_source():
    a, b = _tones()
    m = mix(a, b)
    s_a, s_b = 10 ** log_mel(a, FE), 10 ** log_mel(b, FE)
    ideal = s_a / (s_a + s_b)  # ideal ratio mask in the mel domain
    est = separate(ideal[..., : FE.window_frames], m, FE)  # the model's 192 frames, padded back
    assert est.shape == a.shape
    assert _snr_db(a, m) < 1.0  # the mixture is no estimate of a
    assert _snr_db(a, est) > 15.0


def test_ratio_target_is_half_where_the_source_dominates_and_zero_where_it_is_absent():
    a, b = _tones()
    la, lb = log_mel(a, FE), log_mel(b, FE)
    target, weight = ratio_target(la, log_mel(mix(a, b), FE))
    assert 0 <= float(target.min()) and float(target.max()) <= 1
    assert 1e-3 <= float(weight.min()) and float(weight.max()) <= 10
    own, other = la > lb + 2, lb > la + 2  # 100× more power in the bin
    assert float(target[own].median()) == pytest.approx(0.5, abs=0.02)  # S / (S + S_mix), S_mix ≈ S
    assert float(target[other].median()) < 0.01
