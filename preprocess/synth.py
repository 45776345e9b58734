"""``avfusion synth``: a synthetic labelled corpus whose picture and sound correspond.

Class k is a shape of a class-specific hue and form that moves across a textured background
and *pulses* (grows) exactly while a class-specific tone beeps at a class-specific rhythm.
Distractors: two grey shapes on random paths, a quiet tone at a random pitch, white noise,
random background, start phase and position. Picture alone, sound alone and their timing
all carry the class, so masked pre-training has something to learn and a probe beats chance.
Output: ``NNNNN.mp4`` (H.264 320x240 @ 10 fps + AAC 22.05 kHz mono) and ``labels.csv``.
"""
from __future__ import annotations

import colorsys
import io
import os
from concurrent.futures import ProcessPoolExecutor
from multiprocessing import get_context

import av
import numpy as np

from preprocess.progress import progress

WIDTH, HEIGHT, FPS = 320, 240, 10
SAMPLE_RATE = 22050
AUDIO_FRAME = 1024                       # AAC frame size


def class_name(k: int) -> str:
    return f"class{k:02d}"


def class_pattern(k: int, classes: int) -> dict:
    """The class's visual and sound signature."""
    return {"hue": k / classes, "shape": k % 3,                   # circle, square, diamond
            "tone_hz": 300.0 * 2 ** (2.5 * k / max(classes - 1, 1)),
            "beeps_per_s": 1.0 + (k % 3) * 0.75}


def synth(out: str, videos: int, seconds: float, classes: int, seed: int, workers: int) -> None:
    """Write ``videos`` clips (class = index mod ``classes``) and ``labels.csv`` (written last)."""
    os.makedirs(out, exist_ok=True)
    jobs = [(os.path.join(out, f"{i:05d}.mp4"), i % classes, classes, seconds, (seed, i))
            for i in range(videos)]
    with ProcessPoolExecutor(workers, mp_context=get_context("forkserver")) as pool:
        for _ in progress(pool.map(_write_video, jobs), total=videos, unit="videos", desc="synth"):
            pass
    rows = "".join(f"{os.path.basename(j[0])},{class_name(j[1])}\n" for j in jobs)
    _atomic_write(os.path.join(out, "labels.csv"), ("path,label\n" + rows).encode())


def _write_video(job: tuple) -> None:
    path, k, classes, seconds, seed = job
    rng = np.random.default_rng(seed)
    pattern = class_pattern(k, classes)
    phase = rng.uniform(0, 1)
    buf = io.BytesIO()
    with av.open(buf, "w", format="mp4") as container:
        video = container.add_stream("libx264", rate=FPS, options={"preset": "veryfast", "crf": "26"})
        video.width, video.height, video.pix_fmt = WIDTH, HEIGHT, "yuv420p"
        video.codec_context.thread_count = 1
        audio = container.add_stream("aac", rate=SAMPLE_RATE, layout="mono")
        for i, rgb in enumerate(_frames(rng, pattern, phase, round(seconds * FPS))):
            frame = av.VideoFrame.from_ndarray(rgb, format="rgb24")
            frame.pts = i
            container.mux(video.encode(frame))
        wave = _sound(rng, pattern, phase, seconds)
        for i in range(0, len(wave), AUDIO_FRAME):
            chunk = wave[i:i + AUDIO_FRAME]
            frame = av.AudioFrame.from_ndarray(chunk[None], format="flt", layout="mono")
            frame.sample_rate, frame.pts = SAMPLE_RATE, i
            container.mux(audio.encode(frame))
        container.mux(video.encode())
        container.mux(audio.encode())
    _atomic_write(path, buf.getvalue())


def _beeping(t: np.ndarray, pattern: dict, phase: float) -> np.ndarray:
    """1 while the class tone sounds (first 40 % of every beat), else 0."""
    return ((t * pattern["beeps_per_s"] + phase) % 1.0 < 0.4).astype(np.float32)


def _sound(rng: np.random.Generator, pattern: dict, phase: float, seconds: float) -> np.ndarray:
    t = np.arange(round(seconds * SAMPLE_RATE)) / SAMPLE_RATE
    tone = 0.4 * np.sin(2 * np.pi * pattern["tone_hz"] * t) * _beeping(t, pattern, phase)
    distractor = 0.08 * np.sin(2 * np.pi * rng.uniform(150, 3000) * t + rng.uniform(0, 6.3))
    noise = rng.uniform(0.01, 0.05) * rng.standard_normal(len(t))
    return np.clip(tone + distractor + noise, -1, 1).astype(np.float32)


def _frames(rng: np.random.Generator, pattern: dict, phase: float, n: int):
    """``[H, W, 3]`` uint8 frames: background, 2 grey distractors, the pulsing class shape."""
    coarse = rng.uniform(20, 110, size=(HEIGHT // 40, WIDTH // 40, 3))
    background = np.kron(coarse, np.ones((40, 40, 1))).astype(np.uint8)
    colour = np.array(colorsys.hsv_to_rgb(pattern["hue"], 0.9, 1.0)) * 255
    paths = rng.uniform([30, 30, -40, -40], [WIDTH - 30, HEIGHT - 30, 40, 40], size=(3, 4))
    greys = rng.uniform(120, 220, size=2)
    for i in range(n):
        t = i / FPS
        frame = background.copy()
        for j in range(3):
            x = _bounce(paths[j, 0] + paths[j, 2] * t, WIDTH)
            y = _bounce(paths[j, 1] + paths[j, 3] * t, HEIGHT)
            if j < 2:
                _draw(frame, x, y, 14, (pattern["shape"] + j + 1) % 3, greys[j])
            else:
                radius = 18 + 14 * float(_beeping(np.array(t), pattern, phase))
                _draw(frame, x, y, radius, pattern["shape"], colour)
        yield frame


def _draw(frame: np.ndarray, x: float, y: float, r: float, shape: int, colour) -> None:
    """Fill a circle / square / diamond of radius ``r`` centred at (x, y), clipped to the frame."""
    x0, x1 = max(0, int(x - 1.3 * r)), min(WIDTH, int(x + 1.3 * r) + 1)
    y0, y1 = max(0, int(y - 1.3 * r)), min(HEIGHT, int(y + 1.3 * r) + 1)
    dy, dx = np.mgrid[y0:y1, x0:x1].astype(np.float32)
    dx, dy = dx - x, dy - y
    if shape == 0:
        mask = dx * dx + dy * dy < r * r
    elif shape == 1:
        mask = np.maximum(np.abs(dx), np.abs(dy)) < r
    else:
        mask = np.abs(dx) + np.abs(dy) < 1.3 * r
    frame[y0:y1, x0:x1][mask] = colour


def _bounce(p: float, size: float) -> float:
    """Position reflected into [20, size - 20] (shapes bounce off the borders)."""
    span = size - 40
    q = (p - 20) % (2 * span)
    return 20 + (q if q < span else 2 * span - q)


def _atomic_write(path: str, data: bytes) -> None:
    tmp = f"{path}.tmp-{os.getpid()}"
    with open(tmp, "wb") as f:
        f.write(data)
    os.replace(tmp, path)
