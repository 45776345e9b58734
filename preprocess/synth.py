"""``avfusion synth``: a synthetic labelled corpus whose picture and sound correspond.

Class k is a shape of a class-specific hue and form that moves across a textured background
and *pulses* (grows) exactly while a class-specific tone beeps at a class-specific rhythm.
Distractors: two grey shapes on random paths, a quiet tone at a random pitch, white noise,
random background, start phase and position. Picture alone, sound alone and their timing
all carry the class, so masked pre-training has something to learn and a probe beats chance.
Output: ``NNNNN.mp4`` (H.264 320x240 @ 10 fps + AAC 22.05 kHz mono) and ``labels.csv``.

Ground truth for the dense tasks (``masks=True``), in the AVSBench layout: a per-video folder
``NNNNN/`` with one mask per second, ``NNNNN_<s+1>.png`` (8-bit, 255 = a sounding shape, the
distractors excluded) of the frame at ``s + 0.5`` s — the time the shard builder takes its
frames at the default frame rate — and ``NNNNN/source.wav``, the clean sounding-object track
(the class tones alone, no distractor tone or noise); ``labels.csv`` gains a ``masks`` column.
``two_sources=True`` puts a second sounding object (another class, its own shape, tone and
rhythm) into every clip; the label is then ``"a;b"`` (sorted class names). ``object_scale``
multiplies every shape's radius (1: the sounding shape covers 1–4 % of the frame, 2.5: 8–27 %,
the size of VGG-SS / Flickr-SoundNet boxes, which the localization metrics assume).
"""

from __future__ import annotations

import colorsys
import io
import os
import wave as wavfile
from concurrent.futures import ProcessPoolExecutor
from multiprocessing import get_context

import av
import numpy as np
from PIL import Image

from avbase.progress import progress

WIDTH, HEIGHT, FPS = 320, 240, 10
SAMPLE_RATE = 22050
AUDIO_FRAME = 1024  # AAC frame size


def class_name(k: int) -> str:
    return f"class{k:02d}"


def class_pattern(k: int, classes: int) -> dict:
    """The class's visual and sound signature."""
    return {
        "hue": k / classes,
        "shape": k % 3,  # circle, square, diamond
        "tone_hz": 300.0 * 2 ** (2.5 * k / max(classes - 1, 1)),
        "beeps_per_s": 1.0 + (k % 3) * 0.75,
    }


def synth(
    out: str,
    videos: int,
    seconds: float,
    classes: int,
    seed: int,
    workers: int,
    masks: bool = False,
    two_sources: bool = False,
    object_scale: float = 1.0,
) -> None:
    """Write ``videos`` clips (class = index mod ``classes``) and ``labels.csv`` (written last)."""
    if two_sources and classes < 2:
        raise ValueError("two sounding objects need at least 2 classes")
    os.makedirs(out, exist_ok=True)
    jobs = [
        (
            os.path.join(out, f"{i:05d}.mp4"),
            _sounding_classes(i, classes, seed, two_sources),
            classes,
            seconds,
            (seed, i),
            masks,
            object_scale,
        )
        for i in range(videos)
    ]
    # NOTE: every video is encoded by a fresh process (the forkserver has the module loaded):
    # libx264 through PyAV gave a video encoded after others in the same process different
    # (valid) bytes than the same video encoded first, so a corpus depended on how the videos
    # were spread over the workers; one process per video makes it a function of the seed alone.
    ctx = get_context("forkserver")
    ctx.set_forkserver_preload([__name__])
    with ProcessPoolExecutor(workers, mp_context=ctx, max_tasks_per_child=1) as pool:
        for _ in progress(pool.map(_write_video, jobs), total=videos, unit="videos", desc="synth"):
            pass
    rows = "".join(
        f"{os.path.basename(j[0])},{';'.join(sorted(map(class_name, j[1])))}"
        f"{',' + mask_dir(j[0]) if masks else ''}\n"
        for j in jobs
    )
    header = "path,label,masks\n" if masks else "path,label\n"
    _atomic_write(os.path.join(out, "labels.csv"), (header + rows).encode())


