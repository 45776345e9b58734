"""The members of a stored sample (docs/FORMAT.md): one table, name → file pattern, encode,
decode, check.

A sample ``<key>`` is the tar members ``<key>.<ext>``; :data:`MEMBERS` lists every kind:

| name    | ext pattern        | encode (value → bytes)            | decode (bytes → value)          |
|---------|--------------------|-----------------------------------|---------------------------------|
| `meta`  | `json`             | dict → UTF-8 JSON                 | dict                            |
| `mel`   | `mel.npy`          | float16 ``[n_mels, T]`` → .npy    | float16 ``[n_mels, T]`` (view)  |
| `frame` | `fNN.jpg`          | PIL image → JPEG (quality 90)     | PIL image (RGB)                 |
| `mask`  | `fNN.mask.png`     | ``[H, W]`` 0/½/1 → grey 0/128/255 | float32 ``[H, W]`` of 0 / ½ / 1 |
| `flac`  | `flac`             | (float ``[n]`` in [-1, 1], rate)  | (float32 ``[n]``, rate)         |

``check(value, meta, files)`` returns the problems of a decoded member (verify). ``mask`` and
``flac`` are optional: a set that holds them declares them in its manifest's ``members``.
The training loader decodes mel and frames on its own fast paths (zero-copy views, TorchCodec);
everything else reads through this table.
"""

from __future__ import annotations

import io
import json
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

META_EXT = "json"  # {source, clip_start, clip_seconds, frame_times, ...}
MEL_EXT = "mel.npy"  # float16 [n_mels, T] log-mel of the whole clip
FRAME_EXT = "f{index:02d}.jpg"  # frames in time order, short side = frame_size
MASK_EXT = "f{index:02d}.mask.png"  # 8-bit grey mask of frame fNN (255 = the sounding object)
WAVE_EXT = "flac"  # the clip's mono waveform at the preset rate
JPEG_QUALITY = 90  # stored frames (the preset records it)
OPTIONAL = ("mask", "flac")  # declared in the manifest's ``members`` when a set holds them
MASK_LEVELS = (0, 128, 255)  # stored grey of mask values 0, 0.5 (annotator consensus), 1
_NPY_HEADER = re.compile(
    rb"'descr':\s*'<f2',\s*'fortran_order':\s*False,\s*'shape':\s*\((\d+),\s*(\d+)\)"
)


class MemberError(ValueError):
    """A member's bytes do not decode as its kind (:meth:`Member.read` names the member)."""


def frame_ext(index: int) -> str:
    return FRAME_EXT.format(index=index)


def mask_ext(index: int) -> str:
    return MASK_EXT.format(index=index)


# -- codecs ---------------------------------------------------------------------------------


