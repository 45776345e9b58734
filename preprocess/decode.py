"""In-process decoding with PyAV: one pass for audio, one for video, each stream decoded once.

The audio pass comes first (it is cheap and fixes the audio span); the video pass then knows
where the clips start and converts only the frames it keeps — a decoded frame is held by
reference until the next one shows which of the two is nearer a frame target. Every failure
is a ``MediaError`` whose ``stage`` and one-line message go to ``errors.jsonl``.
"""

from __future__ import annotations

import io
import os
from collections.abc import Callable
from dataclasses import dataclass

import av
import fsspec
import numpy as np

from avbase.shardformat import is_url

Target = tuple[float, float, float, tuple[int, int]]  # (time, clip_lo, clip_hi, key)
MAX_GAP_SECONDS = 60.0  # larger audio timestamp jumps are treated as corrupt


class MediaError(Exception):
    """An input that cannot become samples; ``stage`` names where it failed."""

    def __init__(self, stage: str, message: str):
        super().__init__(message)
        self.stage = stage


@dataclass
class Audio:
    wave: np.ndarray  # [n] float32, channel mean, native rate
    rate: int
    start: float  # decoded time of wave[0], seconds

    @property
    def end(self) -> float:
        return self.start + len(self.wave) / self.rate


@dataclass
class Video:
    start: float  # first decoded frame time
    end: float  # last frame time + its duration
    picks: dict[tuple[int, int], tuple[float, bytes]]  # target key → (frame time, encoded)


class MediaFile:
    """One input; local files are opened by path, URLs are read into memory once."""

    def __init__(self, path: str):
        self.path = path
        self.data: bytes | None = None
        try:
            if is_url(path):
                with fsspec.open(path, "rb") as f:
                    self.data = f.read()
                size = len(self.data)
            else:
                size = os.stat(path).st_size if os.path.isfile(path) else -1
        except OSError as e:
            raise MediaError("open", f"cannot read ({e.strerror or e})") from None
        if size == 0:
            raise MediaError("open", "empty file")

    def open(self) -> av.container.InputContainer:
        try:
            src = io.BytesIO(self.data) if self.data is not None else self.path
            return av.open(src, metadata_errors="ignore")
        except av.FFmpegError as e:
            raise MediaError("open", f"cannot open ({_ffmpeg_reason(e)})") from None


def pick_streams(container) -> tuple[av.VideoStream, av.AudioStream]:
    """First video stream that is not an attached cover picture, first audio stream."""
    cover = av.stream.Disposition.attached_pic
    video = next((s for s in container.streams.video if not s.disposition & cover), None)
    if video is None:
        has_cover = any(s.disposition & cover for s in container.streams.video)
        raise MediaError(
            "streams", "no video stream" + (" (only a cover picture)" if has_cover else "")
        )
    return video, audio_stream(container)


def audio_stream(container) -> av.AudioStream:
    audio = next(iter(container.streams.audio), None)
    if audio is None:
        raise MediaError("streams", "no audio stream")
    return audio


def decode_audio(media: MediaFile, video: bool = True) -> Audio:
    """Decode the first audio stream to a mono (channel mean) waveform at its native rate,
    each frame placed at its decoded timestamp. ``video=False``: a sound file (no video
    stream needed)."""
    mono = _MonoAssembler()
    with media.open() as container:
        stream = pick_streams(container)[1] if video else audio_stream(container)
        try:
            for frame in container.decode(stream):
                mono.add(frame)
        except av.FFmpegError as e:
            raise MediaError(
                "decode", f"corrupt audio stream at {mono.position:.2f} s ({_ffmpeg_reason(e)})"
            ) from None
    return mono.finish()


class _MonoAssembler:
    """Decoded audio frames → one mono waveform, converted in batches (an ``AudioFifo`` of up
    to ``BATCH_SECONDS``: per-frame numpy work would cost as much as decoding).

    NOTE: timestamps are trusted. A gap longer than 10 ms (shorter ones are timestamp
    rounding) is played as silence, as a player would; an overlap drops the repeated samples.
    Keeping samples back to back would shift all later audio against the picture.
    """

    BATCH_SECONDS = 10

    def __init__(self):
        self.chunks: list[np.ndarray] = []
        self.fifo: av.AudioFifo | None = None
        self.rate, self.start, self.count = 0, 0.0, 0  # count: samples placed so far

    @property
    def position(self) -> float:
        return self.start + self.count / max(self.rate, 1)

    def add(self, frame: av.AudioFrame) -> None:
        if not self.rate:
            self.rate, self.start = frame.sample_rate, float(frame.time or 0.0)
        elif frame.sample_rate != self.rate:
            raise MediaError(
                "decode",
                f"audio sample rate changes mid-stream ({self.rate} -> {frame.sample_rate} Hz)",
            )
        elif frame.time is not None:
            gap = round((float(frame.time) - self.start) * self.rate) - self.count
            if abs(gap) > self.rate // 100:
                self._flush()
                if gap < 0:
                    self._append(_mono(frame)[-gap:])
                    return
                if gap > MAX_GAP_SECONDS * self.rate:
                    raise MediaError(
                        "decode",
                        f"audio timestamps jump by {gap / self.rate:.1f} s "
                        f"at {self.position:.2f} s",
                    )
                self._append(np.zeros(gap, np.float32))
        if self.fifo is not None and (
            self.fifo.samples >= self.BATCH_SECONDS * self.rate
            or self.fifo.format.name != frame.format.name
            or self.fifo.layout.name != frame.layout.name
        ):
            self._flush()
        self.fifo = self.fifo or av.AudioFifo()
        frame.pts = None  # placement is handled here, not by the fifo
        self.fifo.write(frame)
        self.count += frame.samples

    def finish(self) -> Audio:
        self._flush()
        if not self.count:
            raise MediaError("decode", "audio stream has no decodable frames")
        return Audio(np.concatenate(self.chunks), self.rate, self.start)

    def _append(self, mono: np.ndarray) -> None:
        self.chunks.append(mono)
        self.count += len(mono)

    def _flush(self) -> None:
        if self.fifo is not None and self.fifo.samples:
            self.chunks.append(_mono(self.fifo.read()))
        self.fifo = None


