"""Feature specs (REFERENCE.md §6): what the builder stores and the model is specified with.

- :class:`AudioFrontend` — how a waveform becomes the stored log-mel and the model's audio input;
  :data:`FRONTENDS` the registry (``deepavfusion``, ``audiomae``), :func:`get_frontend`.
- :class:`ImageSpec` — the image side (model input size, crop scale, normalisation).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

from avbase.shardformat import FormatError


@dataclass(frozen=True)
class AudioFrontend:
    """How a waveform becomes the stored log-mel and the model's audio input.

    Stored per clip: ``[n_mels, T]`` (frequency rows). Model input: ``[1, n_mels, window_frames]``
    or, with ``time_major``, ``[1, window_frames, n_mels]``.
    """

    name: str
    kind: str  # "melspec" (torchaudio MelSpectrogram) | "kaldi_fbank"
    sample_rate: int = 16000
    n_fft: int = 800
    win_length: int = 800
    hop_length: int = 250
    n_mels: int = 128
    f_min: float = 0.0
    f_max: float = 8000.0
    log_offset: float = 1e-7  # log10(S + offset) for melspec
    window_seconds: float = 3.0  # training/eval audio window fed to the model
    window_frames: int = 192  # frames kept from the window (the last one is dropped)
    norm_mean: float | None = None  # (x - mean) / (2 * std) when set (AudioMAE statistics)
    norm_std: float | None = None
    time_major: bool = False  # AudioMAE layout [1, T, F]

    @property
    def frames_per_second(self) -> float:
        return self.sample_rate / self.hop_length

    def clip_frames(self, seconds: float) -> int:
        """Stored log-mel frames for a clip of ``seconds`` (whole-clip transform)."""
        n = int(round(seconds * self.sample_rate))
        if self.kind == "melspec":  # center=True: 1 + n // hop
            return 1 + n // self.hop_length
        return max(0, 1 + (n - self.win_length) // self.hop_length)  # kaldi snip_edges

    def as_dict(self) -> dict:
        return asdict(self)


FRONTENDS: dict[str, AudioFrontend] = {
    # REFERENCE.md §6.2: n_fft 800, hop 250 (64 frames/s), 128 HTK mels, log10(S + 1e-7),
    # 3-s window → 193 frames, the last dropped → [1, 128, 192]; no normalisation.
    "deepavfusion": AudioFrontend(name="deepavfusion", kind="melspec"),
    # REFERENCE.md §6.6: Kaldi fbank 25 ms / 10 ms, 128 bins, AudioSet statistics,
    # 1024 frames (10.24 s), [1, time, freq]; Kaldi defaults low_freq 20 Hz, high_freq Nyquist.
    "audiomae": AudioFrontend(
        name="audiomae",
        kind="kaldi_fbank",
        n_fft=400,
        win_length=400,
        hop_length=160,
        f_min=20.0,
        window_seconds=10.24,
        window_frames=1024,
        norm_mean=-4.2677393,
        norm_std=4.5689974,
        time_major=True,
    ),
}


def get_frontend(name: str) -> AudioFrontend:
    try:
        return FRONTENDS[name]
    except KeyError:
        raise FormatError(
            f"unknown audio preset {name!r} (known: {', '.join(FRONTENDS)})"
        ) from None


@dataclass(frozen=True)
class ImageSpec:
    """Image side of the data spec (REFERENCE.md §6.4)."""

    size: int = 224  # model input side
    crop_scale: tuple[float, float] = (0.5, 1.0)  # RandomResizedCrop scale
    mean: tuple[float, float, float] = (0.485, 0.456, 0.406)
    std: tuple[float, float, float] = (0.229, 0.224, 0.225)

    @property
    def eval_resize(self) -> int:
        """Short side before the eval centre crop (224 / 0.875 = 256)."""
        return int(round(self.size / 0.875))