def mask_dir(video: str) -> str:
    """The per-video ground-truth folder (relative to the corpus): ``NNNNN`` for ``NNNNN.mp4``."""
    return os.path.basename(video).rsplit(".", 1)[0]


def _sounding_classes(i: int, classes: int, seed: int, two_sources: bool) -> tuple[int, ...]:
    """Class ``i mod classes``, plus a different random one with ``two_sources``."""
    k = i % classes
    if not two_sources:
        return (k,)
    other = (k + 1 + int(np.random.default_rng((seed, i, 1)).integers(classes - 1))) % classes
    return k, other


def _write_video(job: tuple) -> None:
    path, ks, classes, seconds, seed, masks, scale = job
    rng = np.random.default_rng(seed)
    pattern = class_pattern(ks[0], classes)
    phase = rng.uniform(0, 1)
    # NOTE: the second object draws from its own stream, so one-object clips stay byte-identical.
    extra = np.random.default_rng((*seed, 1))
    sources = [(pattern, phase)] + [
        (class_pattern(k, classes), extra.uniform(0, 1)) for k in ks[1:]
    ]
    truth = []
    buf = io.BytesIO()
    with av.open(buf, "w", format="mp4") as container:
        video = container.add_stream(
            "libx264", rate=FPS, options={"preset": "veryfast", "crf": "26", "threads": "1"}
        )
        video.width, video.height, video.pix_fmt = WIDTH, HEIGHT, "yuv420p"
        audio = container.add_stream("aac", rate=SAMPLE_RATE, layout="mono")
        for i, (rgb, mask) in enumerate(_frames(rng, sources, extra, round(seconds * FPS), scale)):
            if i % FPS == FPS // 2:  # the frame at s + 0.5 s
                truth.append(mask)
            frame = av.VideoFrame.from_ndarray(rgb, format="rgb24")
            frame.pts = i
            container.mux(video.encode(frame))
        wave, clean = _sound(rng, sources, seconds)
        for i in range(0, len(wave), AUDIO_FRAME):
            chunk = wave[i : i + AUDIO_FRAME]
            frame = av.AudioFrame.from_ndarray(chunk[None], format="flt", layout="mono")
            frame.sample_rate, frame.pts = SAMPLE_RATE, i
            container.mux(audio.encode(frame))
        container.mux(video.encode())
        container.mux(audio.encode())
    if masks:
        _write_truth(os.path.join(os.path.dirname(path), mask_dir(path)), truth, clean)
    _atomic_write(path, buf.getvalue())


