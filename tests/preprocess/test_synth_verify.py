"""The synthetic corpus carries its class in picture and sound; verify catches damage;
inspect draws a sample."""

from __future__ import annotations

import csv
import json
import posixpath
import shutil
from collections import Counter

import av
import numpy as np
import pytest
from PIL import Image

from preprocess.preview import figure
from preprocess.synth import HEIGHT, SAMPLE_RATE, WIDTH, _frames, class_pattern, synth

from .conftest import cli, cli_error, load_set

CLASSES = 3


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    out = tmp_path_factory.mktemp("synth")
    synth(str(out), videos=6, seconds=3.0, classes=CLASSES, seed=7, workers=2)
    return out


def _signature(path) -> tuple[float, float, float]:
    """(hue of the most saturated pixels, dominant tone in Hz, correlation between the
    saturated area per frame and the loudness of the frame's tenth of a second)."""
    with av.open(str(path)) as c:
        frames = np.stack([f.to_ndarray(format="rgb24") for f in c.decode(video=0)])
    with av.open(str(path)) as c:
        wave = np.concatenate([f.to_ndarray().reshape(-1) for f in c.decode(audio=0)])
    hsv = np.array(Image.fromarray(frames.reshape(-1, frames.shape[2], 3)).convert("HSV"))
    saturated = (hsv[..., 1] > 150) & (hsv[..., 2] > 200)  # background is dark, distractors grey
    angle = hsv[..., 0][saturated] / 255 * 2 * np.pi
    hue = float(np.arctan2(np.sin(angle).mean(), np.cos(angle).mean()) / (2 * np.pi)) % 1.0
    spectrum = np.abs(np.fft.rfft(wave))
    tone = float(np.argmax(spectrum[50:]) + 50) * SAMPLE_RATE / len(wave)
    area = saturated.reshape(len(frames), -1).sum(axis=1)
    loud = [
        np.abs(wave[i * SAMPLE_RATE // 10 : (i + 1) * SAMPLE_RATE // 10]).mean()
        for i in range(len(frames))
    ]
    return hue, tone, float(np.corrcoef(area, loud)[0, 1])


def test_synth_writes_labelled_decodable_videos(corpus):
    with open(corpus / "labels.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert [r["label"] for r in rows] == [f"class{i % CLASSES:02d}" for i in range(6)]
    for row in rows:
        with av.open(str(corpus / row["path"])) as c:
            v, a = c.streams.video[0], c.streams.audio[0]
            assert (v.codec_context.name, v.width, v.height) == ("h264", 320, 240)
            assert (a.codec_context.name, a.sample_rate) == ("aac", SAMPLE_RATE)
            assert sum(1 for _ in c.decode(v)) == 30


def test_synth_is_a_function_of_the_seed_alone(corpus, tmp_path):
    """The same seed gives byte-identical videos however they are spread over the workers (the
    encoder once gave a video different bytes after others in the same process, so a test
    corpus — and the loss curve pinned on it — changed from run to run)."""
    synth(str(tmp_path / "one"), videos=6, seconds=3.0, classes=CLASSES, seed=7, workers=1)
    for name in sorted(p.name for p in corpus.glob("*.mp4")):
        assert (tmp_path / "one" / name).read_bytes() == (corpus / name).read_bytes(), name


def _shares(scale: float) -> np.ndarray:
    """The sounding shape's share of the frame, 30 frames of each shape (circle, square, diamond)."""
    shares = []
    for k in range(3):
        rng, extra = np.random.default_rng((5, k)), np.random.default_rng((5, k, 1))
        shares += [
            m.mean() for _, m in _frames(rng, [(class_pattern(k, 3), 0.0)], extra, 30, scale)
        ]
    return np.array(shares)


def test_object_scale_multiplies_every_radius():
    """Same paths, radius (18 silent, 32 beeping) × scale: the area grows 2.5² = 6.25 times where
    no border clips the shape; the full shapes bound the shares (circle πr², square 4r², diamond
    2·(1.3r)²: 5.3 % of the 320×240 frame at scale 1, 33.3 % at 2.5)."""
    one, big = _shares(1.0), _shares(2.5)
    assert one.max() <= 4 * 32**2 / (WIDTH * HEIGHT) and big.max() <= 4 * 80**2 / (WIDTH * HEIGHT)
    ratio = big / one
    assert ratio.max() == pytest.approx(6.25, rel=0.05) and ratio.min() > 2  # pixel grid
    assert np.median(big) > 0.08 > one.max()


def test_class_is_visible_audible_and_synchronous(corpus):
    with open(corpus / "labels.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    for row in rows:
        k = int(row["label"][-2:])
        hue, tone, sync = _signature(corpus / row["path"])
        hues = [class_pattern(j, CLASSES)["hue"] for j in range(CLASSES)]
        tones = [class_pattern(j, CLASSES)["tone_hz"] for j in range(CLASSES)]
        assert int(np.argmin([min(abs(hue - h), 1 - abs(hue - h)) for h in hues])) == k, row
        assert int(np.argmin([abs(np.log(tone / t)) for t in tones])) == k, (row, tone)
        assert sync > 0.5, (row, sync)  # the shape grows while the tone sounds


@pytest.mark.slow
@pytest.mark.multiproc
def test_labels_flow_into_the_shards(corpus, tmp_path):
    cli("shards", "build", corpus / "labels.csv", "--out", tmp_path / "set", "--workers", "2")
    manifest, errors, samples = load_set(tmp_path / "set")
    assert not errors and manifest["labels"] == [f"class{k:02d}" for k in range(CLASSES)]
    assert sorted(json.loads(s["json"])["label_index"] for s in samples.values()) == [
        0,
        0,
        1,
        1,
        2,
        2,
    ]


@pytest.mark.slow
def test_verify_reports_damage_and_inspect_draws(media_build, tmp_path, capsys):
    damaged = tmp_path / "damaged"
    shutil.copytree(media_build, damaged)
    shard = damaged / "shard-000001.tar"
    data = bytearray(shard.read_bytes())
    data[len(data) // 2] ^= 0xFF
    shard.write_bytes(bytes(data))
    errors = (damaged / "errors.jsonl").read_text().splitlines()
    (damaged / "errors.jsonl").write_text("\n".join(errors[1:]) + "\n")
    cli("shards", "verify", damaged, expect=2)
    report = capsys.readouterr().out
    assert "shard-000001.tar: sha256" in report and "errors.jsonl" in report
    assert "shard-000000.tar" not in report

    manifest, _, samples = load_set(media_build)
    key = next(k for k, s in samples.items() if json.loads(s["json"])["n_frames"] == 10)
    cli("shards", "inspect", media_build, "--sample", key, "--png", tmp_path / "s.png")
    assert key in capsys.readouterr().out
    assert Image.open(tmp_path / "s.png").size == (1000, 600)
    assert "no sample with key 'nope'" in cli_error(
        capsys, "shards", "inspect", media_build, "--sample", "nope"
    )


@pytest.mark.slow
def test_inspect_finds_inputs_by_file_name_and_suggests_keys(media_build, capsys):
    _, _, samples = load_set(media_build)
    clips = Counter(json.loads(s["json"])["source_id"] for s in samples.values())
    source_id = clips.most_common(1)[0][0]
    assert clips[source_id] > 1
    source = next(
        json.loads(s["json"])["source"]
        for s in samples.values()
        if json.loads(s["json"])["source_id"] == source_id
    )
    for name in (posixpath.basename(source), source, source_id):
        cli("shards", "inspect", media_build, "--sample", name)
        assert f"sample {source_id}_0: " in capsys.readouterr().out  # its first clip
    typo = posixpath.basename(source)[:-1]
    line = cli_error(capsys, "shards", "inspect", media_build, "--sample", typo)
    assert (
        f"no sample with key {typo!r}" in line and f"closest: {posixpath.basename(source)}" in line
    )


@pytest.mark.slow
def test_inspect_figure_has_title_time_and_mel_axes_and_colour_bar(media_build):
    manifest, _, samples = load_set(media_build)
    key, sample = next(
        (k, s) for k, s in samples.items() if json.loads(s["json"])["n_frames"] == 10
    )
    info = json.loads(sample["json"])
    fig = figure((key, list(sample.items())), manifest["preset"]["audio"])
    frames_ax, spec_ax, bar_ax = fig.axes
    assert fig.get_suptitle().startswith(f"{key}: {posixpath.basename(info['source'])}")
    assert [t.get_text() for t in frames_ax.get_xticklabels()] == [
        f"{t:.1f}" for t in info["frame_times"]
    ]
    assert (spec_ax.get_xlabel(), spec_ax.get_ylabel(), bar_ax.get_ylabel()) == (
        "time (s)",
        "mel bin",
        "log10 mel power",
    )
    assert spec_ax.get_xlim() == pytest.approx((0, info["clip_seconds"]), abs=0.05)
    assert spec_ax.get_ylim() == (0, manifest["preset"]["audio"]["n_mels"])
