"""Unusable arguments, a wedged input, rotation metadata, the audiomae preset."""

from __future__ import annotations

import io
import os
import re
import subprocess

import av
import imageio_ffmpeg
import numpy as np
import pytest
import torch
from PIL import Image

from preprocess.decode import MediaFile, decode_audio
from preprocess.features import resample
from tests.support.media import kaldi_fbank

from .conftest import MEDIA, cli, cli_error, load_set, mel, meta

SMALL = MEDIA / "typical" / "ok_faststart.mp4"  # 5.28 s, 1 sample


@pytest.mark.parametrize(
    "args, words",
    [
        (["{empty}"], "no inputs found"),
        (["{missing}"], "no such file or directory"),
        (["{small}", "--preset", "wav2vec"], "unknown audio preset"),
        (["{small}", "--clip-seconds", "0"], "--clip-seconds"),
        (["{small}", "--min-clip-seconds", "20"], "--min-clip-seconds"),
        (["{small}", "--workers", "0"], "--workers"),
        (["{small}", "--frame-size", "8"], "--frame-size"),
        (["{small}", "--num-parts", "2", "--part-index", "2"], "--part-index"),
        (["{small}", "--out-is-under-a-file"], "not writable"),
    ],
)
def test_unusable_arguments_fail_with_one_line_before_any_work(tmp_path, capsys, args, words):
    (tmp_path / "empty").mkdir()
    (tmp_path / "file").write_text("x")
    out = tmp_path / "out"
    if "--out-is-under-a-file" in args:
        args, out = args[:-1], tmp_path / "file" / "out"
    subs = {"{empty}": tmp_path / "empty", "{missing}": tmp_path / "nope.mp4", "{small}": SMALL}
    argv = ["shards", "build", *[str(subs.get(a, a)) for a in args], "--out", str(out)]
    assert words in cli_error(capsys, *argv)
    assert not out.exists()


@pytest.mark.slow
@pytest.mark.multiproc
def test_wedged_input_times_out_and_the_build_goes_on(tmp_path):
    videos = tmp_path / "videos"
    videos.mkdir()
    os.mkfifo(videos / "wedged.mp4")  # open() blocks forever: a real hang
    os.symlink(SMALL, videos / "good.mp4")
    out = tmp_path / "out"
    cli("shards", "build", videos, "--out", out, "--workers", "2", "--timeout", "5")
    manifest, errors, samples = load_set(out)
    assert [(os.path.basename(e["source"]), e["stage"]) for e in errors] == [
        ("wedged.mp4", "timeout")
    ]
    assert manifest["num_samples"] == len(samples) == 1


def _rotated_video(path, rotation: int) -> None:
    """320x240 picture, red top-left quadrant, stored with a display rotation; 3 s of tone."""
    rgb = np.zeros((240, 320, 3), np.uint8)
    rgb[:120, :160] = (255, 0, 0)
    with av.open(str(path), "w") as c:
        v = c.add_stream("libx264", rate=10)
        v.width, v.height, v.pix_fmt = 320, 240, "yuv420p"
        v.set_display_rotation(rotation)
        a = c.add_stream("aac", rate=16000, layout="mono")
        for i in range(30):
            f = av.VideoFrame.from_ndarray(rgb, format="rgb24")
            f.pts = i
            c.mux(v.encode(f))
        tone = (0.3 * np.sin(np.arange(48000) / 16000 * 2 * np.pi * 440)).astype(np.float32)
        for i in range(0, 48000, 1024):
            f = av.AudioFrame.from_ndarray(tone[None, i : i + 1024], format="flt", layout="mono")
            f.sample_rate, f.pts = 16000, i
            c.mux(a.encode(f))
        c.mux(v.encode())
        c.mux(a.encode())


@pytest.mark.slow
@pytest.mark.multiproc
def test_rotated_video_is_stored_upright_like_ffmpeg_shows_it(tmp_path):
    videos = tmp_path / "videos"
    videos.mkdir()
    for r in (90, -90):
        _rotated_video(videos / f"rot{r}.mp4", r)
    cli("shards", "build", videos, "--out", tmp_path / "out", "--workers", "1")
    _, errors, samples = load_set(tmp_path / "out")
    assert not errors and len(samples) == 2
    for sample in samples.values():
        src = meta(sample)["source"]
        png = tmp_path / "ffmpeg.png"  # ffmpeg applies the display matrix
        subprocess.run(
            [
                imageio_ffmpeg.get_ffmpeg_exe(),
                "-v",
                "error",
                "-y",
                "-i",
                src,
                "-frames:v",
                "1",
                str(png),
            ],
            check=True,
        )
        want = Image.open(png).convert("RGB")
        got = Image.open(io.BytesIO(sample["f00.jpg"])).convert("RGB")
        assert got.size == (256, 341) and want.size == (240, 320)
        want = np.asarray(want.resize(got.size), np.float32)
        assert np.abs(np.asarray(got, np.float32) - want).mean() < 8, src


