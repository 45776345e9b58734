"""Augmentation facts (REFERENCE.md §6) checked against the reference procedures themselves."""

from __future__ import annotations

import json
import math
import random

import numpy as np
import pytest
import torch
import torchaudio
from torchvision import transforms as T
from torchvision.transforms import v2
from torchvision.transforms.v2 import functional as TF

from avbase.features import FRONTENDS, ImageSpec
from pipeline.data.augment import Augment, SampleError, crop_params, pad_frames, random_vol
from pipeline.data.jpeg import decode, decode_crops, jpeg_size, resize_uint8
from tests.support.media import kaldi_fbank
from tests.support.shardsets import make_sample, sample_mel

DAF, AMAE = FRONTENDS["deepavfusion"], FRONTENDS["audiomae"]


def melspec_log(wave: torch.Tensor) -> torch.Tensor:
    """The reference's §6.2 steps 3-4 (torchaudio MelSpectrogram, log10(S + 1e-7)), [128, T]."""
    mel = torchaudio.transforms.MelSpectrogram(
        sample_rate=16000,
        n_fft=800,
        win_length=800,
        hop_length=250,
        n_mels=128,
        f_min=0.0,
        f_max=8000.0,
        mel_scale="htk",
        power=2.0,
    ).double()(wave.double())
    return torch.log10(mel + DAF.log_offset)


def test_random_vol_in_log_mel_equals_gain_before_the_transform():
    gen = torch.Generator().manual_seed(0)
    wave = 0.1 * torch.randn(48000, generator=gen)
    wave[20000:26000] = 0.0  # digital silence: values at the floor
    for gain in (-6.0, -2.5, 3.0, 6.0):
        expected = melspec_log(wave * 10 ** (gain / 20)).float()
        got = random_vol(melspec_log(wave).float(), gain, DAF)
        assert torch.allclose(got, expected, atol=2e-4), gain
        # a plain shift by g/10 is not exact near the -7 floor
        assert (melspec_log(wave).float() + gain / 10 - expected).abs().max() > 0.1


def test_random_vol_kaldi_fbank():
    wave = 0.1 * torch.randn(32000, generator=torch.Generator().manual_seed(1))
    for gain in (-6.0, 4.0):
        expected = kaldi_fbank(wave * 10 ** (gain / 20))
        assert torch.allclose(random_vol(kaldi_fbank(wave), gain, AMAE), expected, atol=1e-3)


def test_short_clip_padding_matches_appending_the_reversed_waveform():
    wave = 0.1 * torch.randn(32000, generator=torch.Generator().manual_seed(2))  # 2-s clip
    padded = wave
    while padded.numel() < 48000:  # §6.2 step 1
        padded = torch.cat([padded, padded.flip(0)])
    expected = melspec_log(padded[:48000])[:, :192]
    stored = melspec_log(wave)  # 129 frames
    got = pad_frames(stored, 192, DAF)
    assert got.shape == (128, 192) and torch.equal(got[:, :129], stored)
    keep = [t for t in range(192) if abs(t - 128) > 2]  # away from the junction
    err = (got - expected)[:, keep].abs().mean()
    repeat_edge = torch.cat([stored, stored.flip(-1)], 1)[:, :192]  # the other mirror
    assert err < 2e-3 and err < (repeat_edge - expected)[:, keep].abs().mean() / 10


def test_kaldi_padding_appends_zeros():
    x = torch.randn(128, 998)
    out = pad_frames(x, 1024, AMAE)
    assert torch.equal(out[:, :998], x) and not out[:, 998:].any()


@pytest.mark.parametrize("h,w", [(256, 455), (256, 341), (48, 72)])
def test_crop_params_follow_torchvision_distribution(h, w):
    img = torch.zeros(3, h, w)
    torch.manual_seed(0)
    ref = torch.tensor(
        [T.RandomResizedCrop.get_params(img, [0.5, 1.0], [3 / 4, 4 / 3]) for _ in range(4000)],
        dtype=torch.float64,
    )
    rng = random.Random(0)
    ours = torch.tensor(
        [crop_params(h, w, (0.5, 1.0), (3 / 4, 4 / 3), rng) for _ in range(4000)],
        dtype=torch.float64,
    )
    top, left, ch, cw = ours.T
    assert (
        (top >= 0).all() and (top + ch <= h).all() and (left >= 0).all() and (left + cw <= w).all()
    )
    area, aspect = ch * cw / (h * w), cw / ch
    assert area.min() > 0.45 and area.max() <= 1.0 and aspect.min() > 0.7 and aspect.max() < 1.43
    # same distribution as torchvision: means and spreads of (top, left, h, w) agree
    assert torch.allclose(ours.mean(0), ref.mean(0), rtol=0.03, atol=1.0)
    assert torch.allclose(ours.std(0), ref.std(0), rtol=0.06, atol=1.0)


