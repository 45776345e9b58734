"""One input → its samples (the work a build worker does for one video).

Steps: decode audio (channel mean, native rate) → resample to the preset rate → decode video,
picking and encoding the frames nearest the frame targets → clip layout on the decoded
audio/video overlap → per clip: log-mel of the whole clip, JPEG frames, metadata.
"""

from __future__ import annotations

import json

from avbase import shardformat as fmt
from avbase.features import get_frontend
from avbase.members import MEL_EXT, META_EXT, WAVE_EXT, flac_bytes, frame_ext, npy_bytes
from avbase.urls import redact
from preprocess.clips import EPS, clip_spans, frame_offsets, frame_targets
from preprocess.datasets.regions import region_members
from preprocess.decode import Audio, MediaError, MediaFile, decode_audio, decode_video
from preprocess.dense_members import mask_files, mask_members
from preprocess.features import encode_frame, log_mel, resample
from preprocess.options import SampleOptions, Task


def make_samples(task: Task, opts: SampleOptions, threads: int = 1) -> list[fmt.Sample]:
    """All samples of one input, in clip order; ``MediaError`` when it yields none."""
    fe = get_frontend(opts.preset)
    media = MediaFile(task.path)
    audio = decode_audio(media)
    if task.clip is not None and task.clip.segment is not None:
        audio = _cut(audio, task.clip.segment, opts)
    if audio.end - audio.start < opts.min_clip_seconds - EPS:
        raise _short(audio.end - audio.start, opts)
    wave = resample(audio.wave, audio.rate, fe.sample_rate)

    def targets(video_start: float):
        return frame_targets(
            max(video_start, audio.start),
            audio.end,
            opts.clip_seconds,
            opts.min_clip_seconds,
            opts.frame_rate,
        )

    video = decode_video(
        media,
        targets,
        stop_at=audio.end,
        threads=threads,
        encode=lambda f, sar: encode_frame(f, opts.frame_size, opts.jpeg_quality, sar),
    )
    start, end = max(audio.start, video.start), min(audio.end, video.end)
    centre = boxes_at(task, start, end)
    samples = []
    for k, (clip_start, duration) in enumerate(
        clip_spans(start, end, opts.clip_seconds, opts.min_clip_seconds)
    ):
        i0 = round((clip_start - audio.start) * fe.sample_rate)
        clip = wave[i0 : i0 + round(duration * fe.sample_rate)]
        seconds = len(clip) / fe.sample_rate
        picks = [
            video.picks.get((k, i)) for i in range(len(frame_offsets(seconds, opts.frame_rate)))
        ]
        frames = [p for p in picks if p is not None and p[0] - clip_start < seconds]
        if frames:  # NOTE: a clip without any video frame inside it (a gap) is skipped
            sample = clip_sample(task, k, clip_start, seconds, frames, log_mel(clip, fe), fe)
            at = centre if within(centre, clip_start, seconds) else None
            sample[1].extend(dense_members(task, opts, frames, clip, fe.sample_rate, at))
            samples.append(sample)
    if not samples:
        raise _short(max(0.0, end - start), opts)
    return samples


def _cut(audio: Audio, segment: tuple[float, float], opts: SampleOptions) -> Audio:
    """The sound of ``segment`` = [start, end) s of stream time (a clip of a full-length video);
    ``MediaError`` (stage ``segment``) when less than ``min_clip_seconds`` of it is there."""
    lo, hi = max(audio.start, segment[0]), min(audio.end, segment[1])
    if hi - lo < opts.min_clip_seconds - EPS:
        raise MediaError(
            "segment",
            f"segment [{segment[0]:g}, {segment[1]:g}) s holds {max(0.0, hi - lo):.2f} s of the "
            f"sound ({audio.start:.2f}-{audio.end:.2f} s); {opts.min_clip_seconds:g} s needed",
        )
    i0, i1 = round((lo - audio.start) * audio.rate), round((hi - audio.start) * audio.rate)
    return Audio(audio.wave[i0:i1], audio.rate, audio.start + i0 / audio.rate)


def boxes_at(task: Task, start: float, end: float) -> float | None:
    """Video time of the frame a dataset clip's boxes were drawn on, the centre of its span
    [start, end) (None: no boxes)."""
    has_boxes = task.clip is not None and task.clip.regions is not None
    return (start + end) / 2 if has_boxes else None


def within(t: float | None, clip_start: float, seconds: float) -> bool:
    return t is not None and clip_start - EPS <= t < clip_start + seconds


def clip_sample(
    task: Task,
    k: int,
    clip_start: float,
    seconds: float,
    frames: list[tuple[float, bytes]],
    mel,
    fe,
) -> fmt.Sample:
    meta = {
        "source": redact(task.path),
        "source_id": task.source_id,
        "clip_index": k,
        "clip_start": round(clip_start, 6),
        "clip_seconds": seconds,
        "frame_times": [round(t - clip_start, 6) for t, _ in frames],
        "sample_rate": fe.sample_rate,
        "mel_fps": fe.frames_per_second,
        "n_frames": len(frames),
    }
    if task.label is not None:
        meta.update(label=task.label, label_index=task.label_index)
    if task.clip is not None:
        meta.update(clip_id=task.clip.id, split=task.clip.split)
        if task.clip.times is not None:
            meta["segment"] = list(task.clip.times)
    members = [(META_EXT, json.dumps(meta).encode()), (MEL_EXT, npy_bytes(mel))]
    members += [(frame_ext(i), jpeg) for i, (_, jpeg) in enumerate(frames)]
    return f"{task.source_id}_{k}", members


def dense_members(
    task: Task,
    opts: SampleOptions,
    frames: list[tuple[float, bytes]],
    clip,
    rate: int,
    boxes_at: float | None = None,
) -> list[tuple[str, bytes]]:
    """The optional ``fNN.mask.png`` and ``flac`` members (docs/FORMAT.md); a dataset clip's
    boxes become the mask of the frame nearest ``boxes_at`` (video time, when in this clip)."""
    if task.masks:
        members = mask_members(mask_files(task.masks), frames)
    elif boxes_at is not None:
        members = region_members(task.clip.regions, frames, boxes_at)
    else:
        members = []
    return members + ([(WAVE_EXT, flac_bytes(clip, rate))] if opts.keep_waveform else [])


def _short(overlap: float, opts: SampleOptions) -> MediaError:
    return MediaError(
        "overlap",
        f"audio-video overlap {overlap:.2f} s is shorter than {opts.min_clip_seconds:g} s",
    )