def npy_bytes(array: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.lib.format.write_array(buf, np.ascontiguousarray(array), allow_pickle=False)
    return buf.getvalue()


def parse_mel(buf: bytes | bytearray) -> np.ndarray:
    """float16 ``[n_mels, T]`` view of a C-order ``.npy`` buffer (no copy)."""
    if bytes(buf[:6]) != b"\x93NUMPY":
        raise MemberError("not a .npy file")
    start = 10 if buf[6] == 1 else 12
    end = start + int.from_bytes(buf[8:start], "little")
    m = _NPY_HEADER.search(bytes(buf[start:end]))
    if m is None:
        raise MemberError("expected a C-order float16 [n_mels, T] array")
    rows, cols = int(m[1]), int(m[2])
    if len(buf) - end != 2 * rows * cols or cols == 0:
        raise MemberError(f"{len(buf) - end} data bytes for shape ({rows}, {cols})")
    return np.frombuffer(buf, dtype=np.float16, count=rows * cols, offset=end).reshape(rows, cols)


def jpeg_bytes(image, quality: int = JPEG_QUALITY) -> bytes:
    """PIL image → JPEG at ``quality`` with optimised Huffman tables (lossless)."""
    buf = io.BytesIO()
    image.save(buf, format="JPEG", quality=quality, optimize=True)
    return buf.getvalue()


def read_jpeg(data: bytes):
    from PIL import Image

    with Image.open(io.BytesIO(data)) as im:
        im.load()
        if im.format != "JPEG":
            raise MemberError(f"a {im.format} image, expected JPEG")
        return im.convert("RGB")


def mask_png(mask: np.ndarray) -> bytes:
    """``[H, W]`` of 0 / 0.5 / 1 (bool or float; a consensus map's 0.5: one of two annotators)
    → 8-bit grey PNG of 0 / 128 / 255 (values snap to the nearest level)."""
    from PIL import Image

    m = np.asarray(mask, dtype=np.float32)
    grey = np.select([m >= 0.75, m >= 0.25], [255, 128], 0).astype(np.uint8)
    buf = io.BytesIO()
    Image.fromarray(grey, mode="L").save(buf, format="PNG")
    return buf.getvalue()


def read_mask(data: bytes) -> np.ndarray:
    """PNG bytes → float32 ``[H, W]`` of 0 / 0.5 / 1; a grey level other than 0 / 128 / 255 is
    a MemberError (never rounded away silently)."""
    from PIL import Image

    with Image.open(io.BytesIO(data)) as im:
        grey = np.array(im.convert("L"))
    odd = sorted(set(np.unique(grey).tolist()) - set(MASK_LEVELS))
    if odd:
        raise MemberError(f"grey levels {odd[:5]} besides 0 / 128 / 255")
    return np.select([grey == 255, grey == 128], [1.0, 0.5], 0.0).astype(np.float32)


def flac_bytes(wave: np.ndarray, rate: int) -> bytes:
    """float ``[n]`` in [-1, 1] → mono 16-bit FLAC."""
    import av

    pcm = (np.clip(wave, -1, 1) * 32767).round().astype(np.int16)
    buf = io.BytesIO()
    with av.open(buf, "w", format="flac") as container:
        stream = container.add_stream("flac", rate=rate, layout="mono")
        frame = av.AudioFrame.from_ndarray(pcm[None], format="s16", layout="mono")
        frame.sample_rate = rate
        container.mux(stream.encode(frame))
        container.mux(stream.encode())
    return buf.getvalue()


def read_flac(data: bytes) -> tuple[np.ndarray, int]:
    """FLAC bytes → (float32 ``[n]`` in [-1, 1], sample rate)."""
    import av

    with av.open(io.BytesIO(data)) as container:
        stream = container.streams.audio[0]
        chunks = [f.to_ndarray().reshape(-1) for f in container.decode(stream)]
        rate = stream.rate
    pcm = np.concatenate(chunks) if chunks else np.zeros(0, np.int16)
    return pcm.astype(np.float32) / 32767, rate


# -- checks (verify): problems of a decoded member, given the sample's meta and members --------


def _check_mel(mel: np.ndarray, meta: dict, want: tuple[int, int]) -> list[str]:
    if mel.shape != want or not np.isfinite(mel).all():
        return [f"mel float16{list(mel.shape)}, expected float16{list(want)} finite"]
    return []


def _check_frame(image, short_side: int) -> list[str]:
    if min(image.size) != short_side:
        w, h = image.size
        return [f"JPEG {w}x{h}, expected JPEG short side {short_side}"]
    return []


def _check_mask(mask: np.ndarray, frame_size: tuple[int, int]) -> list[str]:
    if (mask.shape[1], mask.shape[0]) != frame_size:
        w, h = frame_size
        return [f"{mask.shape[1]}x{mask.shape[0]}, frame is {w}x{h}"]
    return []


def _check_flac(value: tuple[np.ndarray, int], meta: dict) -> list[str]:
    wave, rate = value
    want = round(meta["clip_seconds"] * meta["sample_rate"])
    if rate != meta["sample_rate"] or abs(len(wave) - want) > 1:
        return [f"{len(wave)} samples at {rate} Hz, expected {want} at {meta['sample_rate']} Hz"]
    return []


@dataclass(frozen=True)
class Member:
    """One member kind; ``ext`` is its extension (with ``{index:02d}`` for per-frame kinds)."""

    name: str
    ext: str
    encode: Callable[..., bytes]
    decode: Callable[[bytes], Any]
    check: Callable[..., list[str]]
    per_frame: bool = False

    def ext_of(self, index: int | None = None) -> str:
        return self.ext.format(index=index) if self.per_frame else self.ext

    def read(self, data: bytes, name: str | None = None) -> Any:
        """Decode ``data``; a MemberError naming the member when it does not decode."""
        try:
            return self.decode(data)
        except MemberError as e:
            raise MemberError(f"{name or self.ext}: {e}") from None
        except Exception as e:  # PIL / av / numpy raise many kinds
            raise MemberError(f"{name or self.ext}: undecodable ({type(e).__name__})") from None


MEMBERS: dict[str, Member] = {
    m.name: m
    for m in (
        Member("meta", META_EXT, lambda d: json.dumps(d).encode(), json.loads, lambda *_: []),
        Member("mel", MEL_EXT, npy_bytes, parse_mel, _check_mel),
        Member("frame", FRAME_EXT, jpeg_bytes, read_jpeg, _check_frame, per_frame=True),
        Member("mask", MASK_EXT, mask_png, read_mask, _check_mask, per_frame=True),
        Member("flac", WAVE_EXT, flac_bytes, read_flac, _check_flac),
    )
}