def ks_uniform(x: np.ndarray, lo: float, hi: float) -> float:
    """Kolmogorov–Smirnov distance of the sample ``x`` from U(lo, hi)."""
    x = np.sort(x)
    cdf = np.clip((x - lo) / (hi - lo), 0.0, 1.0)
    n = len(x)
    return float(max((np.arange(1, n + 1) / n - cdf).max(), (cdf - np.arange(n) / n).max()))


def test_crop_aspect_ratio_is_log_uniform():
    # a large image and small areas: the first try always fits, so no rejection shapes the law
    rng, n = random.Random(1), 20000
    crops = np.array([crop_params(4096, 4096, (0.05, 0.1), (3 / 4, 4 / 3), rng) for _ in range(n)])
    log_ratio = np.log(crops[:, 3] / crops[:, 2])
    lo, hi = math.log(3 / 4), math.log(4 / 3)
    critical = 1.63 / math.sqrt(n)  # KS test at the 1 % level
    assert ks_uniform(log_ratio, lo, hi) < critical
    # power: aspect ratios drawn uniformly (the bug) are rejected by the same test
    uniform_ratio = np.random.default_rng(1).uniform(3 / 4, 4 / 3, n)
    assert ks_uniform(np.log(uniform_ratio), lo, hi) > 2 * critical


@pytest.mark.parametrize("h,w", [(300, 20), (20, 300)])
def test_crop_params_fallback_equals_torchvision(h, w):
    expected = T.RandomResizedCrop.get_params(torch.zeros(3, h, w), [0.5, 1.0], [3 / 4, 4 / 3])
    assert crop_params(h, w, (0.5, 1.0), (3 / 4, 4 / 3), random.Random(0)) == expected


def test_fast_resize_equals_torchvision_resized_crop():
    img = torch.randint(
        0, 256, (3, 256, 455), dtype=torch.uint8, generator=torch.Generator().manual_seed(3)
    )
    for top, left, h, w in [(0, 0, 256, 455), (10, 40, 200, 300), (100, 7, 131, 97)]:
        expected = TF.resized_crop(img, top, left, h, w, [224, 224], antialias=True)
        got = resize_uint8(img[:, top : top + h, left : left + w], 224)
        assert (got.int() - expected.int()).abs().max() <= 1


def raw_sample(i=5, clip=10.0, preset=DAF, size=256):
    s = make_sample(i, preset, clip_seconds=clip, frame_size=size, n_frames=10, labelled=True)
    return {k: bytearray(v) if isinstance(v, bytes) else v for k, v in s.items()}


def test_evaluation_is_the_centre_window_and_frame():
    aug = Augment(DAF, ImageSpec(), train=False)
    raw = raw_sample()
    image, audio, label = aug(raw, None)
    mel = torch.from_numpy(sample_mel(5, DAF.clip_frames(10.0), DAF)).float()
    assert torch.equal(audio, mel[:, 224:416])  # window 3.5-6.5 s at 64 frames/s
    assert label == 5 % 3
    centre = decode(torch.frombuffer(raw["f04.jpg"], dtype=torch.uint8))  # 4.5 s, nearest 5 s
    ref = v2.Compose([v2.Resize(256), v2.CenterCrop(224)])(centre)
    assert torch.equal(image, ref)
    img = aug.normalise(aug.collate([(image, audio, label)], shared=False)[0])
    norm = v2.Compose(
        [v2.ToDtype(torch.float32, scale=True), v2.Normalize(ImageSpec().mean, ImageSpec().std)]
    )(ref)
    assert torch.allclose(img[0], norm, atol=1e-5)