def decode_video(
    media: MediaFile,
    make_targets: Callable[[float], list[Target]],
    stop_at: float,
    encode: Callable[[av.VideoFrame, float], bytes],
    threads: int = 1,
) -> Video:
    """Decode the video stream, picking for every target the nearest frame inside its clip.

    ``make_targets(first_frame_time)`` gives the targets; decoding stops once frames reach
    ``stop_at`` (the audio end: later frames cannot belong to a clip). ``encode(frame, sar)``
    gets the stream's pixel aspect ratio.
    """
    picker: _Picker | None = None
    start = end = 0.0
    prev_time: float | None = None
    with media.open() as container:
        stream, _ = pick_streams(container)
        stream.thread_type = "AUTO"
        stream.codec_context.thread_count = threads
        step = 1.0 / float(stream.guessed_rate or 25)
        sar = float(stream.sample_aspect_ratio or 1)
        tb = float(stream.time_base)  # float seconds: Fraction maths per frame is slow
        try:
            for frame in container.decode(stream):
                t = (
                    frame.pts * tb
                    if frame.pts is not None
                    else (0.0 if prev_time is None else prev_time + step)
                )
                if picker is None:
                    start, picker = t, _Picker(make_targets(t), lambda f: encode(f, sar))
                elif t < prev_time:  # out-of-order timestamp: cannot be placed
                    continue
                duration = frame.duration * tb if frame.duration else step
                end, prev_time = max(end, t + duration), t
                picker.feed(t, frame)
                if t >= stop_at:
                    break
        except av.FFmpegError as e:
            raise MediaError(
                "decode", f"corrupt video stream at {prev_time or 0.0:.2f} s ({_ffmpeg_reason(e)})"
            ) from None
    if picker is None:
        raise MediaError("decode", "video stream has no decodable frames")
    picker.finish()
    return Video(start, end, picker.picks)


class _Picker:
    """Streams frames past time-ordered targets; encodes only the chosen frames."""

    def __init__(self, targets: list[Target], encode: Callable[[av.VideoFrame], bytes]):
        self.targets, self.encode = targets, encode
        self.j = 0
        self.prev: tuple[float, av.VideoFrame] | None = None
        self.picks: dict[tuple[int, int], tuple[float, bytes]] = {}
        self._last: tuple[float, bytes] | None = None  # one frame may serve several targets

    def feed(self, t: float, frame: av.VideoFrame) -> None:
        while self.j < len(self.targets) and t >= self.targets[self.j][0]:
            self._decide((t, frame))
        self.prev = (t, frame)

    def finish(self) -> None:
        while self.j < len(self.targets):
            self._decide(None)

    def _decide(self, after: tuple[float, av.VideoFrame] | None) -> None:
        time, lo, hi, key = self.targets[self.j]
        self.j += 1
        inside = [c for c in (self.prev, after) if c is not None and lo - 1e-6 <= c[0] < hi]
        if not inside:
            return
        t, frame = min(inside, key=lambda c: abs(c[0] - time))
        if self._last is None or self._last[0] != t:
            self._last = (t, self.encode(frame))
        self.picks[key] = self._last


def _mono(frame: av.AudioFrame) -> np.ndarray:
    """``[samples]`` float32 in [-1, 1]: the mean over channels (REFERENCE.md §6.1)."""
    a = frame.to_ndarray()
    if not frame.format.is_planar:
        a = a.reshape(-1, len(frame.layout.channels)).T
    if a.dtype == np.uint8:
        a = (a.astype(np.float32) - 128.0) / 128.0
    elif np.issubdtype(a.dtype, np.integer):
        a = a.astype(np.float32) / float(-np.iinfo(a.dtype).min)
    return a.mean(axis=0, dtype=np.float32)


def _ffmpeg_reason(e: av.FFmpegError) -> str:
    return f"{type(e).__name__}: {e.strerror}" if getattr(e, "strerror", None) else type(e).__name__