@pytest.mark.slow
@pytest.mark.multiproc
def test_audiomae_preset_stores_kaldi_fbank(tmp_path):
    cli(
        "shards",
        "build",
        SMALL,
        "--out",
        tmp_path / "out",
        "--preset",
        "audiomae",
        "--workers",
        "1",
    )
    manifest, _, samples = load_set(tmp_path / "out")
    assert manifest["preset"]["audio"]["name"] == "audiomae"
    (sample,) = samples.values()
    audio = decode_audio(MediaFile(str(SMALL)))
    n = round(meta(sample)["clip_seconds"] * 16000)
    wave = torch.from_numpy(resample(audio.wave, audio.rate, 16000)[:n])
    ref = kaldi_fbank(wave - wave.mean()).numpy()
    stored = mel(sample)
    assert stored.shape == ref.shape == (128, 1 + (n - 400) // 160)
    np.testing.assert_allclose(stored.astype(np.float32), ref, atol=2e-2, rtol=2e-3)


def _stamp(out) -> dict[str, bytes]:
    return {str(p.relative_to(out)): p.read_bytes() for p in sorted(out.rglob("*")) if p.is_file()}


@pytest.mark.slow
@pytest.mark.multiproc
def test_an_out_folder_with_content_is_never_clobbered(tmp_path, capsys):
    out = tmp_path / "out"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    assert re.search(
        "not empty .* --force", cli_error(capsys, "shards", "build", SMALL, "--out", out)
    )
    assert _stamp(out) == {"notes.txt": b"mine"}

    built = tmp_path / "built"
    cli("shards", "build", SMALL, "--out", built, "--workers", "1")
    (built / "shard-000007.tar").write_bytes(b"stale")  # left by an older, larger build
    for args in ((), ("--resume",)):  # a set, or one from other inputs
        before = _stamp(built)
        error = cli_error(
            capsys,
            "shards",
            "build",
            SMALL,
            MEDIA / "typical" / "moviepy_fire2.mp4",
            "--out",
            built,
            *args,
        )
        assert re.search("already holds a shard set|other inputs", error)
        assert _stamp(built) == before
    (built / "manifest.json").unlink()  # a set that lost its manifest
    assert "not empty" in cli_error(
        capsys, "shards", "build", SMALL, "--out", built, "--workers", "1"
    )
    cli("shards", "build", SMALL, "--out", built, "--workers", "1", "--force")
    assert sorted(p.name for p in built.iterdir()) == [
        "errors.jsonl",
        "manifest.json",
        "shard-000000.tar",
    ]
    cli("shards", "verify", built)
    assert "not empty" in cli_error(capsys, "shards", "merge", built, "--out", out)
    assert _stamp(out) == {"notes.txt": b"mine"}


@pytest.mark.slow
@pytest.mark.multiproc
def test_exit_status_says_whether_the_set_is_usable(tmp_path, capsys):
    broken = MEDIA / "broken" / "zero_byte.mp4"
    cli("shards", "build", broken, "--out", tmp_path / "none", "--workers", "1", expect=1)
    assert "error: no input yielded a sample" in capsys.readouterr().err
    cli("shards", "build", SMALL, broken, "--out", tmp_path / "some", "--workers", "1")
    cli(
        "shards",
        "build",
        SMALL,
        broken,
        "--out",
        tmp_path / "strict",
        "--workers",
        "1",
        "--strict",
        expect=3,
    )
    cli("shards", "build", SMALL, "--out", tmp_path / "all", "--workers", "1", "--strict")


def _write_video(path, width: int, height: int, *, sar=None, audio_gap: float = 0.0) -> None:
    """3 s of a 10-fps picture (red left half) with a 440-Hz tone; optional pixel aspect ratio
    and a silent gap of ``audio_gap`` s (missing audio frames) after the first second."""
    from fractions import Fraction

    rgb = np.zeros((height, width, 3), np.uint8)
    rgb[:, : width // 2] = (255, 0, 0)
    with av.open(str(path), "w") as c:
        v = c.add_stream("libx264", rate=10)
        v.width, v.height, v.pix_fmt = width, height, "yuv420p"
        if sar:
            v.codec_context.sample_aspect_ratio = Fraction(*sar)
        a = c.add_stream("pcm_s16le", rate=16000, layout="mono")
        for i in range(30 + round(audio_gap * 10)):
            f = av.VideoFrame.from_ndarray(rgb, format="rgb24")
            f.pts = i
            c.mux(v.encode(f))
        tone = (0.3 * np.sin(np.arange(48000) / 16000 * 2 * np.pi * 440)).astype(np.float32)
        for i in range(0, 48000, 1600):
            f = av.AudioFrame.from_ndarray(
                (tone[None, i : i + 1600] * 32767).astype(np.int16), format="s16", layout="mono"
            )
            f.sample_rate = 16000
            f.pts = i + (round(audio_gap * 16000) if i >= 16000 else 0)
            c.mux(a.encode(f))
        c.mux(v.encode())
        c.mux(a.encode())


def test_audio_gaps_over_10_ms_become_silence(tmp_path):
    for gap, silent in ((0.5, 8000), (0.005, 0)):
        path = tmp_path / f"gap{gap}.mkv"
        _write_video(path, 64, 48, audio_gap=gap)
        audio = decode_audio(MediaFile(str(path)))
        assert audio.rate == 16000 and len(audio.wave) == 48000 + silent, gap
        assert not audio.wave[16000 : 16000 + silent].any()
        assert np.abs(audio.wave[16000 + silent : 16000 + silent + 1600]).max() > 0.2


@pytest.mark.slow
@pytest.mark.multiproc
def test_pixel_aspect_ratio_is_applied(tmp_path):
    videos = tmp_path / "videos"
    videos.mkdir()
    _write_video(videos / "anamorphic.mkv", 160, 240, sar=(2, 1))  # displayed as 320x240
    cli("shards", "build", videos, "--out", tmp_path / "out", "--workers", "1")
    _, errors, samples = load_set(tmp_path / "out")
    (sample,) = samples.values()
    image = np.asarray(Image.open(io.BytesIO(sample["f00.jpg"])).convert("RGB"), np.float32)
    assert not errors and image.shape == (256, 341, 3)
    assert image[:, :165, 0].mean() > 200 and image[:, 176:, 0].mean() < 40  # red half stays half