def _write_truth(folder: str, truth: list[np.ndarray], clean: np.ndarray) -> None:
    """``folder/<name>_<s+1>.png`` per second and ``folder/source.wav`` (16-bit PCM)."""
    os.makedirs(folder, exist_ok=True)
    name = os.path.basename(folder)
    for s, mask in enumerate(truth):
        buf = io.BytesIO()
        Image.fromarray(mask.astype(np.uint8) * 255, mode="L").save(buf, format="PNG")
        _atomic_write(os.path.join(folder, f"{name}_{s + 1}.png"), buf.getvalue())
    buf = io.BytesIO()
    with wavfile.open(buf, "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(SAMPLE_RATE)
        w.writeframes((np.clip(clean, -1, 1) * 32767).round().astype("<i2").tobytes())
    _atomic_write(os.path.join(folder, "source.wav"), buf.getvalue())


def _beeping(t: np.ndarray, pattern: dict, phase: float) -> np.ndarray:
    """1 while the class tone sounds (first 40 % of every beat), else 0."""
    return ((t * pattern["beeps_per_s"] + phase) % 1.0 < 0.4).astype(np.float32)


def _sound(
    rng: np.random.Generator, sources: list[tuple[dict, float]], seconds: float
) -> tuple[np.ndarray, np.ndarray]:
    """(the clip's sound, its clean sounding-object track): float32 ``[samples]`` each."""
    t = np.arange(round(seconds * SAMPLE_RATE)) / SAMPLE_RATE
    tone = sum(
        0.4 * np.sin(2 * np.pi * p["tone_hz"] * t) * _beeping(t, p, phase) for p, phase in sources
    )
    distractor = 0.08 * np.sin(2 * np.pi * rng.uniform(150, 3000) * t + rng.uniform(0, 6.3))
    noise = rng.uniform(0.01, 0.05) * rng.standard_normal(len(t))
    return (
        np.clip(tone + distractor + noise, -1, 1).astype(np.float32),
        np.clip(tone, -1, 1).astype(np.float32),
    )


def _frames(
    rng: np.random.Generator,
    sources: list[tuple[dict, float]],
    extra: np.random.Generator,
    n: int,
    scale: float,
):
    """(``[H, W, 3]`` uint8 frame, ``[H, W]`` bool sounding-object mask): background, 2 grey
    distractors, then the pulsing class shape(s) on top; every radius × ``scale``."""
    coarse = rng.uniform(20, 110, size=(HEIGHT // 40, WIDTH // 40, 3))
    background = np.kron(coarse, np.ones((40, 40, 1))).astype(np.uint8)
    paths = rng.uniform([30, 30, -40, -40], [WIDTH - 30, HEIGHT - 30, 40, 40], size=(3, 4))
    greys = rng.uniform(120, 220, size=2)
    paths = np.concatenate(
        [
            paths,
            extra.uniform(
                [30, 30, -40, -40], [WIDTH - 30, HEIGHT - 30, 40, 40], size=(len(sources) - 1, 4)
            ),
        ]
    )
    shape = sources[0][0]["shape"]
    for i in range(n):
        t = i / FPS
        frame = background.copy()
        mask = np.zeros((HEIGHT, WIDTH), dtype=bool)
        for j in range(len(paths)):
            x = _bounce(paths[j, 0] + paths[j, 2] * t, WIDTH)
            y = _bounce(paths[j, 1] + paths[j, 3] * t, HEIGHT)
            if j < 2:
                _draw(frame, x, y, 14 * scale, (shape + j + 1) % 3, greys[j])
            else:
                pattern, phase = sources[j - 2]
                colour = np.array(colorsys.hsv_to_rgb(pattern["hue"], 0.9, 1.0)) * 255
                radius = (18 + 14 * float(_beeping(np.array(t), pattern, phase))) * scale
                _draw(frame, x, y, radius, pattern["shape"], colour, mask)
        yield frame, mask


def _draw(
    frame: np.ndarray,
    x: float,
    y: float,
    r: float,
    shape: int,
    colour,
    mask: np.ndarray | None = None,
) -> None:
    """Fill a circle / square / diamond of radius ``r`` centred at (x, y), clipped to the frame
    (and mark it in ``mask`` when given)."""
    x0, x1 = max(0, int(x - 1.3 * r)), min(WIDTH, int(x + 1.3 * r) + 1)
    y0, y1 = max(0, int(y - 1.3 * r)), min(HEIGHT, int(y + 1.3 * r) + 1)
    dy, dx = np.mgrid[y0:y1, x0:x1].astype(np.float32)
    dx, dy = dx - x, dy - y
    if shape == 0:
        inside = dx * dx + dy * dy < r * r
    elif shape == 1:
        inside = np.maximum(np.abs(dx), np.abs(dy)) < r
    else:
        inside = np.abs(dx) + np.abs(dy) < 1.3 * r
    frame[y0:y1, x0:x1][inside] = colour
    if mask is not None:
        mask[y0:y1, x0:x1] |= inside


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
