"""``avfusion shards inspect``: a shard set's metadata, one sample, and a picture of it."""
from __future__ import annotations

import io
import json

import numpy as np
from PIL import Image

from preprocess import shardformat as fmt
from preprocess.errors import AvfusionError
from preprocess.shards import read_manifest
from preprocess.storage import Store

ROW_HEIGHT = 128        # frame thumbnails in the picture


def inspect(url: str, key: str | None = None, png: str | None = None) -> str:
    """Text report; with ``key`` (or ``png``) one sample is found and described/drawn."""
    store = Store(url)
    manifest = read_manifest(store)
    lines = [_summary(url, manifest)]
    if key is not None or png is not None:
        sample = find_sample(store, manifest, key)
        lines.append(_describe(sample))
        if png is not None:
            picture(sample).save(png)
            lines.append(f"picture: {png}")
    return "\n".join(lines)


def find_sample(store: Store, manifest: dict, key: str | None) -> fmt.Sample:
    """The sample ``key`` (the first sample when ``None``); ``AvfusionError`` if absent."""
    for entry in manifest["shards"]:
        with store.open_read(entry["name"]) as f:
            for sample in fmt.read_samples(f):
                if key is None or sample[0] == key:
                    return sample
    raise AvfusionError(f"{store.url}: no sample with key {key!r}" if key
                        else f"{store.url}: the set has no samples")


def picture(sample: fmt.Sample) -> Image.Image:
    """Frames in a row above the log-mel spectrogram (low frequencies at the bottom)."""
    import matplotlib

    files = dict(sample[1])
    n = json.loads(files[fmt.META_EXT])["n_frames"]
    frames = [Image.open(io.BytesIO(files[fmt.frame_ext(i)])).convert("RGB") for i in range(n)]
    frames = [f.resize((max(1, round(f.width * ROW_HEIGHT / f.height)), ROW_HEIGHT)) for f in frames]
    width = sum(f.width for f in frames)
    mel = np.load(io.BytesIO(files[fmt.MEL_EXT])).astype(np.float32)[::-1]
    lo, hi = np.percentile(mel, [1, 99.9])
    rgb = matplotlib.colormaps["magma"](np.clip((mel - lo) / max(hi - lo, 1e-6), 0, 1))[..., :3]
    spec = Image.fromarray((rgb * 255).astype(np.uint8)).resize((width, 2 * mel.shape[0]))
    canvas = Image.new("RGB", (width, ROW_HEIGHT + spec.height))
    x = 0
    for f in frames:
        canvas.paste(f, (x, 0))
        x += f.width
    canvas.paste(spec, (0, ROW_HEIGHT))
    return canvas


def _summary(url: str, m: dict) -> str:
    audio = m["preset"]["audio"]
    preset = {k: v for k, v in m["preset"].items() if k != "audio"}
    labels = m.get("labels", [])
    return "\n".join([
        f"{url}: {m['format']} v{m['format_version']}, {m['num_samples']} samples in "
        f"{len(m['shards'])} shards ({sum(s['bytes'] for s in m['shards']) / 1e6:.1f} MB), "
        f"{m['num_failed']} failed inputs",
        f"audio: {audio['name']} ({audio['kind']}, {audio['n_mels']} mels, "
        f"{audio['sample_rate'] / audio['hop_length']:g} frames/s); {json.dumps(preset)}",
        f"labels ({len(labels)}): {', '.join(labels[:20])}{' ...' if len(labels) > 20 else ''}",
        f"created: {m['created_by'].get('created')} by avfusion {m['created_by'].get('version')}"])


def _describe(sample: fmt.Sample) -> str:
    key, members = sample
    files = dict(members)
    mel = np.load(io.BytesIO(files[fmt.MEL_EXT]))
    sizes = [Image.open(io.BytesIO(data)).size for ext, data in members if ext.endswith(".jpg")]
    return "\n".join([
        f"sample {key}: {json.dumps(json.loads(files[fmt.META_EXT]))}",
        f"mel: {mel.dtype}{list(mel.shape)} min {mel.min():.2f} max {mel.max():.2f} "
        f"mean {mel.astype(np.float32).mean():.2f}",
        f"frames: {len(sizes)} JPEG {', '.join(f'{w}x{h}' for w, h in sizes[:3])}"
        f"{' ...' if len(sizes) > 3 else ''}; bytes {sum(len(d) for _, d in members)}"])