def test_training_window_and_frame_draws():
    aug = Augment(DAF, ImageSpec(size=64), train=True)
    raw = raw_sample(size=48)
    mel = torch.from_numpy(sample_mel(5, DAF.clip_frames(10.0), DAF)).float()
    starts = set()
    for seed in range(40):
        image, audio, _ = aug(raw, random.Random(seed))
        again = aug(raw, random.Random(seed))
        assert torch.equal(image, again[0]) and torch.equal(audio, again[1])
        assert image.shape == (3, 64, 64) and audio.shape == (128, 192)
        draws = random.Random(seed)  # frame, jitter, gain (augment order)
        frame_time = draws.randrange(10) + 0.5
        draws.random()
        gain = draws.uniform(-6, 6)
        undone = random_vol(audio.clone(), -gain, DAF)  # RandomVol is exactly invertible
        start = int((mel[0] - undone[0, 0]).abs().argmin())
        assert torch.allclose(undone, mel[:, start : start + 192], atol=2e-3)
        assert gain and not torch.allclose(audio, undone, atol=1e-2)
        assert start / 64 <= frame_time <= start / 64 + 3.0  # the frame lies in its window
        assert 0 <= start <= 641 - 192
        starts.add(start)
    assert len(starts) > 15


def test_audiomae_preset_layout_and_normalisation():
    aug = Augment(AMAE, ImageSpec(size=32), train=True)
    raw = raw_sample(preset=AMAE, size=48)
    items = [aug(raw, random.Random(s)) for s in range(2)]
    _, audio = aug.collate(items, shared=False)
    assert audio.shape == (2, 1, 1024, 128)  # time-major
    pad_value = (0.0 - AMAE.norm_mean) / (2 * AMAE.norm_std)
    assert torch.allclose(audio[:, :, 998:], torch.full_like(audio[:, :, 998:], pad_value))


def test_short_clip_uses_padding():
    aug = Augment(DAF, ImageSpec(size=32), train=False)
    _, audio, _ = aug(raw_sample(clip=2.0, size=48), None)
    mel = torch.from_numpy(sample_mel(5, DAF.clip_frames(2.0), DAF)).float()  # 129 frames
    assert torch.equal(audio[:, :129], mel) and torch.equal(
        audio[:, 129:192], mel[:, 65:128].flip(-1)
    )


@pytest.mark.parametrize(
    "member,data,stage",
    [
        ("json", b"{not json", "meta"),
        ("json", json.dumps({"clip_seconds": 10.0}).encode(), "meta"),
        ("mel.npy", b"\x93NUMPY garbage", "audio"),
        ("f04.jpg", b"\xff\xd8 not a jpeg", "image"),
    ],
)
def test_corrupt_members_raise_the_stage(member, data, stage):
    raw = raw_sample(size=48)
    raw[member] = bytearray(data)
    with pytest.raises(SampleError) as e:
        Augment(DAF, ImageSpec(size=32), train=False)(raw, None)
    assert e.value.stage == stage


def test_deferred_decode_draws_the_same_crops_and_gives_the_same_images():
    fe, spec = FRONTENDS["deepavfusion"], ImageSpec(size=32)
    cpu, deferred = Augment(fe, spec, train=True), Augment(fe, spec, train=True, defer_image=True)
    raws = [
        make_sample(i, fe, clip_seconds=10.0, frame_size=48, n_frames=5, labelled=True)
        for i in range(6)
    ]
    items = [cpu(raw, random.Random(i)) for i, raw in enumerate(raws)]
    handed = [deferred(raw, random.Random(i)) for i, raw in enumerate(raws)]
    for raw, (jpeg, (top, left, h, w, _)) in zip(raws, [im for im, _, _ in handed], strict=True):
        assert any(jpeg is raw[k] for k in raw if k.endswith(".jpg"))  # not decoded yet
        assert (h, w) != (48, 72) and top + h <= 48 and left + w <= 72
    images, audio = deferred.collate(handed, shared=False)
    assert set(images) == {"jpeg", "offsets", "crops"} and images["crops"].shape == (6, 5)
    assert images["crops"][:, 4].unique().numel() == 2  # both flips drawn
    expected_image, expected_audio = cpu.collate(items, shared=False)
    assert torch.equal(audio, expected_audio)
    assert torch.equal(decode_crops(images, 32, "cpu"), expected_image)  # same crop, flip


def test_jpeg_size_reads_the_frame_header():
    raw = make_sample(
        0, FRONTENDS["deepavfusion"], clip_seconds=2.0, frame_size=40, n_frames=1, labelled=False
    )
    assert jpeg_size(raw["f00.jpg"]) == tuple(
        decode(torch.frombuffer(raw["f00.jpg"], dtype=torch.uint8)).shape[1:]
    )
    with pytest.raises(ValueError, match="no SOI"):
        jpeg_size(b"\x89PNG....")
    with pytest.raises(ValueError):
        jpeg_size(raw["f00.jpg"][:20])
