"""The acceptance build of ../shared/media (typical + broken) against MANIFEST.tsv."""

from __future__ import annotations

import io
import os
from collections import Counter

import av
import numpy as np
import pytest
import torch
import torchaudio
from PIL import Image

from avbase.features import FRONTENDS, ImageSpec
from pipeline.config import DataConfig
from pipeline.data.loader import build_loader
from preprocess.decode import MediaFile, decode_audio

from .conftest import MEDIA, avfusion, load_set, media_rows, mel, meta

pytestmark = [pytest.mark.slow, pytest.mark.multiproc]

# MANIFEST.tsv reason → (our stage, words our message must contain)
REASONS = {
    "fail: audio-video overlap shorter than 2 s": ("overlap", "shorter than 2 s"),
    "fail: no video stream": ("streams", "no video stream"),
    "fail: no audio stream": ("streams", "no audio stream"),
    "fail: cannot open (InvalidDataError)": ("open", "InvalidDataError"),
    "fail: empty file": ("open", "empty file"),
}


def _rel(source: str) -> str:
    return os.path.relpath(os.path.realpath(source), os.path.realpath(MEDIA))


def test_outcome_of_every_file_agrees_with_manifest_tsv(media_build):
    manifest, errors, samples = load_set(media_build)
    made = Counter(_rel(meta(s)["source"]) for s in samples.values())
    failed = Counter(_rel(e["source"]) for e in errors)
    rows = media_rows()
    assert set(made) | set(failed) == {r["path"] for r in rows}
    for row in rows:
        path, expected = row["path"], row["expected"]
        if expected == "ok":
            assert failed[path] == 0, path
            assert abs(made[path] - int(row["expected_samples"])) <= 1, path
        elif expected.startswith("fail:"):
            assert (made[path], failed[path]) == (0, 1), path
            stage, words = REASONS[expected]
            error = next(e for e in errors if _rel(e["source"]) == path)
            assert error["stage"] == stage and words in error["error"], (path, error)
        else:  # any: kept (reported as samples) or rejected (one error line)
            assert (made[path] > 0) != (failed[path] == 1), path
    assert manifest["num_samples"] == len(samples) == sum(made.values())
    assert manifest["num_failed"] == len(errors) == sum(failed.values())


def test_verify_passes_and_the_loader_reads_every_sample(media_build):
    proc = avfusion("shards", "verify", media_build)
    assert proc.stdout.strip().endswith("0 problems")
    manifest, _, samples = load_set(media_build)
    loader = build_loader(
        DataConfig(shards=str(media_build), batch_size=1, workers=1),
        audio=FRONTENDS["deepavfusion"],
        image=ImageSpec(),
        rank=0,
        world_size=1,
        seed=0,
        train=False,
    )
    loader.set_epoch(0)
    keys = [k for batch in loader for k in batch["key"]]
    assert sorted(keys) == sorted(samples) and len(keys) == manifest["num_samples"]


def _reference_logmel(path: str, clip_start: float, seconds: float) -> np.ndarray:
    """Independent computation with the REFERENCE.md §6.2 numbers on the same decoded audio."""
    audio = decode_audio(MediaFile(path))
    wave = torchaudio.functional.resample(torch.from_numpy(audio.wave), audio.rate, 16000)
    i0 = round((clip_start - audio.start) * 16000)
    clip = wave[i0 : i0 + round(seconds * 16000)]
    spec = torchaudio.transforms.MelSpectrogram(
        16000, n_fft=800, hop_length=250, n_mels=128, f_min=0.0, f_max=8000.0, mel_scale="htk"
    )(clip)
    return torch.log10(spec + 1e-7).numpy()


def test_mel_equals_independent_torchaudio_computation(media_build):
    _, _, samples = load_set(media_build)
    for key, sample in samples.items():
        m = meta(sample)
        stored = mel(sample)
        ref = _reference_logmel(m["source"], m["clip_start"], m["clip_seconds"])
        assert stored.dtype == np.float16 and stored.shape == ref.shape == (
            128,
            1 + round(m["clip_seconds"] * 16000) // 250,
        ), key
        np.testing.assert_allclose(
            stored.astype(np.float32), ref, atol=4e-3, rtol=1e-3, err_msg=key
        )


def test_decoded_audio_is_the_channel_mean_of_the_stream():
    path = MEDIA / "typical" / "moviepy_chaplin.mp4"  # stereo MP3, contiguous
    with av.open(str(path)) as c:
        planes = [f.to_ndarray() for f in c.decode(audio=0)]  # fltp: [channels, n]
    expected = np.concatenate(planes, axis=1).mean(axis=0)
    audio = decode_audio(MediaFile(str(path)))
    assert audio.rate == 44100 and audio.start == 0.0
    np.testing.assert_allclose(audio.wave, expected, atol=1e-7)


def test_frames_inside_clip_at_the_right_size_and_time(media_build):
    _, _, samples = load_set(media_build)
    for key, sample in samples.items():
        m = meta(sample)
        times = m["frame_times"]
        assert len(times) == m["n_frames"] >= 1, key
        assert all(0 <= t < m["clip_seconds"] for t in times), key
        assert times == sorted(times), key
        # one frame per second at the second's centre: the decoded frame nearest to it
        assert all(abs(t - (i + 0.5)) < 0.5 for i, t in enumerate(times)), (key, times)
        for i in range(m["n_frames"]):
            image = Image.open(io.BytesIO(sample[f"f{i:02d}.jpg"]))
            assert image.format == "JPEG" and min(image.size) == 256, key


def _frame_times(path: str) -> np.ndarray:
    """Times of all decoded video frames (as the builder sees them), sorted."""
    with av.open(path) as c:
        stream = c.streams.video[0]
        stream.thread_type = "AUTO"
        return np.sort(np.array([f.time for f in c.decode(stream)], dtype=np.float64))


def test_each_frame_is_the_one_nearest_its_target_inside_the_clip(media_build):
    """So a stored time is within half a source frame interval of its target."""
    _, _, samples = load_set(media_build)
    by_source: dict[str, list[dict]] = {}
    for sample in samples.values():
        by_source.setdefault(meta(sample)["source"], []).append(meta(sample))
    for source, metas in by_source.items():
        decoded = _frame_times(source)
        for m in metas:
            lo, hi = m["clip_start"], m["clip_start"] + m["clip_seconds"]
            inside = decoded[(decoded >= lo - 1e-6) & (decoded < hi)] - lo
            for i, t in enumerate(m["frame_times"]):
                nearest = np.abs(inside - (i + 0.5)).min()
                assert abs(t - (i + 0.5)) <= nearest + 2e-3, (source, m["clip_index"], i, t)


def test_stored_frame_is_the_decoded_frame_at_its_time(media_build):
    _, _, samples = load_set(media_build)
    path = str(MEDIA / "typical" / "bbb_h264_aac16k_mono_426x240.mp4")
    clips = [s for s in samples.values() if _rel(meta(s)["source"]) == _rel(path)]
    assert len(clips) == 3
    with av.open(path) as c:
        decoded = {round(f.time, 3): f.to_image() for f in c.decode(video=0)}
    for sample in clips:
        m = meta(sample)
        for i, t in enumerate(m["frame_times"]):
            want = decoded[round(m["clip_start"] + t, 3)].resize((455, 256), Image.BILINEAR)
            got = Image.open(io.BytesIO(sample[f"f{i:02d}.jpg"])).convert("RGB")
            assert got.size == want.size
            diff = np.abs(np.asarray(got, np.float32) - np.asarray(want, np.float32)).mean()
            assert diff < 6.0, (m["clip_index"], i, diff)
