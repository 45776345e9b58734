"""Samples of a clip given as pictures and a sound file (build worker side).

AVSBench ships each video as its five ``visual_frames`` pictures and an ``audio_wav`` file;
the Flickr-SoundNet test (and LVS / EZ-VSL's VGG-SS test folders) as one picture
``frames/<id>.jpg`` and its sound ``audio/<id>.wav``, the picture paired with the sound's
centre. The sound is decoded and cut into clips as a video's sound is; when it is longer than
one clip, the kept span is the ``clip_seconds`` window centred on the pictures. Each picture is
stored as a frame at its time (resized and encoded as video frames are), and the clip's masks
come from its mask folder or its boxes, as for videos.
"""

from __future__ import annotations

import fsspec
from av import VideoFrame
from PIL import Image

from avbase import shardformat as fmt
from avbase.features import get_frontend
from preprocess.clips import EPS, clip_spans
from preprocess.decode import MediaError, MediaFile, decode_audio
from preprocess.features import encode_frame, log_mel, resample
from preprocess.options import SampleOptions, Task
from preprocess.samples import boxes_at, clip_sample, dense_members, within


def still_samples(task: Task, opts: SampleOptions) -> list[fmt.Sample]:
    """All samples of the clip, in clip order; ``MediaError`` when it yields none."""
    fe = get_frontend(opts.preset)
    audio = decode_audio(MediaFile(task.path), video=False)
    centre = (audio.start + audio.end) / 2
    times = [centre if t is None else audio.start + t for t, _ in task.clip.still.frames]
    lo, hi = _span(audio.start, audio.end, sum(times) / len(times), opts.clip_seconds)
    wave = resample(audio.wave, audio.rate, fe.sample_rate)
    centre_at = boxes_at(task, audio.start, audio.end)
    samples = []
    for k, (clip_start, duration) in enumerate(
        clip_spans(lo, hi, opts.clip_seconds, opts.min_clip_seconds)
    ):
        i0 = round((clip_start - audio.start) * fe.sample_rate)
        clip = wave[i0 : i0 + round(duration * fe.sample_rate)]
        seconds = len(clip) / fe.sample_rate
        frames = [
            (t, _encode(path, opts))
            for t, (_, path) in zip(times, task.clip.still.frames, strict=True)
            if within(t, clip_start, seconds)
        ]
        if frames:
            sample = clip_sample(task, k, clip_start, seconds, frames, log_mel(clip, fe), fe)
            at = centre_at if within(centre_at, clip_start, seconds) else None
            sample[1].extend(dense_members(task, opts, frames, clip, fe.sample_rate, at))
            samples.append(sample)
    if not samples:
        raise MediaError(
            "overlap",
            f"no picture within a clip of the sound ({audio.start:.2f}-{audio.end:.2f} s, "
            f"at least {opts.min_clip_seconds:g} s needed)",
        )
    return samples


def _span(start: float, end: float, centre: float, length: float) -> tuple[float, float]:
    """[start, end), or its ``length``-long window centred on ``centre`` when longer."""
    if end - start <= length + EPS:
        return start, end
    lo = min(max(centre - length / 2, start), end - length)
    return lo, lo + length


def _encode(path: str, opts: SampleOptions) -> bytes:
    try:
        with fsspec.open(path, "rb") as f, Image.open(f) as im:
            frame = VideoFrame.from_image(im.convert("RGB"))
    except OSError as e:
        raise MediaError("open", f"{path}: cannot read the picture ({e})") from None
    return encode_frame(frame, opts.frame_size, opts.jpeg_quality)
