"""Ground truth of the dense tasks: synth writes masks / clean tracks / two sounding objects, and
mask and waveform members round-trip through build → verify → the dense-task reader."""

from __future__ import annotations

import csv
import io
import json
import wave as wavfile
from pathlib import Path

import av
import numpy as np
import pytest
import torch
from PIL import Image

from avbase.features import get_frontend
from avbase.members import read_flac, read_mask
from pipeline.data.dense import DenseSpec
from preprocess.features import log_mel
from preprocess.synth import SAMPLE_RATE, class_pattern, synth
from tests.support.dense import dense_rows

from .conftest import cli, load_set

CLASSES = 3


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    out = tmp_path_factory.mktemp("dense-synth")
    synth(
        str(out),
        videos=3,
        seconds=3.0,
        classes=CLASSES,
        seed=11,
        workers=1,
        masks=True,
        two_sources=True,
    )
    return out


def _rows(corpus) -> list[dict]:
    with open(corpus / "labels.csv", newline="") as f:
        return list(csv.DictReader(f))


def test_masks_cover_the_sounding_shapes_only(corpus):
    for row in _rows(corpus):
        names = row["label"].split(";")
        assert len(names) == 2 and names == sorted(names) and names[0] != names[1]
        with av.open(str(corpus / row["path"])) as c:
            frames = [f.to_ndarray(format="rgb24") for f in c.decode(video=0)]
        for s in range(3):
            mask = np.array(Image.open(corpus / row["masks"] / f"{row['masks']}_{s + 1}.png")) > 127
            hsv = np.array(Image.fromarray(frames[s * 10 + 5]).convert("HSV")).astype(float)
            colourful = (hsv[..., 1] > 150) & (
                hsv[..., 2] > 200
            )  # the class shapes, not grey/background
            inside = mask[2:-2, 2:-2]  # codec blur at the very edges
            assert 0.01 < mask.mean() < 0.2
            assert colourful[2:-2, 2:-2][inside].mean() > 0.9  # the mask lies on the shapes
            assert inside[colourful[2:-2, 2:-2]].mean() > 0.9  # and covers them
            hues = hsv[..., 0][mask & colourful] / 255
            want = [class_pattern(int(n[-2:]), CLASSES)["hue"] for n in names]
            dist = np.minimum.reduce([np.minimum(abs(hues - h), 1 - abs(hues - h)) for h in want])
            assert np.median(dist) < 0.05  # both classes' colours, no other


def test_clean_track_holds_both_tones_and_nothing_else(corpus):
    row = _rows(corpus)[0]
    with wavfile.open(str(corpus / row["masks"] / "source.wav")) as w:
        assert (w.getframerate(), w.getnchannels(), w.getsampwidth()) == (SAMPLE_RATE, 1, 2)
        clean = np.frombuffer(w.readframes(w.getnframes()), "<i2") / 32767
    assert len(clean) == 3 * SAMPLE_RATE
    spectrum = np.abs(np.fft.rfft(clean)) ** 2
    freqs = np.fft.rfftfreq(len(clean), 1 / SAMPLE_RATE)
    tones = [class_pattern(int(n[-2:]), CLASSES)["tone_hz"] for n in row["label"].split(";")]
    near = np.zeros_like(freqs, dtype=bool)
    for f in tones:
        near |= abs(freqs - f) < 30
    assert spectrum[near].sum() > 0.95 * spectrum.sum()  # no noise, no distractor tone


def test_one_source_corpus_keeps_its_list_format(tmp_path):
    synth(str(tmp_path), videos=1, seconds=1.0, classes=2, seed=0, workers=1)
    assert (tmp_path / "labels.csv").read_text().splitlines() == ["path,label", "00000.mp4,class00"]
    assert not (tmp_path / "00000").exists()


def build_3s_clips(corpus: Path, out: Path, *options: str) -> Path:
    """``shards build`` of the corpus' list into 3-s clips at ``out``."""
    cli("shards", "build", corpus / "labels.csv", "--out", out, "--clip-seconds", "3", *options)
    return out


@pytest.mark.slow
def test_mask_and_waveform_members_round_trip(corpus, tmp_path):
    out = build_3s_clips(corpus, tmp_path / "set", "--keep-waveform", "--frame-size", "120")
    cli("shards", "verify", out)
    manifest, errors, samples = load_set(out)
    assert not errors and manifest["members"] == ["mask", "flac"]
    fe = get_frontend("deepavfusion")
    rows = {r["path"]: r for r in _rows(corpus)}
    for sample in samples.values():
        meta = json.loads(sample["json"])
        row = rows[meta["source"].rsplit("/", 1)[-1]]
        for i, t in enumerate(meta["frame_times"]):  # frame i at i + 0.5 s
            truth = Image.open(corpus / row["masks"] / f"{row['masks']}_{int(t) + 1}.png")
            frame_size = Image.open(io.BytesIO(sample[f"f{i:02d}.jpg"])).size
            want = np.array(truth.resize(frame_size, Image.Resampling.NEAREST)) > 127
            assert np.array_equal(read_mask(sample[f"f{i:02d}.mask.png"]), want)
        wave, rate = read_flac(sample["flac"])
        assert rate == fe.sample_rate and len(wave) == round(meta["clip_seconds"] * rate)
        stored = np.load(io.BytesIO(sample["mel.npy"])).astype(np.float32)
        assert (
            np.abs(log_mel(wave, fe).astype(np.float32) - stored).max() < 0.05
        )  # the clip's own sound

    # the loader's dense mode reads them back: every masked frame, its mask at the model's side
    rows = list(dense_rows(out, DenseSpec(masks=True, waveform=True)))
    assert len(rows) == 3 * 3
    for key, row in rows:
        raw = samples[key]
        want = torch.from_numpy(read_mask(raw[f"f{int(row['frame']):02d}.mask.png"]))[None, None]
        want = torch.nn.functional.interpolate(want, size=(64, 64), mode="nearest")[0, 0]
        assert torch.equal(row["mask"], want) and row["audio"].shape == (1, 128, 192)
        assert row["wave"].shape == (3 * fe.sample_rate,)
    assert all("mask" not in r and "wave" not in r for _, r in dense_rows(out, DenseSpec()))


@pytest.mark.slow
def test_verify_rejects_undeclared_members(corpus, tmp_path):
    out = build_3s_clips(corpus, tmp_path / "set", "--frame-size", "64")
    manifest = json.loads((out / "manifest.json").read_text())
    manifest["members"] = []
    (out / "manifest.json").write_text(json.dumps(manifest))
    cli("shards", "verify", out, expect=2)
